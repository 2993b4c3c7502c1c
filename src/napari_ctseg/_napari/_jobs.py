"""The one Qt adapter for long jobs: a job (``napari_ctseg.jobs``) in napari's thread worker.

``run_job`` drives a job generator in a napari thread worker (``create_worker``, so napari
knows of it and waits for it on exit) and shows it in the widget that started it:

* progress: the widget's ``QProgressBar`` (busy while the total is unknown) with the
  event's message and the time left (``jobs.Eta``), or a separate ETA label; napari's
  activity dock gets a progress bar too;
* Cancel: ``QtJob.cancel`` (and napari's own stop, which calls ``worker.quit``) sets the
  job's ``CancelToken``; the worker closes the job before its next event (its clean-up runs
  in the worker thread, never in the GUI's) and the widget is told ``on_cancelled``;
* errors: every exception of the job, including a dead child process, ends as one line in
  the widget's status label and one napari error notification (``on_error`` for more);
* the start button is disabled while it runs and the cancel button enabled, both restored
  at the end whatever happened (``on_finished`` runs last);
* a widget closed mid-run cancels its job, and is called no more.

Callbacks run in the GUI thread. ``QtJob.worker`` is napari's worker; ``QtJob.yielded`` its
signal of events, for tests that want to act mid-run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error

from napari_ctseg.errors import CTSegError
from napari_ctseg.jobs import Cancelled, CancelToken, Eta, Job, as_progress, error_line, steps

log = logging.getLogger(__name__)

_DONE, _CANCELLED, _FAILED = "done", "cancelled", "failed"


class _CancellableWorker(GeneratorWorker):
    """napari's generator worker whose ``quit`` (napari's stop button, closing the viewer)
    sets the job's cancel token, so the job is closed where it runs, with its clean-up."""

    token: CancelToken | None = None

    def quit(self) -> None:
        if self.token is not None:
            self.token.cancel()
        else:
            super().quit()


def _drive(job: Job, token: CancelToken):
    """Runs in the worker thread: the job's events, then (outcome, value) whatever happens.

    Every exception is caught here and handed to the GUI thread as a value: napari's
    worker would otherwise add its own notification, and take a ``RuntimeError`` (torch's
    out-of-memory among them) for a deleted worker and drop it.
    """
    try:
        value = yield from steps(job, token)
    except Cancelled:
        return _CANCELLED, None
    except Exception as exc:  # noqa: BLE001 - a failure of the job must not reach napari
        return _FAILED, exc
    return _DONE, value


class QtJob:
    """One running job of a widget (made by ``run_job``)."""

    def __init__(self, job: Job, *, title: str, owner=None, token: CancelToken | None = None,
                 on_event: Callable[[Any], None] | None = None,
                 on_done: Callable[[Any], None] | None = None,
                 on_cancelled: Callable[[], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 on_finished: Callable[[], None] | None = None,
                 progress_bar=None, eta_label=None, status=None, start_button=None, cancel_button=None,
                 cancelling_text: str = "cancelling ...", cancelled_text: str = "cancelled",
                 failed_text: str = "failed: {error}", eta_unit: str = "",
                 finishing_text: str = "finishing ..."):
        self.title = title
        self.token = token or CancelToken()
        self.eta = Eta()
        self._on_event, self._on_done, self._on_cancelled = on_event, on_done, on_cancelled
        self._on_error, self._on_finished = on_error, on_finished
        self._bar, self._eta_label, self._status = progress_bar, eta_label, status
        self._start_button, self._cancel_button = start_button, cancel_button
        self._cancelling_text, self._cancelled_text = cancelling_text, cancelled_text
        self._failed_text, self._eta_unit, self._finishing_text = failed_text, eta_unit, finishing_text
        self.outcome: str | None = None
        self._owner_gone = False
        if owner is not None:  # a dock closed mid-run: stop the job, call nothing of it any more
            owner.destroyed.connect(self._owner_destroyed)
        self.error: BaseException | None = None
        self._activity = None  # napari's activity-dock progress bar
        self.worker = create_worker(
            _drive, job, self.token, _start_thread=False, _worker_class=_CancellableWorker,
            _connect={"yielded": self._event, "returned": self._returned, "finished": self._finished})
        self.worker.token = self.token
        self.yielded = self.worker.yielded

    # --- control ---------------------------------------------------------------------------
    def start(self) -> QtJob:
        _call(self._start_button, "setEnabled", False)
        _call(self._cancel_button, "setEnabled", True)
        if self._bar is not None:
            _call(self._bar, "setRange", 0, 0)
            _call(self._bar, "setFormat", "%p%")
        _call(self._eta_label, "setText", "")
        self._activity = napari_progress(total=0, desc=self.title)
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop before its next event (see the module docstring)."""
        if self.outcome is None and not self.token.cancelled:
            self.token.cancel()
            _call(self._cancel_button, "setEnabled", False)
            _call(self._status, "setText", self._cancelling_text)

    @property
    def running(self) -> bool:
        return self.outcome is None

    def _owner_destroyed(self, *_) -> None:
        self._owner_gone = True
        self.token.cancel()

    # --- the worker's signals, in the GUI thread -------------------------------------------
    def _event(self, event) -> None:
        p = as_progress(event)
        self.eta.update(p.done, p.total)
        left = self.eta.text()
        if self._bar is not None and p.total > 0:
            _call(self._bar, "setRange", 0, p.total)
            _call(self._bar, "setValue", p.done)
            if self._eta_label is None:
                detail = ", ".join(t for t in (p.message, left) if t)
                _call(self._bar, "setFormat", f"{detail} (%p%)" if detail else "%p%")
        if self._eta_label is not None and p.total > 0:
            if p.done < p.total:
                unit = f"{self._eta_unit} " if self._eta_unit else ""
                text = f"{unit}{p.done}/{p.total}, {self.eta.elapsed():.0f} s so far"
                _call(self._eta_label, "setText", f"{text}, {left}" if left else text)
            else:
                _call(self._eta_label, "setText", self._finishing_text)
        bar = self._activity  # a local: updating it may process events that close it
        if bar is not None:
            if p.total > 0 and bar.total != p.total:
                bar.total = p.total
            bar.n = p.done
            bar.set_description(p.message or self.title)
        if self._on_event is not None and not self._owner_gone:
            self._on_event(event)

    def _returned(self, out) -> None:
        self.outcome, value = out
        if self.outcome == _DONE:
            if self._bar is not None:
                _call(self._bar, "setRange", 0, 1)
                _call(self._bar, "setValue", 1)
            _call(self._eta_label, "setText", f"done in {self.eta.elapsed():.0f} s")
            if self._on_done is not None and not self._owner_gone:
                self._on_done(value)
        elif self.outcome == _CANCELLED:
            _call(self._status, "setText", self._cancelled_text)
            if self._on_cancelled is not None and not self._owner_gone:
                self._on_cancelled()
        else:
            self.error = value
            line = error_line(value)
            if not isinstance(value, CTSegError):  # a bug: its traceback for whoever looks
                log.error("%s failed", self.title, exc_info=(type(value), value, value.__traceback__))
            show_error(f"{self.title}: {line}")
            _call(self._status, "setText", self._failed_text.format(error=line))
            if self._on_error is not None and not self._owner_gone:
                self._on_error(value)

    def _finished(self) -> None:
        if self.outcome is None:  # the worker ended without our outcome (aborted)
            self.outcome = _CANCELLED
            _call(self._status, "setText", self._cancelled_text)
        _call(self._start_button, "setEnabled", True)
        _call(self._cancel_button, "setEnabled", False)
        if self._bar is not None:
            _call(self._bar, "setFormat", "%p%")
            if self.outcome != _DONE:
                _call(self._bar, "setRange", 0, 1)
                _call(self._bar, "setValue", 0)
        bar, self._activity = self._activity, None
        if bar is not None:
            bar.close()
        if self._on_finished is not None and not self._owner_gone:
            self._on_finished()


def run_job(job: Job, *, title: str, owner=None, token: CancelToken | None = None, **options) -> QtJob:
    """Start ``job`` in a napari thread worker, shown in the given widgets (see ``QtJob``).

    ``owner``: the widget that started it; when Qt deletes it (its dock closed), the job is
    cancelled and none of the callbacks run any more. ``token``: the job's cancel token,
    when the job watches it itself (``in_child_process``). ``title`` starts its notifications
    ("Segment volume: ...") and names it in napari's activity dock.

    ``options`` (all optional): the callbacks ``on_event(event)``, ``on_done(result)``,
    ``on_cancelled()``, ``on_error(exc)``, ``on_finished()``; the widgets it drives,
    ``progress_bar``, ``eta_label`` (without one, the time left goes into the bar's text),
    ``status``, ``start_button``, ``cancel_button``; the status texts ``cancelling_text``,
    ``cancelled_text``, ``failed_text`` (with ``{error}``), and for the ETA label ``eta_unit``
    ("step 4/12, ...") and ``finishing_text`` (once all is done but the job has not returned).
    """
    return QtJob(job, title=title, owner=owner, token=token, **options).start()


def _call(widget, method: str, *args) -> None:
    """``widget.method(*args)`` unless there is no widget, or Qt already deleted it (a dock
    closed while its job ran)."""
    if widget is None:
        return
    try:
        getattr(widget, method)(*args)
    except RuntimeError:
        pass
