"""The one Qt adapter for long jobs (``_napari/_jobs.py``) in a real viewer: progress with the
time left, Cancel of a job in the worker thread, errors in one line, buttons restored."""
from __future__ import annotations

import threading
import time

import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_ctseg._napari._jobs import run_job
from napari_ctseg.jobs import Progress


class Panel(QWidget):
    """What a widget shows of a job: a bar, a status line, Start and Cancel."""

    def __init__(self):
        super().__init__()
        layout = QVBoxLayout(self)
        self.bar, self.status = QProgressBar(), QLabel("")
        self.start_button, self.cancel_button = QPushButton("Start"), QPushButton("Cancel")
        for w in (self.bar, self.status, self.start_button, self.cancel_button):
            layout.addWidget(w)
        self.calls: list = []
        self.job = None

    def run(self, job, **options):
        self.job = run_job(
            job, title="Test job", owner=self, progress_bar=self.bar, status=self.status,
            start_button=self.start_button, cancel_button=self.cancel_button,
            on_done=lambda v: self.calls.append(("done", v)),
            on_cancelled=lambda: self.calls.append(("cancelled",)),
            on_error=lambda e: self.calls.append(("error", e)),
            on_finished=lambda: self.calls.append(("finished",)), **options)
        return self.job


def counting(n, record, pause_s=0.02):
    """Yields n Progress events, a short pause each; records where its clean-up ran."""
    try:
        for i in range(n):
            time.sleep(pause_s)
            yield Progress(i + 1, n, f"item {i + 1} of {n}")
        return "all done"
    finally:
        record["cleaned up in"] = threading.current_thread()
        record["reached"] = i + 1


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = Panel()
    viewer.window.add_dock_widget(widget)
    return widget


def finished(qtbot, panel, timeout=20_000):
    qtbot.waitUntil(lambda: ("finished",) in panel.calls, timeout=timeout)


def test_cancel_stops_a_job_in_the_worker_thread_and_says_so(panel, qtbot):
    record = {}
    seen = []
    job = panel.run(counting(1000, record), cancelled_text="cancelled: nothing kept")
    job.yielded.connect(seen.append)
    assert not panel.start_button.isEnabled() and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: len(seen) >= 5, timeout=10_000)
    assert "item" in panel.bar.format() and "left" in panel.bar.format()  # message and time left
    assert panel.bar.maximum() == 1000 and 0 < panel.bar.value() < 1000
    panel.cancel_button.clicked.connect(job.cancel)
    panel.cancel_button.click()
    assert panel.status.text() == "cancelling ..." and not panel.cancel_button.isEnabled()
    finished(qtbot, panel)
    assert panel.calls == [("cancelled",), ("finished",)]
    assert panel.status.text() == "cancelled: nothing kept"
    assert record["reached"] < 1000  # stopped early ...
    assert record["cleaned up in"] is not threading.main_thread()  # ... with its clean-up in the worker
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert panel.bar.value() == 0 and not job.running


def test_a_finished_job_gives_its_result_and_a_full_bar(panel, qtbot):
    record = {}
    panel.run(counting(5, record))
    finished(qtbot, panel)
    assert panel.calls == [("done", "all done"), ("finished",)]
    assert panel.bar.value() == panel.bar.maximum() and panel.bar.format() == "%p%"
    assert panel.start_button.isEnabled()


@pytest.mark.parametrize("exc, line", [
    (ValueError("bad value\nsecond line of detail"), "ValueError: bad value"),
    # napari's worker alone would take a RuntimeError for a deleted worker and drop it
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "RuntimeError: CUDA out of memory."),
])
def test_errors_end_as_one_line_and_one_notification(panel, qtbot, exc, line):
    def failing():
        yield Progress(1, 3, "first")
        raise exc

    start = len(notification_manager.records)
    panel.run(failing(), failed_text="Not done: {error}")
    finished(qtbot, panel)
    assert panel.calls == [("error", exc), ("finished",)]
    assert panel.status.text().startswith(f"Not done: {line}") and "\n" not in panel.status.text()
    errors = [n for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 1 and errors[0].message.startswith(f"Test job: {line}")
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_napari_stopping_the_worker_cancels_the_job(panel, qtbot):
    """napari's own stop (its activity dock, closing the viewer) calls ``worker.quit``."""
    record = {}
    job = panel.run(counting(1000, record))
    qtbot.waitUntil(lambda: record == {} and panel.bar.value() > 2, timeout=10_000)
    job.worker.quit()
    finished(qtbot, panel)
    assert panel.calls == [("cancelled",), ("finished",)] and record["reached"] < 1000
