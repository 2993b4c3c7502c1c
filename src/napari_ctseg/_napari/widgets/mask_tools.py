"""Mask tools dock widget: correct a Labels layer, then save it on the scan's geometry.

The widget works on the chosen Labels layer (it follows the layer selection) and its
selected label. Each tool calls a function of ``napari_ctseg.editing``, which works on the
label's bounding box only, and writes just the changed voxels with
``Labels.data_setitem``: napari records that as one step of its own undo history, so
Ctrl+Z (``layer.undo()``) reverts any tool exactly, as it reverts napari's brush and fill.

Limit to HU range (3D Slicer's "editable intensity range"): while it is on, only voxels
whose HU in the chosen CT image lies in [low, high] may change, for these tools and for
napari's own paint brush, eraser, fill bucket and polygon. napari applies every brush,
fill and polygon edit through ``Labels._apply_mask_to_data(region, mask, label, box)``
(napari >= 0.6; before, through ``data_setitem``); the widget puts a small wrapper of
that method on the layer instance, which removes the out-of-range voxels from the mask
before napari paints and records the undo step. So out-of-range voxels are never
painted, not even for a moment, and undo stays one step per stroke. The wrappers are
instance attributes, removed when the widget moves to another layer or closes.

The live volume (mL) of the selected label is kept as a count per z slice: a paint
event (every brush stroke, fill, tool) recounts only the z slices it touched; undo, redo
and a new array recount all slices, once, a moment later.

Save corrected mask writes ``<scan>_<target>_corrected.nii.gz`` with ``io.write_mask``
(the scan's exact geometry; the scan itself is never overwritten, an existing file only
after the user agrees) as a job (``save_steps``) through the plugin's one Qt adapter
(``_napari/_jobs.py``), off the GUI thread, and records the pair in the corrections store
(``napari_ctseg.corrections``), with the z slices changed since the mask was made.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ... import corrections, editing
from ...errors import CTSegError
from ...io import write_mask
from ...io.nifti import is_nifti_path, scan_name
from ...jobs import Job, Progress, run
from ...volume import Geometry
from .._compat import PAINT_HOOK, layer_renamed, paint_hook_available, unwrap
from .._jobs import run_job
from .._layers import geometry_from_metadata

PREVIEW_KEY = "ctseg_preview"
"""``layer.metadata`` flag of the fill-between-slices preview layer this widget adds."""

AXES = (("axial (z)", 0), ("coronal (y)", 1), ("sagittal (x)", 2))
HOLE_MODES = (("in each axial slice", "slice"), ("in 3D", "3d"))
CUSTOM = "custom"





def remember_first_state(layer: Labels) -> None:
    """The baseline for 'changed slices', kept in the layer's metadata: Segment volume
    writes it when it makes the layer; another layer gets it when first seen here."""
    if corrections.BASELINE_KEY not in layer.metadata and np.ndim(layer.data) == 3:
        layer.metadata[corrections.BASELINE_KEY] = corrections.slice_digests(np.asarray(layer.data))


def _bundled_data_dir() -> Path | None:
    try:
        from importlib.resources import files

        return Path(str(files("napari_ctseg") / "data")).resolve()
    except (ModuleNotFoundError, TypeError):
        return None


def default_output(geometry: Geometry | None, target: str, fallback_name: str) -> tuple[Path, str]:
    """(folder, file name) for a corrected mask: beside the scan, ``<scan>_<target>_corrected.nii.gz``.

    A DICOM series' mask goes beside its folder (not among its files); a scan of unknown
    origin, or the bundled sample, gives the user's home folder.
    """
    folder, name = Path.home(), fallback_name
    source = Path(geometry.source_path) if geometry is not None and geometry.source_path else None
    if source is not None:
        if is_nifti_path(source):
            folder, name = source.parent, scan_name(source)
        else:  # DICOM: the series' folder, or the folder of the file that was opened
            series = source if source.is_dir() else source.parent
            folder, name = series.parent, series.name
        bundled = _bundled_data_dir()
        if bundled is not None and folder.resolve() == bundled:
            folder = Path.home()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{name}_{target}_corrected")
    return folder, f"{safe}.nii.gz"


def _remove_hooks(hooks: dict) -> None:
    target = hooks.get("target")
    if target is not None:
        for name in hooks.get("names", []):
            target.__dict__.pop(name, None)
    hooks.update(target=None, names=[])


def save_steps(path: Path, data: np.ndarray, geometry: Geometry, baseline) -> Job:
    """Save corrected mask as a job: write the mask on the scan's geometry, then measure it.
    Returns (path written, changed z slices, voxels per label)."""
    yield Progress(0, 2, f"writing {path.name}")
    written = write_mask(path, data, geometry)
    yield Progress(1, 2, "measuring the changed slices")
    return written, corrections.changed_slices(baseline, data), editing.label_voxels(data)


class MaskToolsWidget(QWidget):
    """Plugins > napari-ctseg > Mask tools."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.layer: Labels | None = None
        self.preview_layer: Labels | None = None
        self._preview_for: tuple | None = None
        # the layer carrying this widget's hooks; removed when the widget goes, even unclosed
        self._hooks: dict = {"target": None, "names": []}
        hooks = self._hooks
        self.destroyed.connect(lambda *_: _remove_hooks(hooks))
        self._hu_range: tuple[float, float] | None = None  # live limit, read by the hooks
        self._hu_image: Image | None = None
        self._applying = False
        self._save_worker = None  # Save corrected mask, while it writes
        self._z_counts: np.ndarray | None = None
        self._counted: tuple | None = None
        self._recount_timer = QTimer(self)
        self._recount_timer.setSingleShot(True)
        self._recount_timer.setInterval(150)
        self._recount_timer.timeout.connect(self._recount_all)
        self._pending_z: tuple[int, int] | None = None
        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(0)
        self._slice_timer.timeout.connect(self._recount_pending)

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The Labels layer to correct (follows the layer you select)")
        form.addRow("Labels layer", self.layer_combo)
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 255)
        self.label_spin.setToolTip("The label the tools work on: the layer's selected label")
        form.addRow("Label", self.label_spin)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The CT image (in HU) for the HU range limit and the geometry")
        form.addRow("CT image", self.image_combo)
        layout.addLayout(form)
        self.volume_label = QLabel("")
        self.volume_label.setToolTip("Volume of the selected label, updated as you paint")
        layout.addWidget(self.volume_label)

        fill_box = QGroupBox("Fill between slices")
        fill = QGridLayout(fill_box)
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
        layout.addWidget(fill_box)

        clean_box = QGroupBox("Islands and holes")
        clean = QGridLayout(clean_box)
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
        layout.addWidget(clean_box)

        morph_box = QGroupBox("Smooth, grow, shrink")
        morph = QGridLayout(morph_box)
        self.smooth_combo = QComboBox()
        self.smooth_combo.addItems(["close", "open", "median"])
        self.smooth_combo.setToolTip("close: fill dents and gaps; open: remove bumps and thin bridges; "
                                     "median: majority within the radius")
        self.radius_spin = QDoubleSpinBox()
        self.radius_spin.setRange(0.1, 50.0)
        self.radius_spin.setSingleStep(0.5)
        self.radius_spin.setValue(2.0)
        self.radius_spin.setSuffix(" mm")
        self.smooth_button = QPushButton("Smooth")
        morph.addWidget(self.smooth_combo, 0, 0)
        morph.addWidget(self.radius_spin, 0, 1)
        morph.addWidget(self.smooth_button, 0, 2)
        self.margin_spin = QDoubleSpinBox()
        self.margin_spin.setRange(0.1, 50.0)
        self.margin_spin.setSingleStep(0.5)
        self.margin_spin.setValue(2.0)
        self.margin_spin.setSuffix(" mm")
        self.margin_spin.setToolTip("Distance in mm, in every direction (voxel spacing respected)")
        self.grow_button = QPushButton("Grow")
        self.shrink_button = QPushButton("Shrink")
        morph.addWidget(self.margin_spin, 1, 0)
        morph.addWidget(self.grow_button, 1, 1)
        morph.addWidget(self.shrink_button, 1, 2)
        layout.addWidget(morph_box)

        hu_box = QGroupBox("HU range")
        hu = QGridLayout(hu_box)
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
        layout.addWidget(hu_box)

        save_box = QGroupBox("Save corrected mask")
        save = QGridLayout(save_box)
        self.folder_edit = QLineEdit()
        self.folder_edit.setToolTip("Folder of the corrected mask (default: the scan's folder)")
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the folder")
        browse.clicked.connect(self._browse_folder)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("File name (.nii.gz or .nii); written on the scan's exact geometry")
        self.save_button = QPushButton("Save corrected mask")
        self.save_button.setToolTip("Write the mask beside the scan and add it to your corrections "
                                    "(for fine-tuning); never overwrites the scan")
        save.addWidget(QLabel("Folder"), 0, 0)
        save.addWidget(self.folder_edit, 0, 1)
        save.addWidget(browse, 0, 2)
        save.addWidget(QLabel("Name"), 1, 0)
        save.addWidget(self.name_edit, 1, 1, 1, 2)
        save.addWidget(self.save_button, 2, 0, 1, 3)
        layout.addWidget(save_box)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.preview_button.clicked.connect(self.preview_fill)
        self.apply_button.clicked.connect(self.apply_fill)
        self.discard_button.clicked.connect(self.discard_fill)
        self.islands_button.clicked.connect(self.remove_islands)
        self.holes_button.clicked.connect(self.fill_holes)
        self.smooth_button.clicked.connect(self.smooth)
        self.grow_button.clicked.connect(self.grow)
        self.shrink_button.clicked.connect(self.shrink)
        self.save_button.clicked.connect(self._save_clicked)
        self.layer_combo.currentIndexChanged.connect(self._layer_chosen)
        self.image_combo.currentIndexChanged.connect(self._update_hu_state)
        self.label_spin.valueChanged.connect(self._label_chosen)
        self.hu_check.toggled.connect(self._update_hu_state)
        self.hu_preset_combo.currentIndexChanged.connect(self._preset_chosen)
        self.hu_low_spin.valueChanged.connect(self._range_edited)
        self.hu_high_spin.valueChanged.connect(self._range_edited)
        self._preset_chosen()

        self._specs = [
            (self.viewer.layers.events.inserted, "_layer_inserted"),
            (self.viewer.layers.events.removed, "_layer_removed"),
            (self.viewer.layers.events.reordered, "refresh_layers"),
            (layer_renamed(self.viewer.layers), "refresh_layers"),
            (self.viewer.layers.selection.events.active, "_follow_active"),
        ]
        for emitter, name in self._specs:
            emitter.connect(getattr(self, name))
        for layer in self.labels_layers():
            remember_first_state(layer)
        self.refresh_layers()
        self._follow_active()
        self._update_enabled()

    # --- layers ------------------------------------------------------------------------
    def labels_layers(self) -> list[Labels]:
        return [ly for ly in self.viewer.layers
                if isinstance(ly, Labels) and ly.ndim == 3 and not ly.metadata.get(PREVIEW_KEY)]

    def image_layers(self) -> list[Image]:
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.ndim == 3 and not ly.rgb]

    def refresh_layers(self, event=None):
        self._fill_combo(self.layer_combo, self.labels_layers(), self.layer)
        images = self.image_layers()
        if self.layer is not None:
            images = [im for im in images if tuple(im.data.shape) == tuple(self.layer.data.shape)]
        current = self._selected_image()
        if current is None and self.layer is not None and images:
            current = self._matching_image(self.layer, images)
        self._fill_combo(self.image_combo, images, current)
        self._layer_chosen()

    @staticmethod
    def _fill_combo(combo: QComboBox, layers, current):
        combo.blockSignals(True)
        combo.clear()
        for ly in layers:
            combo.addItem(ly.name)
        if current is not None and current.name in [ly.name for ly in layers]:
            combo.setCurrentText(current.name)
        combo.blockSignals(False)

    @staticmethod
    def _matching_image(labels: Labels, images: list[Image]) -> Image | None:
        """The image this mask belongs to: same source file if known, else the first of its shape."""
        source = labels.metadata.get("ctseg", {}).get("source_path")
        for im in images:
            if source and im.metadata.get("ctseg", {}).get("source_path") == source:
                return im
        return images[0] if images else None

    def _selected_image(self) -> Image | None:
        name = self.image_combo.currentText()
        return next((im for im in self.image_layers() if im.name == name), None)

    def _layer_inserted(self, event=None):
        layer = getattr(event, "value", None)
        if isinstance(layer, Labels) and not layer.metadata.get(PREVIEW_KEY):
            remember_first_state(layer)
        self.refresh_layers()

    def _layer_removed(self, event=None):
        layer = getattr(event, "value", None)
        if layer is not None and unwrap(layer) is unwrap(self.preview_layer):
            self.preview_layer = None
            self._preview_for = None
        self.refresh_layers()

    def _follow_active(self, event=None):
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and self.layer_combo.findText(active.name) >= 0:
            self.layer_combo.setCurrentText(active.name)

    def _layer_chosen(self, index=None):
        name = self.layer_combo.currentText()
        layer = next((ly for ly in self.labels_layers() if ly.name == name), None)
        if unwrap(layer) is not unwrap(self.layer):
            self._set_layer(layer)
        self._update_hu_state()
        self._update_enabled()

    def _set_layer(self, layer: Labels | None):
        old = self.layer
        if old is not None:
            for emitter, cb in self._layer_events(old):
                try:
                    emitter.disconnect(cb)
                except (ValueError, RuntimeError, TypeError):
                    pass
        self._unhook()
        self.layer = layer
        self._counted = None
        if layer is None:
            self.volume_label.setText("")
            return
        remember_first_state(layer)
        for emitter, cb in self._layer_events(layer):
            emitter.connect(cb)
        self._hook(layer)
        self.label_spin.blockSignals(True)
        self.label_spin.setMaximum(int(min(np.iinfo(layer.data.dtype).max, 2**31 - 1))
                                   if np.issubdtype(layer.data.dtype, np.integer) else 255)
        self.label_spin.setValue(max(int(layer.selected_label), 1))
        self.label_spin.blockSignals(False)
        images = [im for im in self.image_layers() if tuple(im.data.shape) == tuple(layer.data.shape)]
        self._fill_combo(self.image_combo, images, self._matching_image(layer, images))
        self._set_default_output()
        self._recount_all()

    def _layer_events(self, layer):
        return [(layer.events.paint, self._on_paint), (layer.events.data, self._on_data),
                (layer.events.selected_label, self._on_selected_label)]

    def _on_selected_label(self, event=None):
        if self.layer is not None and int(self.layer.selected_label) != self.label_spin.value() \
                and self.layer.selected_label > 0:
            self.label_spin.setValue(int(self.layer.selected_label))

    def _label_chosen(self, value=None):
        if self.layer is not None and int(self.layer.selected_label) != self.label_spin.value():
            self.layer.selected_label = self.label_spin.value()
        self._recount_all()

    @property
    def label(self) -> int:
        return int(self.label_spin.value())

    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm of the layer: its scan geometry, else its scale."""
        geometry = self.geometry()
        if geometry is not None and tuple(geometry.display_shape) == tuple(self.layer.data.shape):
            return geometry.spacing
        return tuple(float(s) for s in self.layer.scale[-3:])

    def geometry(self) -> Geometry | None:
        """The scan geometry of the layer's metadata, else of the chosen CT image."""
        if self.layer is None:
            return None
        geometry = geometry_from_metadata(self.layer.metadata)
        if geometry is None:
            image = self._selected_image()
            if image is not None:
                geometry = geometry_from_metadata(image.metadata)
        return geometry

    # --- undo-aware writes and hooks -------------------------------------------------------
    def _hook(self, layer: Labels):
        """Wrap napari's paint path and undo/redo on this layer instance (see the module doc)."""
        target = unwrap(layer)
        me = weakref.ref(self)
        cls = type(target)

        def hu_allowed(region_slices_or_indices):
            widget = me()
            if widget is None or widget._hu_range is None or widget._hu_image is None:
                return None
            lo, hi = widget._hu_range
            values = np.asarray(widget._hu_image.data[region_slices_or_indices])
            return (values >= lo) & (values <= hi)

        hooks = {}
        if paint_hook_available(target):
            def _apply_mask_to_data(data, mask, new_label, volume_slice):
                allowed = hu_allowed(tuple(volume_slice))
                if allowed is not None and allowed.shape == np.shape(mask):
                    mask = np.logical_and(mask, allowed)
                return getattr(cls, PAINT_HOOK)(target, data, mask, new_label, volume_slice)

            hooks[PAINT_HOOK] = _apply_mask_to_data

        def data_setitem(indices, value, refresh=True):
            widget = me()
            if widget is not None and not widget._applying and isinstance(indices, tuple) \
                    and all(isinstance(i, np.ndarray) for i in indices):
                allowed = hu_allowed(indices)
                if allowed is not None:
                    indices = tuple(i[allowed] for i in indices)
                    if np.ndim(value) > 0:
                        value = np.asarray(value)[allowed]
            return cls.data_setitem(target, indices, value, refresh)

        hooks["data_setitem"] = data_setitem

        def undo():
            cls.undo(target)
            widget = me()
            if widget is not None:
                widget._schedule_recount()

        def redo():
            cls.redo(target)
            widget = me()
            if widget is not None:
                widget._schedule_recount()

        hooks["undo"], hooks["redo"] = undo, redo
        for name, fn in hooks.items():
            setattr(target, name, fn)
        self._hooks.update(target=target, names=list(hooks))

    def _unhook(self):
        _remove_hooks(self._hooks)

    def apply_edit(self, edit: editing.RegionEdit, what: str) -> int:
        """Write an edit into the layer as one undoable step; returns the voxels changed.

        Only the changed voxels of the edit's box are written (``Labels.data_setitem``),
        those outside the HU range left out when the limit is on.
        """
        layer = self.layer
        if edit.is_empty:
            self._say(f"{what}: nothing to change for label {self.label}")
            return 0
        old = np.asarray(layer.data[edit.box])
        changed = old != edit.values
        if self._hu_range is not None and self._hu_image is not None:
            changed = editing.limit_to_hu_range(changed, np.asarray(self._hu_image.data[edit.box]),
                                                *self._hu_range)
        local = np.nonzero(changed)
        n = int(local[0].size)
        if n == 0:
            self._say(f"{what}: nothing to change for label {self.label}"
                      + (" within the HU range" if self._hu_range is not None else ""))
            return 0
        indices = tuple(idx + s.start for idx, s in zip(local, edit.box))
        self._applying = True
        try:
            layer.data_setitem(indices, edit.values[changed])
        finally:
            self._applying = False
        self._say(f"{what}: {n:,} voxels changed (Ctrl+Z undoes it)")
        return n

    def _run_tool(self, what: str, make_edit) -> int:
        if not self._ready(what):
            return 0
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            edit = make_edit(np.asarray(self.layer.data), self.label, self.spacing())
            return self.apply_edit(edit, what)
        except (CTSegError, ValueError) as exc:
            show_error(f"Mask tools: {what}: {exc}")
            return 0
        finally:
            QApplication.restoreOverrideCursor()

    def _ready(self, what: str) -> bool:
        if self.layer is None:
            show_error(f"Mask tools: {what}: choose a 3D Labels layer first (for example from Segment volume)")
            return False
        return True

    def _say(self, text: str):
        self.status.setText(text)

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
        mask = np.asarray(self.layer.data)
        edit = editing.interpolate_between_slices(mask, label, axis=axis, spacing=self.spacing())
        if self._hu_range is not None and self._hu_image is not None:
            edit = editing.limit_edit_to_hu_range(edit, mask, self._hu_image.data, *self._hu_range)
        return edit

    def preview_fill(self) -> Labels | None:
        """Show the proposed fill between outlined slices as a separate, read-only layer."""
        if not self._ready("Fill between slices"):
            return None
        self.discard_fill()
        layer = self.layer
        label, axis = self.label, self.axis_combo.currentData()
        edit = self._fill_edit(label, axis)
        n = edit.n_changed(np.asarray(layer.data))
        if n == 0:
            self._say("Fill between slices: outline the label on two or more slices with empty slices "
                      "between them")
            return None
        added = edit.changed(np.asarray(layer.data))
        data = np.where(added, edit.values, 0).astype(layer.data.dtype)
        start = np.array([s.start for s in edit.box], dtype=float)
        scale = np.asarray(layer.scale[-3:], dtype=float)
        self.preview_layer = self.viewer.add_labels(
            data, name=f"{layer.name} fill preview", scale=scale,
            translate=np.asarray(layer.translate[-3:], dtype=float) + start * scale,
            opacity=0.8, colormap={None: "transparent", label: "yellow"},
            metadata={PREVIEW_KEY: True})
        self.preview_layer.editable = False
        self._preview_for = (unwrap(layer), label, axis)
        self.viewer.layers.selection.active = layer  # keep painting on the mask
        self._say(f"Fill between slices: {n:,} voxels proposed (yellow); Apply or Discard")
        self._update_enabled()
        return self.preview_layer

    def apply_fill(self) -> int:
        """Fill the slices between outlines, undoably: the previewed label and axis if there
        is a preview (recomputed, so strokes made since count), else the current ones."""
        if not self._ready("Fill between slices"):
            return 0
        label, axis = self.label, self.axis_combo.currentData()
        if self._preview_for is not None and self._preview_for[0] is unwrap(self.layer):
            label, axis = self._preview_for[1:]
        edit = self._fill_edit(label, axis)
        self.discard_fill()
        return self.apply_edit(edit, "Fill between slices")

    def discard_fill(self):
        preview = self.preview_layer
        self.preview_layer = None
        self._preview_for = None
        if preview is not None and preview in self.viewer.layers:
            self.viewer.layers.remove(preview)
        self._update_enabled()

    # --- HU range ----------------------------------------------------------------------
    def _preset_chosen(self, index=None):
        name = self.hu_preset_combo.currentData()
        if name in editing.HU_RANGE_PRESETS:
            lo, hi = editing.HU_RANGE_PRESETS[name]
            for spin, v in ((self.hu_low_spin, lo), (self.hu_high_spin, hi)):
                spin.blockSignals(True)
                spin.setValue(v)
                spin.blockSignals(False)
        self._update_hu_state()

    def _range_edited(self, value=None):
        lo, hi = self.hu_low_spin.value(), self.hu_high_spin.value()
        preset = next((n for n, r in editing.HU_RANGE_PRESETS.items() if r == (lo, hi)), CUSTOM)
        self.hu_preset_combo.blockSignals(True)
        self.hu_preset_combo.setCurrentIndex(self.hu_preset_combo.findData(preset))
        self.hu_preset_combo.blockSignals(False)
        self._update_hu_state()

    def set_hu_limit(self, low: float, high: float, enabled: bool = True):
        """Set the HU range limit (as the controls do)."""
        self.hu_low_spin.setValue(low)
        self.hu_high_spin.setValue(high)
        self.hu_check.setChecked(enabled)
        self._update_hu_state()

    def _update_hu_state(self, *args):
        image = self._selected_image()
        if self.layer is not None and image is not None \
                and tuple(image.data.shape) != tuple(self.layer.data.shape):
            image = None
        on = self.hu_check.isChecked()
        lo, hi = sorted((self.hu_low_spin.value(), self.hu_high_spin.value()))
        before = (self._hu_image, self._hu_range)
        self._hu_image = image
        self._hu_range = (lo, hi) if on and image is not None else None
        if (self._hu_image, self._hu_range) == before or not on:
            return
        if image is None:
            self._say("Limit to HU range: no CT image of the mask's shape is open; the limit is off")
        else:
            self._say(f"Only voxels from {lo:g} to {hi:g} HU in '{image.name}' can change now")

    # --- live volume ----------------------------------------------------------------------
    def _schedule_recount(self):
        try:
            self._recount_timer.start()
        except RuntimeError:  # the widget is gone
            pass

    def _recount_all(self):
        self._pending_z = None
        layer = self.layer
        if layer is None:
            self._z_counts = None
            return
        data = np.asarray(layer.data)
        label = self.label
        eq = data == label
        self._z_counts = eq.reshape(eq.shape[0], -1).sum(axis=1, dtype=np.int64)
        self._counted = (layer, label)
        self._show_volume()

    def _recount_slices(self, z0: int, z1: int):
        data = np.asarray(self.layer.data)
        if len(self._z_counts) != data.shape[0]:
            self._recount_all()
            return
        z0, z1 = max(z0, 0), min(z1, data.shape[0])
        if z1 > z0:
            eq = data[z0:z1] == self.label
            self._z_counts[z0:z1] = eq.reshape(z1 - z0, -1).sum(axis=1, dtype=np.int64)
        self._show_volume()

    def _on_paint(self, event=None):
        # napari emits ``paint`` as it records the undo step, which for a single paint()
        # or data_setitem() call is just before it writes the voxels: count a moment later.
        if self._z_counts is None or self._counted != (self.layer, self.label):
            self._schedule_recount()
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
                self._schedule_recount()
                return
            z0 = lo if z0 is None else min(z0, lo)
            z1 = hi if z1 is None else max(z1, hi)
        if z0 is None:
            return
        if self._pending_z is not None:
            z0, z1 = min(z0, self._pending_z[0]), max(z1, self._pending_z[1])
        self._pending_z = (int(z0), int(z1))
        self._slice_timer.start()

    def _recount_pending(self):
        pending, self._pending_z = self._pending_z, None
        if pending is not None and self.layer is not None and self._z_counts is not None:
            self._recount_slices(*pending)

    def _on_data(self, event=None):
        self._schedule_recount()

    def _show_volume(self):
        if self.layer is None or self._z_counts is None:
            self.volume_label.setText("")
            return
        n = int(self._z_counts.sum())
        ml = n * float(np.prod(self.spacing())) / 1000.0
        self.volume_label.setText(f"Label {self.label}: {ml:,.2f} mL ({n:,} voxels)")

    def volume_ml(self) -> float:
        """The volume shown, in mL."""
        return int(self._z_counts.sum()) * float(np.prod(self.spacing())) / 1000.0

    # --- saving --------------------------------------------------------------------------
    def _set_default_output(self):
        layer = self.layer
        target = str(layer.metadata.get("target") or layer.name)
        folder, name = default_output(self.geometry(), target, self._selected_image().name
                                      if self._selected_image() is not None else layer.name)
        self.folder_edit.setText(str(folder))
        self.name_edit.setText(name)

    def _browse_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder for the corrected mask", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def output_path(self) -> Path:
        name = self.name_edit.text().strip()
        if name and not is_nifti_path(name):
            name += ".nii.gz"
        return Path(self.folder_edit.text().strip() or Path.home()).expanduser() / name

    def _save_clicked(self):
        """Save through the job adapter (a large mask takes seconds to compress); the mask is
        copied when the button is pressed, so painting on meanwhile is safe."""
        if self._save_worker is not None:
            return
        job = self._prepare_save(None)
        if job is None:
            return
        self._say(f"Saving {job['path'].name} ...")
        self._save_worker = run_job(
            save_steps(job["path"], job["data"], job["geometry"], job["baseline"]),
            title="Save corrected mask", owner=self, status=self.status, start_button=self.save_button,
            on_done=lambda out: self._finish_save(job, *out), on_finished=self._save_finished,
            failed_text="Not saved: {error}")

    def _save_finished(self):
        self._save_worker = None
        self._update_enabled()

    def _ask_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(
            self, "Replace the file?", f"{path.name} already exists in {path.parent}.\nReplace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def save_corrected(self, overwrite: bool | None = None) -> Path | None:
        """Write the mask on the scan's geometry and record it in the corrections store, here
        and now (the button does the same in a worker thread).

        An existing file is replaced only when ``overwrite`` is True, or when it is None
        and the user says yes. The scan itself is never overwritten. Returns the path
        written, or None.
        """
        job = self._prepare_save(overwrite)
        if job is None:
            return None
        try:
            out = run(save_steps(job["path"], job["data"], job["geometry"], job["baseline"]))
        except CTSegError as exc:
            show_error(f"Save corrected mask: {exc}")
            self._say(f"Not saved: {exc}")
            return None
        return self._finish_save(job, *out)

    def _prepare_save(self, overwrite: bool | None) -> dict | None:
        """What to write where (the mask copied now), after the checks and the overwrite question."""
        if not self._ready("Save corrected mask"):
            return None
        layer = self.layer
        geometry = self.geometry()
        if geometry is None:
            show_error(f"Save corrected mask: '{layer.name}' has no scan geometry; open the CT with "
                       "napari-ctseg and choose it as the CT image")
            return None
        if not self.name_edit.text().strip():
            show_error("Save corrected mask: type a file name")
            return None
        path = self.output_path()
        same_as_scan = bool(geometry.source_path) and path.resolve() == Path(geometry.source_path).resolve()
        if path.exists() and not same_as_scan:
            if overwrite is None:
                overwrite = self._ask_overwrite(path)
            if not overwrite:
                self._say(f"Not saved: {path.name} already exists")
                return None
        return {"path": path, "data": np.array(layer.data, copy=True), "geometry": geometry,
                "baseline": layer.metadata.get(corrections.BASELINE_KEY),
                "target": str(layer.metadata.get("target") or layer.name),
                "version": str(layer.metadata.get("model_version") or "")}

    def _finish_save(self, job: dict, written: Path, changed: list[int], voxels: dict[str, int]) -> Path:
        corrections.record_correction(job["geometry"].source_path, written, job["target"], job["version"],
                                      changed, voxels)
        n = len(changed)
        self._say(f"Saved {written.name} ({n} slice{'s' if n != 1 else ''} changed); "
                  f"added to your corrections")
        show_info(f"Saved {written} on the scan's geometry; added to your corrections")
        return written

    # --- state ---------------------------------------------------------------------------
    def _update_enabled(self):
        has = self.layer is not None
        for w in (self.preview_button, self.apply_button, self.islands_button, self.holes_button,
                  self.smooth_button, self.grow_button, self.shrink_button, self.save_button):
            w.setEnabled(has)
        if self._save_worker is not None:
            self.save_button.setEnabled(False)
        self.discard_button.setEnabled(self.preview_layer is not None)
        if not has:
            self._say("Select a 3D Labels layer (Segment volume makes them; napari's New labels too)")

    def closeEvent(self, event):
        self.close_tools()
        super().closeEvent(event)

    def close_tools(self):
        """Remove the hooks and the preview layer and disconnect from the viewer."""
        self.discard_fill()
        self._set_layer(None)
        for emitter, name in self._specs:
            try:
                emitter.disconnect(getattr(self, name))
            except (ValueError, RuntimeError, TypeError):
                pass
