"""Mask tools dock widget: correct a Labels layer, then save it on the scan's geometry.

The widget works on the chosen Labels layer (it follows the layer selection) and its
selected label, and puts together pieces that each do one thing:

* ``_mask_edits.EditPanel``: the editing operations (fill between slices with a preview,
  islands and holes, smooth, grow, shrink), each one undoable step of napari's own undo;
  ``_mask_edits.HuRangeBox``: Limit to HU range (3D Slicer's "editable intensity range");
* ``_mask_hooks.PaintGuard``: that limit on napari's own brush, eraser, fill and polygon
  too, through a wrapper of the layer's paint path (see that module);
* ``_mask_volume.LiveVolume``: the live volume (mL) of the selected label;
* ``_mask_save.SavePanel``: Save corrected mask, a job through the plugin's Qt adapter,
  recorded in the corrections store with the z slices changed since the mask was made.

This module keeps the layer and target bookkeeping: which Labels layer, label and CT image
the pieces work on, and the layer's spacing and scan geometry.
"""
from __future__ import annotations

from functools import partial

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QFrame, QLabel, QScrollArea, QSpinBox, QVBoxLayout, QWidget

from napari_ctseg.editing import corrections
from napari_ctseg.io.volume import Geometry
from napari_ctseg._napari._compat import layer_renamed, unwrap
from napari_ctseg._napari._layers import geometry_from_metadata
from napari_ctseg._napari._warm import warm_up
from napari_ctseg._napari.widgets._mask_edits import AXES, CUSTOM, HOLE_MODES, PREVIEW_KEY, EditPanel, HuRangeBox  # noqa: F401
from napari_ctseg._napari.widgets._mask_clicks import ClickPanel
from napari_ctseg._napari.widgets._mask_prompts import SCRIBBLES_KEY
from napari_ctseg._napari.widgets._mask_compare import ComparePanel
from napari_ctseg._napari.widgets._mask_hooks import PaintGuard
from napari_ctseg._napari.widgets._mask_save import SavePanel, default_output, save_steps  # noqa: F401
from napari_ctseg._napari.widgets._mask_volume import LiveVolume

# The panels' controls, also reachable as attributes of the widget (scripts and tests use them).
_CONTROLS = {
    "edits": ("axis_combo", "preview_button", "apply_button", "discard_button", "keep_spin", "min_size_spin",
              "islands_button", "holes_combo", "holes_button", "smooth_combo", "radius_spin", "smooth_button",
              "margin_spin", "grow_button", "shrink_button"),
    "hu_box": ("hu_check", "hu_preset_combo", "hu_low_spin", "hu_high_spin"),
    "save_panel": ("folder_edit", "name_edit", "format_box", "save_button"),
}


def remember_first_state(layer: Labels) -> None:
    """The baseline for 'changed slices', kept in the layer's metadata: Segment volume
    writes it when it makes the layer; another layer gets it when first seen here."""
    if corrections.BASELINE_KEY not in layer.metadata and np.ndim(layer.data) == 3:
        layer.metadata[corrections.BASELINE_KEY] = corrections.slice_digests(np.asarray(layer.data))


class MaskToolsWidget(QWidget):
    """Plugins > napari-ctseg > Mask tools."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.layer: Labels | None = None
        self.guard = PaintGuard(self, on_undo_redo=self._schedule_recount)

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
        self.volume = LiveVolume(self.volume_label, self.spacing, parent=self)
        self.status = QLabel("")  # near the top: the dock is taller than most windows
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(2 * self.status.fontMetrics().lineSpacing() + 4)  # two lines, never squeezed
        layout.addWidget(self.status)
        self.edits, self.hu_box, self.save_panel = EditPanel(self), HuRangeBox(self), SavePanel(self)
        self.clicks, self.compare_panel = ClickPanel(self), ComparePanel(self)
        # the panels scroll under the layer, label and status lines: the dock is taller than most
        # windows, and docked with others (CT view) it would be squeezed until its text overlaps
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        panels = QWidget()
        column = QVBoxLayout(panels)
        column.setContentsMargins(0, 0, 0, 0)
        for panel in (self.clicks, self.edits, self.hu_box, self.save_panel, self.compare_panel):
            column.addWidget(panel)
        column.addStretch(1)
        scroll.setWidget(panels)
        # as wide as the panels need: they scroll up and down, never cut at the side
        scroll.setMinimumWidth(panels.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        layout.addWidget(scroll, 1)
        self.panels_scroll = scroll
        for panel, names in _CONTROLS.items():
            for name in names:
                setattr(self, name, getattr(getattr(self, panel), name))

        QTimer.singleShot(0, partial(warm_up, napari_viewer))  # napari's first layers of a session cost less (``_warm``)
        self.layer_combo.currentIndexChanged.connect(self._layer_chosen)
        self.image_combo.currentIndexChanged.connect(self.hu_box.update_state)
        self.label_spin.valueChanged.connect(self._label_chosen)
        self.hu_box._preset_chosen()

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
        self.update_enabled()

    # --- what the panels use ------------------------------------------------------------
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
            image = self.selected_image()
            if image is not None:
                geometry = geometry_from_metadata(image.metadata)
        return geometry

    def ready(self, what: str) -> bool:
        if self.layer is None:
            show_error(f"Mask tools: {what}: choose a 3D Labels layer first (for example from Segment volume)")
            return False
        return True

    def say(self, text: str):
        self.status.setText(text)

    def update_enabled(self):
        has = self.layer is not None
        for w in (*self.edits.buttons, *self.clicks.buttons, *self.compare_panel.buttons, self.save_button):
            w.setEnabled(has)
        if self.save_panel.worker is not None:
            self.save_button.setEnabled(False)
        self.discard_button.setEnabled(self.edits.preview_layer is not None)
        if not has:
            self.say("Select a 3D Labels layer (Segment volume makes them; napari's New labels too)")

    # --- the widget's own API (scripts, tests), done by its pieces ------------------------
    def remove_islands(self) -> int:
        return self.edits.remove_islands()

    def fill_holes(self) -> int:
        return self.edits.fill_holes()

    def smooth(self) -> int:
        return self.edits.smooth()

    def grow(self) -> int:
        return self.edits.grow()

    def shrink(self) -> int:
        return self.edits.shrink()

    def preview_fill(self) -> Labels | None:
        return self.edits.preview_fill()

    def apply_fill(self) -> int:
        return self.edits.apply_fill()

    def discard_fill(self):
        self.edits.discard_fill()

    @property
    def preview_layer(self) -> Labels | None:
        return self.edits.preview_layer

    def set_hu_limit(self, low: float, high: float, enabled: bool = True):
        """Set the HU range limit (as the controls do)."""
        self.hu_box.set_hu_limit(low, high, enabled)

    def volume_ml(self) -> float:
        """The volume shown, in mL."""
        return self.volume.ml()

    def save_corrected(self, overwrite: bool | None = None) -> Path | None:
        """Write the mask on the scan's geometry and record it in the corrections store, here
        and now (the button does the same in a worker thread).

        An existing file is replaced only when ``overwrite`` is True, or when it is None
        and the user says yes. The scan itself is never overwritten. Returns the path
        written, or None.
        """
        return self.save_panel.save_corrected(overwrite)

    @property
    def _save_worker(self):
        """The save job while it writes (None otherwise)."""
        return self.save_panel.worker

    # --- layers ------------------------------------------------------------------------
    def labels_layers(self) -> list[Labels]:
        return [ly for ly in self.viewer.layers
                if isinstance(ly, Labels) and ly.ndim == 3 and not ly.metadata.get(PREVIEW_KEY)
                and not ly.metadata.get(SCRIBBLES_KEY)]

    def image_layers(self) -> list[Image]:
        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.ndim == 3 and not ly.rgb]

    def refresh_layers(self, event=None):
        self._fill_combo(self.layer_combo, self.labels_layers(), self.layer)
        self.compare_panel.refresh()
        images = self.image_layers()
        if self.layer is not None:
            images = [im for im in images if tuple(im.data.shape) == tuple(self.layer.data.shape)]
        current = self.selected_image()
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

    def selected_image(self) -> Image | None:
        name = self.image_combo.currentText()
        return next((im for im in self.image_layers() if im.name == name), None)

    def _layer_inserted(self, event=None):
        layer = getattr(event, "value", None)
        if isinstance(layer, Labels) and not layer.metadata.get(PREVIEW_KEY) and not layer.metadata.get(SCRIBBLES_KEY):
            remember_first_state(layer)
        self.refresh_layers()

    def _layer_removed(self, event=None):
        layer = getattr(event, "value", None)
        if layer is not None:
            self.edits.forget_preview(layer)
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
        self.hu_box.update_state()
        self.update_enabled()

    def _set_layer(self, layer: Labels | None):
        old = self.layer
        if old is not None:
            for emitter, cb in self._layer_events(old):
                try:
                    emitter.disconnect(cb)
                except (ValueError, RuntimeError, TypeError):
                    pass
        self.guard.detach()
        if unwrap(layer) is not unwrap(old):
            self.clicks.set_active(False)  # clicks belong to one layer; turn them on again for the next
            self.clicks.set_scribbling(False)
            self.clicks.set_boxing(False)
            self.clicks.points = None
            self.clicks.scribbles = None
            self.clicks.boxes = None
        self.layer = layer
        if layer is None:
            self.volume.follow(None, self.label)
            return
        remember_first_state(layer)
        for emitter, cb in self._layer_events(layer):
            emitter.connect(cb)
        self.guard.attach(layer)
        self.label_spin.blockSignals(True)
        self.label_spin.setMaximum(int(min(np.iinfo(layer.data.dtype).max, 2**31 - 1))
                                   if np.issubdtype(layer.data.dtype, np.integer) else 255)
        self.label_spin.setValue(max(int(layer.selected_label), 1))
        self.label_spin.blockSignals(False)
        images = [im for im in self.image_layers() if tuple(im.data.shape) == tuple(layer.data.shape)]
        self._fill_combo(self.image_combo, images, self._matching_image(layer, images))
        self.save_panel.set_default_output()
        self.compare_panel.refresh()
        self.volume.follow(layer, self.label)

    def _layer_events(self, layer):
        return [(layer.events.paint, self.volume.on_paint), (layer.events.data, self.volume.schedule_recount),
                (layer.events.selected_label, self._on_selected_label)]

    def _on_selected_label(self, event=None):
        if self.layer is not None and int(self.layer.selected_label) != self.label_spin.value() \
                and self.layer.selected_label > 0:
            self.label_spin.setValue(int(self.layer.selected_label))

    def _label_chosen(self, value=None):
        if self.layer is not None and int(self.layer.selected_label) != self.label_spin.value():
            self.layer.selected_label = self.label_spin.value()
        self.volume.follow(self.layer, self.label)

    def _schedule_recount(self):
        self.volume.schedule_recount()

    # --- lifecycle ------------------------------------------------------------------------
    def closeEvent(self, event):
        self.close_tools()
        super().closeEvent(event)

    def close_tools(self):
        """Remove the hooks and the preview layer and disconnect from the viewer."""
        self.discard_fill()
        self.clicks.detach()
        self._set_layer(None)
        for emitter, name in self._specs:
            try:
                emitter.disconnect(getattr(self, name))
            except (ValueError, RuntimeError, TypeError):
                pass
