"""Mask tools: the editing operations (fill between slices, islands and holes, smooth, grow,
shrink) and the HU range limit's controls.

Each tool calls a function of ``napari_ctseg.editing.tools``, which works on the label's bounding
box only, and writes just the changed voxels with ``Labels.data_setitem``: napari records
that as one step of its own undo history, so Ctrl+Z (``layer.undo()``) reverts any tool
exactly, as it reverts napari's brush and fill. The panels work on the layer and label of
the Mask tools widget (``host``) and write through its ``PaintGuard`` (``_mask_hooks``).
"""
from __future__ import annotations

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_ctseg.editing import tools as editing
from napari_ctseg.errors import CTSegError
from napari_ctseg._napari._compat import unwrap

PREVIEW_KEY = "ctseg_preview"
"""``layer.metadata`` flag of the fill-between-slices preview layer the Mask tools add."""

AXES = (("axial (z)", 0), ("coronal (y)", 1), ("sagittal (x)", 2))
HOLE_MODES = (("in each axial slice", "slice"), ("in 3D", "3d"))
CUSTOM = "custom"


def _mm_spin(value: float, tip: str = "") -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.1, 50.0)
    spin.setSingleStep(0.5)
    spin.setValue(value)
    spin.setSuffix(" mm")
    if tip:
        spin.setToolTip(tip)
    return spin


class EditPanel(QWidget):
    """Fill between slices (with a preview layer), islands and holes, smooth, grow, shrink."""

    def __init__(self, host):
        super().__init__()
        self.host = host
        self.preview_layer: Labels | None = None
        self._preview_for: tuple | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._fill_box())
        layout.addWidget(self._clean_box())
        layout.addWidget(self._morph_box())
        for button, slot in ((self.preview_button, self.preview_fill), (self.apply_button, self.apply_fill),
                             (self.discard_button, self.discard_fill), (self.islands_button, self.remove_islands),
                             (self.holes_button, self.fill_holes), (self.smooth_button, self.smooth),
                             (self.grow_button, self.grow), (self.shrink_button, self.shrink)):
            button.clicked.connect(slot)

    def _fill_box(self) -> QGroupBox:
        box = QGroupBox("Fill between slices")
        fill = QGridLayout(box)
        self.axis_combo = QComboBox()
        for text, axis in AXES:
            self.axis_combo.addItem(text, axis)
        self.axis_combo.setToolTip("Outline the label on a few slices along this axis; the ones between are filled")
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("Show the proposed fill (shape-based interpolation) as a layer")
        self.apply_button = QPushButton("Apply")
        self.discard_button = QPushButton("Discard")
        fill.addWidget(QLabel("Slices along"), 0, 0)
        fill.addWidget(self.axis_combo, 0, 1, 1, 2)
        fill.addWidget(self.preview_button, 1, 0)
        fill.addWidget(self.apply_button, 1, 1)
        fill.addWidget(self.discard_button, 1, 2)
        return box

    def _clean_box(self) -> QGroupBox:
        box = QGroupBox("Islands and holes")
        clean = QGridLayout(box)
        self.keep_spin = QSpinBox()
        self.keep_spin.setRange(1, 999)
        self.keep_spin.setValue(1)
        self.keep_spin.setToolTip("How many of the largest 3D pieces of the label to keep")
        self.min_size_spin = QDoubleSpinBox()
        self.min_size_spin.setRange(0, 1e7)
        self.min_size_spin.setDecimals(0)
        self.min_size_spin.setSuffix(" mm³")
        self.min_size_spin.setToolTip("Kept pieces smaller than this are removed too")
        self.islands_button = QPushButton("Remove islands")
        self.islands_button.setToolTip("Keep the largest pieces of the label (face-connected in 3D); erase the rest")
        clean.addWidget(QLabel("Keep largest"), 0, 0)
        clean.addWidget(self.keep_spin, 0, 1)
        clean.addWidget(QLabel("min"), 0, 2)
        clean.addWidget(self.min_size_spin, 0, 3)
        clean.addWidget(self.islands_button, 1, 0, 1, 4)
        self.holes_combo = QComboBox()
        for text, mode in HOLE_MODES:
            self.holes_combo.addItem(text, mode)
        self.holes_combo.setToolTip("Axial slices: background enclosed in each slice (vessels); "
                                    "3D: only cavities closed in every direction")
        self.holes_button = QPushButton("Fill holes")
        clean.addWidget(self.holes_button, 2, 0, 1, 2)
        clean.addWidget(self.holes_combo, 2, 2, 1, 2)
        return box

    def _morph_box(self) -> QGroupBox:
        box = QGroupBox("Smooth, grow, shrink")
        morph = QGridLayout(box)
        self.smooth_combo = QComboBox()
        self.smooth_combo.addItems(["close", "open", "median"])
        self.smooth_combo.setToolTip("close: fill dents and gaps; open: remove bumps and thin bridges; "
                                     "median: majority within the radius")
        self.radius_spin = _mm_spin(2.0)
        self.smooth_button = QPushButton("Smooth")
        morph.addWidget(self.smooth_combo, 0, 0)
        morph.addWidget(self.radius_spin, 0, 1)
        morph.addWidget(self.smooth_button, 0, 2)
        self.margin_spin = _mm_spin(2.0, "Distance in mm, in every direction (voxel spacing respected)")
        self.grow_button = QPushButton("Grow")
        self.shrink_button = QPushButton("Shrink")
        morph.addWidget(self.margin_spin, 1, 0)
        morph.addWidget(self.grow_button, 1, 1)
        morph.addWidget(self.shrink_button, 1, 2)
        return box

    @property
    def buttons(self) -> tuple[QPushButton, ...]:
        """The buttons that need a layer."""
        return (self.preview_button, self.apply_button, self.islands_button, self.holes_button,
                self.smooth_button, self.grow_button, self.shrink_button)

    # --- writing an edit -----------------------------------------------------------------
    def apply_edit(self, edit: editing.RegionEdit, what: str) -> int:
        """Write an edit into the layer as one undoable step; returns the voxels changed.

        Only the changed voxels of the edit's box are written (``Labels.data_setitem``),
        those outside the HU range left out when the limit is on.
        """
        host, guard = self.host, self.host.guard
        layer = host.layer
        if edit.is_empty:
            host.say(f"{what}: nothing to change for label {host.label}")
            return 0
        old = np.asarray(layer.data[edit.box])
        changed = old != edit.values
        if guard.active:
            changed = editing.limit_to_hu_range(changed, np.asarray(guard.hu_image.data[edit.box]),
                                                *guard.hu_range)
        local = np.nonzero(changed)
        n = int(local[0].size)
        if n == 0:
            host.say(f"{what}: nothing to change for label {host.label}"
                     + (" within the HU range" if guard.hu_range is not None else ""))
            return 0
        indices = tuple(idx + s.start for idx, s in zip(local, edit.box))
        guard.applying = True
        try:
            layer.data_setitem(indices, edit.values[changed])
        finally:
            guard.applying = False
        host.say(f"{what}: {n:,} voxels changed (Ctrl+Z undoes it)")
        return n

    def _run_tool(self, what: str, make_edit) -> int:
        if not self.host.ready(what):
            return 0
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            edit = make_edit(np.asarray(self.host.layer.data), self.host.label, self.host.spacing())
            return self.apply_edit(edit, what)
        except (CTSegError, ValueError) as exc:
            show_error(f"Mask tools: {what}: {exc}")
            return 0
        finally:
            QApplication.restoreOverrideCursor()

    # --- tools -------------------------------------------------------------------------
    def remove_islands(self) -> int:
        keep = self.keep_spin.value()

        def make(mask, label, spacing):
            voxel_mm3 = float(np.prod(spacing))
            min_voxels = int(np.ceil(self.min_size_spin.value() / voxel_mm3)) if self.min_size_spin.value() else 0
            return editing.remove_islands(mask, label, keep=keep, min_size_voxels=min_voxels)

        return self._run_tool("Remove islands", make)

    def fill_holes(self) -> int:
        mode = self.holes_combo.currentData()
        return self._run_tool("Fill holes", lambda m, lab, sp: editing.fill_holes(m, lab, mode=mode))

    def smooth(self) -> int:
        method, radius = self.smooth_combo.currentText(), self.radius_spin.value()
        return self._run_tool(f"Smooth ({method}, {radius:g} mm)",
                              lambda m, lab, sp: editing.smooth(m, lab, radius, sp, method))

    def grow(self) -> int:
        mm = self.margin_spin.value()
        return self._run_tool(f"Grow {mm:g} mm", lambda m, lab, sp: editing.grow(m, lab, mm, sp))

    def shrink(self) -> int:
        mm = self.margin_spin.value()
        return self._run_tool(f"Shrink {mm:g} mm", lambda m, lab, sp: editing.shrink(m, lab, mm, sp))

    # --- fill between slices --------------------------------------------------------------
    def _fill_edit(self, label: int, axis: int) -> editing.RegionEdit:
        mask = np.asarray(self.host.layer.data)
        edit = editing.interpolate_between_slices(mask, label, axis=axis, spacing=self.host.spacing())
        guard = self.host.guard
        if guard.active:
            edit = editing.limit_edit_to_hu_range(edit, mask, guard.hu_image.data, *guard.hu_range)
        return edit

    def preview_fill(self) -> Labels | None:
        """Show the proposed fill between outlined slices as a separate, read-only layer."""
        host = self.host
        if not host.ready("Fill between slices"):
            return None
        self.discard_fill()
        layer = host.layer
        label, axis = host.label, self.axis_combo.currentData()
        edit = self._fill_edit(label, axis)
        n = edit.n_changed(np.asarray(layer.data))
        if n == 0:
            host.say("Fill between slices: outline the label on two or more slices with empty slices "
                     "between them")
            return None
        added = edit.changed(np.asarray(layer.data))
        data = np.where(added, edit.values, 0).astype(layer.data.dtype)
        start = np.array([s.start for s in edit.box], dtype=float)
        scale = np.asarray(layer.scale[-3:], dtype=float)
        self.preview_layer = host.viewer.add_labels(
            data, name=f"{layer.name} fill preview", scale=scale,
            translate=np.asarray(layer.translate[-3:], dtype=float) + start * scale,
            opacity=0.8, colormap={None: "transparent", label: "yellow"},
            metadata={PREVIEW_KEY: True})
        self.preview_layer.editable = False
        self._preview_for = (unwrap(layer), label, axis)
        host.viewer.layers.selection.active = layer  # keep painting on the mask
        host.say(f"Fill between slices: {n:,} voxels proposed (yellow); Apply or Discard")
        host.update_enabled()
        return self.preview_layer

    def apply_fill(self) -> int:
        """Fill the slices between outlines, undoably: the previewed label and axis if there
        is a preview (recomputed, so strokes made since count), else the current ones."""
        host = self.host
        if not host.ready("Fill between slices"):
            return 0
        label, axis = host.label, self.axis_combo.currentData()
        if self._preview_for is not None and self._preview_for[0] is unwrap(host.layer):
            label, axis = self._preview_for[1:]
        edit = self._fill_edit(label, axis)
        self.discard_fill()
        return self.apply_edit(edit, "Fill between slices")

    def discard_fill(self):
        preview = self.preview_layer
        self.forget_preview()
        if preview is not None and preview in self.host.viewer.layers:
            self.host.viewer.layers.remove(preview)
        self.host.update_enabled()

    def forget_preview(self, removed=None) -> None:
        """The preview layer is gone (``removed``: a layer just removed; None: whichever)."""
        if removed is None or unwrap(removed) is unwrap(self.preview_layer):
            self.preview_layer = None
            self._preview_for = None


class HuRangeBox(QGroupBox):
    """Limit to HU range: the switch, presets and bounds; sets the host's ``PaintGuard``."""

    def __init__(self, host):
        super().__init__("HU range")
        self.host = host
        hu = QGridLayout(self)
        self.hu_check = QCheckBox("Limit to HU range")
        self.hu_check.setToolTip("Only voxels whose HU is in the range may change: the tools above "
                                 "and napari's paint brush, eraser, fill and polygon")
        self.hu_preset_combo = QComboBox()
        for name, (lo, hi) in editing.HU_RANGE_PRESETS.items():
            self.hu_preset_combo.addItem(f"{name} ({lo:g} to {hi:g})", name)
        self.hu_preset_combo.addItem(CUSTOM, CUSTOM)
        self.hu_low_spin = QDoubleSpinBox()
        self.hu_high_spin = QDoubleSpinBox()
        for spin in (self.hu_low_spin, self.hu_high_spin):
            spin.setRange(-3024, 30000)
            spin.setDecimals(0)
            spin.setSuffix(" HU")
        hu.addWidget(self.hu_check, 0, 0, 1, 2)
        hu.addWidget(self.hu_preset_combo, 0, 2, 1, 2)
        hu.addWidget(QLabel("from"), 1, 0, Qt.AlignmentFlag.AlignRight)
        hu.addWidget(self.hu_low_spin, 1, 1)
        hu.addWidget(QLabel("to"), 1, 2, Qt.AlignmentFlag.AlignRight)
        hu.addWidget(self.hu_high_spin, 1, 3)
        hu.setColumnStretch(1, 1)
        hu.setColumnStretch(3, 1)
        self.hu_check.toggled.connect(self.update_state)
        self.hu_preset_combo.currentIndexChanged.connect(self._preset_chosen)
        self.hu_low_spin.valueChanged.connect(self._range_edited)
        self.hu_high_spin.valueChanged.connect(self._range_edited)

    def _preset_chosen(self, index=None):
        name = self.hu_preset_combo.currentData()
        if name in editing.HU_RANGE_PRESETS:
            lo, hi = editing.HU_RANGE_PRESETS[name]
            for spin, v in ((self.hu_low_spin, lo), (self.hu_high_spin, hi)):
                spin.blockSignals(True)
                spin.setValue(v)
                spin.blockSignals(False)
        self.update_state()

    def _range_edited(self, value=None):
        lo, hi = self.hu_low_spin.value(), self.hu_high_spin.value()
        preset = next((n for n, r in editing.HU_RANGE_PRESETS.items() if r == (lo, hi)), CUSTOM)
        self.hu_preset_combo.blockSignals(True)
        self.hu_preset_combo.setCurrentIndex(self.hu_preset_combo.findData(preset))
        self.hu_preset_combo.blockSignals(False)
        self.update_state()

    def set_hu_limit(self, low: float, high: float, enabled: bool = True):
        """Set the HU range limit (as the controls do)."""
        self.hu_low_spin.setValue(low)
        self.hu_high_spin.setValue(high)
        self.hu_check.setChecked(enabled)
        self.update_state()

    def update_state(self, *args):
        """Hand the limit to the guard: on, with a CT image of the mask's shape, or off."""
        host, guard = self.host, self.host.guard
        image = host.selected_image()
        if host.layer is not None and image is not None \
                and tuple(image.data.shape) != tuple(host.layer.data.shape):
            image = None
        on = self.hu_check.isChecked()
        lo, hi = sorted((self.hu_low_spin.value(), self.hu_high_spin.value()))
        before = (guard.hu_image, guard.hu_range)
        guard.hu_image = image
        guard.hu_range = (lo, hi) if on and image is not None else None
        if (guard.hu_image, guard.hu_range) == before or not on:
            return
        if image is None:
            host.say("Limit to HU range: no CT image of the mask's shape is open; the limit is off")
        else:
            host.say(f"Only voxels from {lo:g} to {hi:g} HU in '{image.name}' can change now")
