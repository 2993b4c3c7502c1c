"""One Qt signal that says: the model versions or the active choice changed.

Fine-tune emits it when a run writes a version, Models when the user switches or removes
one; Segment volume, Fine-tune and Models refresh their version lists on it.
"""
from __future__ import annotations

from qtpy.QtCore import QObject, Signal


class _ModelsEvents(QObject):
    changed = Signal()


_events: _ModelsEvents | None = None


def models_events() -> _ModelsEvents:
    global _events
    if _events is None:
        from qtpy.QtWidgets import QApplication

        # Owned by the application, so Qt deletes it with the app, never after it at exit.
        _events = _ModelsEvents(QApplication.instance())
    return _events


def connect_models_changed(widget, slot) -> None:
    """Call ``slot`` on every change while ``widget`` lives (disconnected when it is destroyed)."""
    sig = models_events().changed
    sig.connect(slot)

    def _disconnect(*_):
        try:
            sig.disconnect(slot)
        except (TypeError, RuntimeError):
            pass

    widget.destroyed.connect(_disconnect)
