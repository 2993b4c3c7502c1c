"""Long jobs, the one way (Qt-free): events, a driver, cancel, ETA, and a child process.

A **job** is a generator: it yields events (``Progress``, or a richer report such as
``training.TrainingReport`` that has ``done``, ``total`` and ``message`` too) and returns its
result. The same generator runs inline (the CLI, tests: ``run``), in a napari thread worker
(``napari_ctseg._napari._jobs``), or in a child process (``in_child_process``).

* ``Progress(done, total, message, stage)``: the one event type; ``total == 0`` means "busy,
  amount unknown". ``as_progress`` reads any event as one.
* ``CancelToken`` (a ``threading.Event``): the one cancel mechanism. The thread that wants the
  job stopped sets it; ``steps`` (the one driver), checking it before each event, closes the
  job's generator (its clean-up runs in the thread that drives it) and raises ``Cancelled``.
  A job that waits a long time between events (``in_child_process``) takes the token too and
  watches it itself.
* ``Eta``: time left from the progress so far, measured from the last moment nothing had
  been done yet (so reading data and starting a process do not count as speed).

Training allocates hundreds of megabytes and many Python objects; in napari's own process it
competes for the GIL with the viewer (full garbage collections walk every Qt and napari
object) and an out-of-memory kill or a crash in torch takes the viewer, and the user's
unsaved edits, with it. ``in_child_process`` runs a job (``fine_tune``, ``train``) in a fresh
``spawn`` process instead:

* each event the job yields arrives here, in order, and is yielded again: it is a job itself;
* a set ``cancel`` token, or closing this generator, asks the child to close its generator
  (the job's own clean-up runs there); the child's events still in flight are dropped; then
  ``Cancelled`` is raised here (or, when closed, the generator just ends); a child that does
  not stop within ``grace_s`` seconds is terminated;
* the job's return value comes back as this generator's; its exception is raised here (a
  ``CTSegError`` as itself, anything else as ``JobError`` naming it, with the child's
  traceback in ``details``);
* a child that dies (killed for memory, a crash in native code) raises ``JobError`` saying
  so; this process is unharmed.

The job is named ``"package.module:function"`` so that the child imports it itself (nothing
of napari or Qt is pickled or imported there). Arguments and events must be picklable.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import queue as queue_mod
import threading
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from napari_ctseg.errors import CTSegError

POLL_S = 0.1

Job = Generator[Any, None, Any]
"""A long job: a generator that yields events (``Progress`` or reports with done/total/message)
and returns its result."""


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of work finished (slices, steps, files; ``total`` 0: unknown);
    ``message`` says what runs now, in the user's words; ``stage`` names the part of the job
    (for Segment volume, the target being segmented)."""

    done: int
    total: int
    message: str = ""
    stage: str = ""

    @property
    def fraction(self) -> float | None:
        """How much is done, 0..1, or None when the total is unknown."""
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else None


class Cancelled(CTSegError):
    """The user cancelled the job; it stopped and cleaned up after itself."""


class JobError(CTSegError):
    """The job failed in its process (a bug, or the process died); ``details`` holds what is known."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


class CancelToken(threading.Event):
    """Set once, from any thread, to ask a job to stop (see the module docstring)."""

    def cancel(self) -> None:
        self.set()

    @property
    def cancelled(self) -> bool:
        return self.is_set()


def as_progress(event: Any) -> Progress:
    """Any event as a ``Progress``: its ``done``/``total``/``message`` (and ``stage``, if any).

    A training report without ``done``/``total`` is counted in optimisation steps from its
    ``epoch``/``epochs``/``step``/``steps``; an event with none of these is "busy".
    """
    if isinstance(event, Progress):
        return event
    message = str(getattr(event, "message", "") or "")
    stage = str(getattr(event, "stage", "") or "")
    done, total = getattr(event, "done", None), getattr(event, "total", None)
    if done is None or total is None:
        epochs = getattr(event, "epochs", None)
        if epochs is None:
            return Progress(0, 0, message, stage)
        steps = max(int(getattr(event, "steps", 0) or 0), 1)
        total = max(int(epochs), 1) * steps
        if getattr(event, "kind", "") == "done":
            done = total
        else:
            done = max(int(getattr(event, "epoch", 0) or 0) - 1, 0) * steps + int(getattr(event, "step", 0) or 0)
    return Progress(min(int(done), int(total)), int(total), message, stage)


def error_line(exc: BaseException) -> str:
    """An error in one line for the user: a ``CTSegError``'s message, else ``Type: message``."""
    name = type(exc).__name__
    text = str(exc) if isinstance(exc, CTSegError) else (f"{name}: {exc}" if str(exc) else name)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


# --- the driver ------------------------------------------------------------------------

def steps(job: Job, cancel: threading.Event | None = None) -> Job:
    """Drive ``job``: yield its events and return its result; when ``cancel`` is set, close it
    (its clean-up runs here, in the driving thread) and raise ``Cancelled``. Closing this
    generator closes the job too."""
    try:
        while True:
            if cancel is not None and cancel.is_set():
                job.close()
                raise Cancelled("cancelled")
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            yield event
    finally:
        job.close()


def run(job: Job, *, on_event: Callable[[Any], None] | None = None,
        cancel: threading.Event | None = None) -> Any:
    """Run ``job`` to the end here (the CLI, tests): ``on_event`` gets each event; returns the
    job's result; raises ``Cancelled`` when ``cancel`` was set, and whatever the job raises."""
    driver = steps(job, cancel)
    while True:
        try:
            event = next(driver)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def single_step(function: Callable[..., Any], *args: Any, message: str = "", **kwargs: Any) -> Job:
    """A plain call as a job: one "busy" event with ``message``, then the call's result."""
    yield Progress(0, 0, message)
    return function(*args, **kwargs)


# --- time left -------------------------------------------------------------------------

class Eta:
    """Time left of a job from its progress so far (seconds; ``clock`` is ``time.monotonic``).

    The speed is measured from the last moment nothing more had been done, so preparation
    (reading data, starting a process, loading a model) does not count as slowness.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.started = clock()
        self._ref: tuple[int, float] | None = None  # (done, when) before progress was made
        self.seconds_left: float | None = None

    def update(self, done: int, total: int, now: float | None = None) -> float | None:
        """Take a new observation; returns the seconds left, or None while unknown."""
        now = self._clock() if now is None else now
        if total <= 0:
            self.seconds_left = None
        elif self._ref is None or done <= self._ref[0]:
            self._ref = (done, now)
            self.seconds_left = None
        else:
            rate = (now - self._ref[1]) / (done - self._ref[0])
            self.seconds_left = max(rate * (total - done), 0.0)
        return self.seconds_left

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the job started."""
        return (self._clock() if now is None else now) - self.started

    def text(self) -> str:
        """``"about 40 s left"`` / ``"about 3 min left"``, or ``""`` while unknown."""
        return "" if self.seconds_left is None else f"about {duration_text(self.seconds_left)} left"


def duration_text(seconds: float) -> str:
    """A duration as people say it: ``"40 s"``, ``"3 min"``, ``"1 h 5 min"``."""
    s = max(round(seconds), 0)
    if s < 90:
        return f"{s} s"
    minutes = round(s / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60} min"


# --- a child process ---------------------------------------------------------------------
def _resolve(name: str):
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"job {name!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), attr)


def _child(name: str, args: tuple, kwargs: dict, out, stop) -> None:
    """The child process: run the job, send ("event", e) ..., then ("return", value),
    ("cancelled",) or ("error", exc, traceback)."""
    try:
        gen = _resolve(name)(*args, **kwargs)
        try:
            value = run(gen, on_event=lambda event: out.put(("event", event)), cancel=stop)
        except Cancelled:
            out.put(("cancelled",))  # the job's own clean-up (partial files) ran in ``run``
        else:
            out.put(("return", value))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            out.put(("error", exc, tb))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled
            out.put(("error", None, f"{type(exc).__name__}: {exc}\n{tb}"))
    finally:
        out.close()
        out.join_thread()


def in_child_process(job: str, *args: Any, cancel: threading.Event | None = None, grace_s: float = 30.0,
                     **kwargs: Any) -> Job:
    """Run the generator function ``job`` (``"module:function"``) with ``args``/``kwargs`` in a
    spawned process; yield its events here and return its return value (see the module docstring)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_child, args=(job, args, kwargs, out, stop), daemon=True,
                       name=f"napari-ctseg {job.rpartition(':')[2]}")
    proc.start()
    finished = False
    try:
        while True:
            if cancel is not None and cancel.is_set() and not stop.is_set():
                stop.set()
            try:
                message = out.get(timeout=POLL_S)
            except queue_mod.Empty:
                if not proc.is_alive():
                    # a last message may still be in the pipe
                    try:
                        message = out.get(timeout=1.0)
                    except queue_mod.Empty:
                        raise JobError(_death(proc.exitcode)) from None
                else:
                    continue
            kind = message[0]
            if kind == "event":
                if not stop.is_set():  # after a cancel, what the child still sends is dropped
                    yield message[1]
                continue
            finished = True
            if kind == "return":
                return message[1]
            if kind == "cancelled":
                raise Cancelled("cancelled")
            exc, tb = message[1], message[2]
            if isinstance(exc, CTSegError):
                raise exc
            name = type(exc).__name__ if exc is not None else "error"
            raise JobError(f"{name}: {exc}" if exc is not None else tb.splitlines()[0], tb)
    finally:
        if not finished:
            stop.set()
        _wait_for(proc, out, 5.0 if finished else grace_s)


def _wait_for(proc, out, timeout_s: float) -> None:
    """Let the child end (reading what it still sends, so that it is never stuck writing),
    terminate it after ``timeout_s``, and close the queue."""
    deadline = time.monotonic() + timeout_s
    while proc.is_alive() and time.monotonic() < deadline:
        try:
            out.get(timeout=POLL_S)
        except (queue_mod.Empty, EOFError, OSError):
            pass
    proc.join(timeout=1.0)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=5.0)
    out.close()


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        why = " (the system stopped it, most likely for lack of memory)" if sig == "SIGKILL" else ""
        return f"the job's process was stopped by {sig}{why}; this window and your data are unharmed"
    return f"the job's process ended unexpectedly (exit code {code}); this window and your data are unharmed"
