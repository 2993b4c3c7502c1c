"""The GUI benchmarks' one stall meter: gaps between the ticks of a 10 ms Qt timer.

A tick that comes late means the event loop was busy (the GUI froze) for that long. Used by
``speed.py --gui`` (Segment volume) and ``finetune.py`` (Fine-tune); needs a QApplication.
"""
from __future__ import annotations

import time
from typing import Callable


def settle(app, seconds: float = 1.0) -> None:
    """Let a new viewer finish drawing before anything is timed."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.05)


def spin(app, until: Callable[[], bool]) -> None:
    """Run the event loop until ``until()`` is true."""
    while not until():
        app.processEvents()
        time.sleep(0.001)


class StallMeter:
    """Within ``with StallMeter() as m:``, every gap between 10 ms ticks goes to the list of
    the phase ``phase()`` names at that tick (one phase, "run", by default)."""

    def __init__(self, phase: Callable[[], str] = lambda: "run"):
        from qtpy.QtCore import QElapsedTimer, QTimer

        self.gaps: dict[str, list[float]] = {}
        self._phase = phase
        self._last = None
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = self._clock.elapsed()
        if self._last is not None:
            self.gaps.setdefault(self._phase(), []).append(now - self._last)
        self._last = now

    def __enter__(self) -> "StallMeter":
        self._clock.start()
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.stop()

    def figures(self, phase: str = "run") -> dict:
        """The longest gap, the 99th percentile and the number of ticks of ``phase``, in ms."""
        gaps = sorted(self.gaps.get(phase, []))
        if not gaps:
            return {"max_stall_ms": None, "p99_stall_ms": None, "ticks": 0}
        return {"max_stall_ms": gaps[-1], "p99_stall_ms": gaps[int(0.99 * (len(gaps) - 1))], "ticks": len(gaps)}
