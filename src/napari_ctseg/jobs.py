"""Run a long job in a child process and stream its reports back (Qt-free).

Training allocates hundreds of megabytes and many Python objects; in napari's own process it
competes for the GIL with the viewer (full garbage collections walk every Qt and napari
object) and an out-of-memory kill or a crash in torch takes the viewer, and the user's
unsaved edits, with it. ``in_child_process`` runs a report generator (``fine_tune``,
``train``) in a fresh ``spawn`` process instead:

* each report the job yields arrives here, in order, and is yielded again: a napari thread
  worker wraps this generator exactly as it wrapped the job itself;
* ``cancel`` (a ``threading.Event``) or closing this generator asks the child to close its
  generator (the job's own clean-up runs there) and return ``None``; reports still in flight
  are dropped; a child that does not stop within ``grace_s`` seconds is terminated;
* the job's return value comes back as this generator's; its exception is raised here (a
  ``CTSegError`` as itself, anything else as ``JobError`` naming it, with the child's
  traceback in ``details``);
* a child that dies (killed for memory, a crash in native code) raises ``JobError`` saying
  so; this process is unharmed.

The job is named ``"package.module:function"`` so that the child imports it itself (nothing
of napari or Qt is pickled or imported there). Arguments and reports must be picklable.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import queue as queue_mod
import threading
import traceback
from collections.abc import Generator
from typing import Any

from .errors import CTSegError

POLL_S = 0.1


class JobError(CTSegError):
    """The job failed in its process (a bug, or the process died); ``details`` holds what is known."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def _resolve(name: str):
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise ValueError(f"job {name!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), attr)


def _child(name: str, args: tuple, kwargs: dict, out, stop) -> None:
    """The child process: run the job, send ("report", r) ..., then ("return", value) or ("error", ...)."""
    try:
        gen = _resolve(name)(*args, **kwargs)
        value = None
        while True:
            if stop.is_set():
                gen.close()  # the job's own clean-up (partial files) runs here
                value = None
                break
            try:
                report = next(gen)
            except StopIteration as done:
                value = done.value
                break
            out.put(("report", report))
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
                     **kwargs: Any) -> Generator[Any, None, Any]:
    """Run the generator function ``job`` (``"module:function"``) with ``args``/``kwargs`` in a
    spawned process; yield its reports here and return its return value (see the module docstring)."""
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
            if kind == "report":
                if not stop.is_set():  # after a cancel, what the child still sends is dropped
                    yield message[1]
            elif kind == "return":
                finished = True
                return message[1]
            else:
                finished = True
                exc, tb = message[1], message[2]
                if isinstance(exc, CTSegError):
                    raise exc
                name = type(exc).__name__ if exc is not None else "error"
                raise JobError(f"{name}: {exc}" if exc is not None else tb.splitlines()[0], tb)
    finally:
        if not finished:
            stop.set()
        proc.join(timeout=grace_s if not finished else 5.0)
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
