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

Large arrays (a CT volume, its masks) travel as ``SharedArray``: shared memory that both
processes map, copied in and out a slice at a time, so that neither pickling a 300 MB volume
nor copying it holds the GIL long enough to freeze the viewer.

The job is named ``"package.module:function"`` so that the child imports it itself (nothing
of napari or Qt is pickled or imported there). Arguments and events must be picklable.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import multiprocessing as mp
import queue as queue_mod
import threading
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _run_one(name: str, args: tuple, kwargs: dict, out, stop) -> None:
    """Run one job in the child: send ("event", e) ..., then ("return", value), ("cancelled",)
    or ("error", exc, traceback)."""
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


def exit_with_parent() -> None:
    """In a child process: end it when its parent ends, however that ends (a viewer that
    crashes or is killed leaves no child behind holding memory; a normal exit stops the child
    anyway). A daemon thread waits on the parent's sentinel."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="ctseg-parent-watch", daemon=True).start()


def _serve(inbox, out, stop, warm: tuple[str, ...]) -> None:
    """The child process: import ``warm`` now, then run each job that arrives until ``None``."""
    exit_with_parent()
    for module in warm:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the job that needs it will say what is wrong
            pass
    try:
        while True:
            task = inbox.get()
            if task is None:
                break
            _run_one(*task, out, stop)
    finally:
        out.close()
        out.join_thread()


_END = ("return", "cancelled", "error")
_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def without_main_module():
    """Start ``spawn`` processes, within this block, without running this program's main module
    again in them.

    A spawned child first re-imports ``__main__`` (so that it can unpickle what the main module
    defines): under ``python -m napari_ctseg._napari.demo`` or the ``napari`` script that is
    napari and Qt, seconds of start and hundreds of MB in a child that needs neither. Our jobs
    are named ``"module:function"`` and import what they need, so the children skip it
    (``multiprocessing.spawn.get_preparation_data`` without its two ``init_main_*`` entries;
    where that function is missing the children start as before).
    """
    from multiprocessing import spawn

    original = getattr(spawn, "get_preparation_data", None)
    if original is None:
        yield
        return

    def without_main(name):
        data = original(name)
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
        return data

    with _MAIN_LOCK:
        spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            spawn.get_preparation_data = original


class WorkerProcess:
    """A ``spawn`` child process that runs jobs one at a time and stays between them, so that
    a job does not pay for starting Python and importing torch (``in_child_process`` is one
    that lives for one job).

    ``warm``: modules the child imports as soon as it starts (``start()``, or the first job).
    ``job(name, *args, cancel=..., **kwargs)`` runs the job ``"module:function"`` there and
    is a job itself (see the module docstring: events, the return value, errors, cancel). A
    second job while one runs raises ``JobError`` (``busy`` says so beforehand). A child that
    dies, or does not stop within ``grace_s`` of a cancel (it is then terminated), is replaced
    by a new one at the next job. ``close()`` ends it; it is a daemon, so it ends with this
    program too.
    """

    def __init__(self, warm: tuple[str, ...] = (), name: str = "napari-ctseg worker"):
        self.warm = tuple(warm)
        self.name = name
        self._proc = None
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def start(self) -> WorkerProcess:
        """Start the child (and its imports) now, unless it runs already."""
        if self.alive:
            return self
        self._discard()
        ctx = mp.get_context("spawn")
        self._inbox, self._out, self._stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(target=_serve, args=(self._inbox, self._out, self._stop, self.warm),
                                 daemon=True, name=self.name)
        with without_main_module():
            self._proc.start()
        return self

    def job(self, job: str, *args: Any, cancel: threading.Event | None = None, grace_s: float = 30.0,
            **kwargs: Any) -> Job:
        """Run ``job`` (``"module:function"``) with ``args``/``kwargs`` in the child; yield its
        events here and return its return value."""
        if not self._lock.acquire(blocking=False):
            raise JobError(f"{self.name} is busy with another job")
        try:
            return (yield from self._job(job, args, kwargs, cancel, grace_s))
        finally:
            self._lock.release()

    def _job(self, job, args, kwargs, cancel, grace_s):
        self.start()
        proc, out, stop = self._proc, self._out, self._stop
        stop.clear()
        self._inbox.put((job, args, kwargs))
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
                            finished = True
                            self._discard()
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
            if not finished:  # closed or cancelled here: the child stops its job, or goes
                stop.set()
                if not self._wait_end(grace_s):
                    self._discard()

    def _wait_end(self, timeout_s: float) -> bool:
        """Read what the child still sends (so that it is never stuck writing) until its job's
        end; False when it died or did not end within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                message = self._out.get(timeout=POLL_S)
            except (queue_mod.Empty, EOFError, OSError):
                if not self.alive:
                    return False
                continue
            if message[0] in _END:
                return True
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        """End the child: at once when idle, after ``timeout_s`` otherwise (terminated)."""
        if self._proc is None:
            return
        if self.alive and not self.busy:
            try:
                self._inbox.put(None)
            except (OSError, ValueError):
                pass
            _wait_for(self._proc, self._out, timeout_s)
        self._discard()

    def _discard(self) -> None:
        """Forget the child: terminate it if it still runs, close the queues."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5.0)
        for q in (self._inbox, self._out):
            try:
                q.close()
                q.cancel_join_thread()
            except (OSError, ValueError):
                pass
        self._inbox = self._out = self._stop = None

    def __del__(self):
        try:
            self._discard()
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass


def in_child_process(job: str, *args: Any, cancel: threading.Event | None = None, grace_s: float = 30.0,
                     **kwargs: Any) -> Job:
    """Run the generator function ``job`` (``"module:function"``) with ``args``/``kwargs`` in a
    spawned process of its own; yield its events here and return its return value (see the
    module docstring)."""
    worker = WorkerProcess(name=f"napari-ctseg {job.rpartition(':')[2]}")
    try:
        return (yield from worker.job(job, *args, cancel=cancel, grace_s=grace_s, **kwargs))
    finally:
        worker.close()


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


class SharedMemoryFull(OSError):
    """Not enough shared memory for a ``SharedArray`` (a container's /dev/shm is often 64 MiB)."""


def shared_memory_free() -> int | None:
    """Bytes free in /dev/shm (where Linux keeps shared memory), None where it cannot be read."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


class SharedArray:
    """A numpy array in shared memory (``multiprocessing.shared_memory``), picklable as its
    name, shape and dtype: unpickled in another process, it maps the same memory.

    ``SharedArray.copy_of(a)`` makes one and copies ``a`` in; ``array`` is the mapped view;
    ``take()`` copies it out into an ordinary array and frees the memory. Both copies go one
    slice (axis 0) at a time, so that another thread (the viewer's) gets the GIL between
    slices. ``SharedMemoryFull`` when /dev/shm has too little room (checked first: writing past
    a full tmpfs would kill this process with SIGBUS). Whoever made it frees it (``take`` or ``free``); what a dead process leaves is
    freed by multiprocessing's resource tracker when this program ends.
    """

    def __init__(self, shape, dtype, *, _name: str | None = None):
        from multiprocessing import shared_memory

        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        size = max(int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize, 1)
        if _name is None:
            free = shared_memory_free()
            if free is not None and size > free:
                # tmpfs pages are given on first write: beyond its size the writer dies of SIGBUS
                raise SharedMemoryFull(f"shared memory holds {free / 2**20:.0f} MiB free, "
                                       f"{size / 2**20:.0f} MiB needed")
        self._shm = (shared_memory.SharedMemory(create=True, size=size) if _name is None
                     else shared_memory.SharedMemory(name=_name))
        self.name = self._shm.name

    @classmethod
    def copy_of(cls, a) -> SharedArray:
        a = np.asarray(a)
        out = cls(a.shape, a.dtype)
        _copy_by_slice(out.array, a)
        return out

    @property
    def array(self) -> np.ndarray:
        return np.ndarray(self.shape, dtype=self.dtype, buffer=self._shm.buf)

    def take(self) -> np.ndarray:
        """An ordinary copy of the array; the shared memory is freed."""
        out = np.empty(self.shape, dtype=self.dtype)
        _copy_by_slice(out, self.array)
        self.free()
        return out

    def free(self) -> None:
        """Unmap and remove the shared memory (again: nothing)."""
        shm, self._shm = self._shm, None
        if shm is None:
            return
        _unmap(shm)
        try:
            shm.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unmap it here; the memory stays for its owner."""
        shm, self._shm = self._shm, None
        if shm is not None:
            _unmap(shm)

    def __getstate__(self):
        return {"shape": self.shape, "dtype": self.dtype.str, "name": self.name}

    def __setstate__(self, state):
        self.__init__(state["shape"], state["dtype"], _name=state["name"])

    def __repr__(self) -> str:
        return f"SharedArray({self.name}, {'x'.join(map(str, self.shape))}, {self.dtype})"


def _copy_by_slice(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` one slice of axis 0 at a time: the GIL is free between slices."""
    if dst.ndim == 0:
        dst[()] = src
    for i in range(dst.shape[0] if dst.ndim else 0):
        dst[i] = src[i]


def _unmap(shm) -> None:
    try:
        shm.close()
    except BufferError:  # a view of it is still alive somewhere: the mapping goes with it
        pass


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
