"""Mask tools: the live volume (mL) of the selected label, kept as a count per z slice.

A paint event (every brush stroke, fill, tool) recounts only the z slices it touched;
undo, redo and a new array recount all slices, once, a moment later.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QLabel


class LiveVolume(QObject):
    """Counts ``label`` voxels of ``layer`` per z slice and shows the volume in ``out``.

    ``spacing`` gives the voxel spacing (z, y, x) in mm of the layer now.
    """

    def __init__(self, out: QLabel, spacing: Callable[[], tuple[float, float, float]], parent=None):
        super().__init__(parent)
        self.out = out
        self._spacing = weakref.WeakMethod(spacing)  # the widget's method: no cycle through Qt
        self.layer = None
        self.label = 1
        self._z_counts: np.ndarray | None = None
        self._counted: tuple | None = None
        self._pending_z: tuple[int, int] | None = None
        self._recount_timer = self._timer(150, self.recount_all)
        self._slice_timer = self._timer(0, self._recount_pending)

    def _timer(self, ms: int, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    def follow(self, layer, label: int) -> None:
        """Count ``label`` of ``layer`` (None: show nothing) from now on."""
        self.layer, self.label = layer, int(label)
        self._counted = None
        if layer is None:
            self._z_counts = None
            self.out.setText("")
        else:
            self.recount_all()

    def schedule_recount(self, *_) -> None:
        try:
            self._recount_timer.start()
        except RuntimeError:  # the widget is gone
            pass

    def recount_all(self) -> None:
        self._pending_z = None
        layer = self.layer
        if layer is None:
            self._z_counts = None
            return
        eq = np.asarray(layer.data) == self.label
        self._z_counts = eq.reshape(eq.shape[0], -1).sum(axis=1, dtype=np.int64)
        self._counted = (layer, self.label)
        self._show()

    def _recount_slices(self, z0: int, z1: int) -> None:
        data = np.asarray(self.layer.data)
        if len(self._z_counts) != data.shape[0]:
            self.recount_all()
            return
        z0, z1 = max(z0, 0), min(z1, data.shape[0])
        if z1 > z0:
            eq = data[z0:z1] == self.label
            self._z_counts[z0:z1] = eq.reshape(z1 - z0, -1).sum(axis=1, dtype=np.int64)
        self._show()

    def on_paint(self, event=None) -> None:
        # napari emits ``paint`` as it records the undo step, which for a single paint()
        # or data_setitem() call is just before it writes the voxels: count a moment later.
        if self._z_counts is None or self._counted != (self.layer, self.label):
            self.schedule_recount()
            return
        z0, z1 = None, None
        for atom in getattr(event, "value", None) or []:
            key = getattr(atom, "slice_key", None)
            if key is not None:
                lo, hi = key[0].start, key[0].stop
            elif isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple):
                zs = np.asarray(atom[0][0])
                if zs.size == 0:
                    continue
                lo, hi = int(zs.min()), int(zs.max()) + 1
            else:
                self.schedule_recount()
                return
            z0 = lo if z0 is None else min(z0, lo)
            z1 = hi if z1 is None else max(z1, hi)
        if z0 is None:
            return
        if self._pending_z is not None:
            z0, z1 = min(z0, self._pending_z[0]), max(z1, self._pending_z[1])
        self._pending_z = (int(z0), int(z1))
        self._slice_timer.start()

    def _recount_pending(self) -> None:
        pending, self._pending_z = self._pending_z, None
        if pending is not None and self.layer is not None and self._z_counts is not None:
            self._recount_slices(*pending)

    def _show(self) -> None:
        if self.layer is None or self._z_counts is None:
            self.out.setText("")
            return
        n = int(self._z_counts.sum())
        self.out.setText(f"Label {self.label}: {self.ml():,.2f} mL ({n:,} voxels)")

    def ml(self) -> float:
        """The volume counted, in mL."""
        return int(self._z_counts.sum()) * float(np.prod(self._spacing()())) / 1000.0
