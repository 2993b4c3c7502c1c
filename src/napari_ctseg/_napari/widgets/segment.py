"""Segment volume dock widget: the bundled U-Nets over the chosen CT, in a worker thread.

The widget gathers the choices (image layer, targets, device, model versions), hands
``inference.segment_steps`` to a napari ``thread_worker`` and shows its progress in the
widget and in napari's activity dock. Cancel stops the worker at the next batch of
slices; no layer is added then. Results arrive as one new Labels layer per target, on
the image's scale/translate with the source geometry in ``metadata`` (so File > Save
writes them onto the scan), never replacing a layer that is already there.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...corrections import BASELINE_KEY, slice_digests
from ...errors import CTSegError
from ...inference import ModelSet, SegmentResult, check_image8, segment_image8, segment_steps
from ...models.definition import colors as card_colors
from ...models.definition import label_display_name
from ...models.definition import style as card_style
from ...models.registry import ModelRegistry, as_registry
from ...volume import METADATA_KEY, CTVolume, Geometry
from .._compat import layer_renamed
from .._layers import geometry_from_metadata
from ._models_events import connect_models_changed

DEVICE_CHOICES = ("Auto", "CPU", "CUDA")


def labels_layer_kwargs(card) -> dict:
    """napari Labels settings from a model card's display: a colour per label, fill or contour, opacity."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {0: "transparent", None: "transparent", **card_colors(card)}
    st = card_style(card)
    names = ["background"] + [label_display_name(k) for k in sorted(card.labels, key=card.labels.get)]
    return {"colormap": DirectLabelColormap(color_dict=color_dict), "opacity": st["opacity"],
            "features": pd.DataFrame({"name": names}),
            "contour": st["contour"] if st["style"] == "contour" else 0}


def legend_html(cards) -> str:
    """A line of coloured squares with label names, in the cards' stacking order."""
    parts = []
    for card in sorted(cards, key=lambda c: card_style(c)["order"]):
        cols = card_colors(card)
        st = card_style(card)
        for name, v in sorted(card.labels.items(), key=lambda kv: kv[1]):
            mark = "&#9634;" if st["style"] == "contour" else "&#9632;"
            parts.append(f'<span style="color:{cols[int(v)]}; font-size:16px">{mark}</span>&nbsp;'
                         f"{label_display_name(name)}")
    return "&nbsp;&nbsp; ".join(parts)


def volume_from_layer(layer: Image) -> CTVolume:
    """The CTVolume behind an image layer: its array and the geometry in its metadata.

    An image opened some other way gets a geometry from its ``scale`` alone, its axes
    taken as (z, y, x) pointing to Inferior, Posterior, Left.
    """
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise CTSegError(f"'{layer.name}' is {data.ndim}D; Segment volume needs a 3D CT")
    geometry = geometry_from_metadata(layer.metadata)
    if geometry is None:
        sz, sy, sx = (float(s) for s in layer.scale[-3:])
        affine = np.array([[0, 0, -sx, 0], [0, -sy, 0, 0], [-sz, 0, 0, 0], [0, 0, 0, 1.0]])
        geometry = Geometry.for_source(affine, data.shape)
    if tuple(geometry.display_shape) != data.shape:
        raise CTSegError(f"'{layer.name}': its data no longer matches the scan it was opened from")
    return CTVolume(hu=data, geometry=geometry, name=layer.name)


def _segment_job(*args, **kwargs):
    """``segment_steps`` for the worker, plus each mask's slice fingerprints (the baseline of
    'changed slices'), computed here in the worker rather than in the GUI thread."""
    result = yield from segment_steps(*args, **kwargs)
    return result, {t: slice_digests(m) for t, m in result.masks.items() if m.ndim == 3}


class SegmentWidget(QWidget):
    """Plugins > napari-ctseg > Segment volume."""

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = as_registry(registry)  # where the models are: ModelRegistry.default() in napari
        self.models = ModelSet(registry=self.registry)
        self.worker = None
        self.result: SegmentResult | None = None
        self.added_layers: list[Labels] = []
        self._progress = None

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The CT image layer to segment (values in HU)")
        form.addRow("CT image", self.image_combo)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.device_combo.setToolTip("Auto uses CUDA when a GPU is present, else the CPU")
        form.addRow("Device", self.device_combo)
        layout.addLayout(form)

        box = QGroupBox("Targets and model versions")
        grid = QFormLayout(box)
        self.target_checks: dict[str, QCheckBox] = {}
        self.version_combos: dict[str, QComboBox] = {}
        for target in self.registry.targets():
            check = QCheckBox(target)
            check.setChecked(True)
            combo = QComboBox()
            combo.setToolTip(f"Model version for {target} (default: the active one)")
            self.target_checks[target] = check
            self.version_combos[target] = combo
            combo.currentIndexChanged.connect(self.update_legend)
            grid.addRow(check, combo)
        box.setMinimumHeight(box.sizeHint().height())  # stays readable when docks are stacked
        layout.addWidget(box)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.legend.setToolTip("Colours of the result layers (from each model's card); lungs are "
                               "drawn as outlines so infection shows through")
        layout.addWidget(self.legend)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Segment volume")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.results_label = QLabel("")
        self.results_label.setWordWrap(True)
        self.results_label.setMinimumHeight(9 * self.results_label.fontMetrics().lineSpacing())
        layout.addWidget(self.results_label)
        self.copy_button = QPushButton("Copy results")
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(self.copy_results)
        layout.addWidget(self.copy_button)
        layout.addStretch(1)

        self.refresh_versions()
        connect_models_changed(self, self.refresh_versions)
        self.refresh_images()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered, layer_renamed(self.viewer.layers)):
            ev.connect(self.refresh_images)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        self._update_device_hint()

    # --- choices ---------------------------------------------------------------------
    def image_layers(self) -> list[Image]:
        """3D CT images, and 2D slices (8-bit exports, grey or RGB) for the targets that take them."""
        return [ly for ly in self.viewer.layers
                if isinstance(ly, Image) and ((ly.ndim == 3 and not ly.rgb) or ly.ndim == 2)]

    def refresh_images(self, event=None):
        current = self.image_combo.currentText()
        names = [ly.name for ly in self.image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        else:
            active = self.viewer.layers.selection.active
            if isinstance(active, Image) and active.name in names:
                self.image_combo.setCurrentText(active.name)
        self.image_combo.blockSignals(False)

    def _follow_active(self, event=None):
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and self.image_combo.findText(active.name) >= 0:
            self.image_combo.setCurrentText(active.name)

    def refresh_versions(self):
        for target, combo in self.version_combos.items():
            was_default = combo.currentData() is None or "(active)" in combo.currentText()
            chosen = combo.currentData()
            combo.clear()
            try:
                cards = self.registry.list_versions(target)
                active = self.registry.active_version(target)
            except CTSegError as exc:
                combo.addItem("(no model)")
                combo.setToolTip(str(exc))
                self.target_checks[target].setChecked(False)
                continue
            for card in cards:
                combo.addItem(card.version + (" (active)" if card.version == active else ""), card.version)
            # A version picked by hand stays picked; otherwise follow the active one.
            idx = combo.findData(active if was_default else chosen)
            combo.setCurrentIndex(idx if idx >= 0 else max(combo.findData(active), 0))
        self.update_legend()

    def update_legend(self, *_):
        cards = []
        for target, combo in self.version_combos.items():
            if combo.currentData():
                try:
                    cards.append(self.registry.get_card(target, combo.currentData()))
                except CTSegError:
                    pass
        self.legend.setText(legend_html(cards))

    def _update_device_hint(self):
        gpu = torch.cuda.is_available()
        self.device_combo.setItemText(0, "Auto (CUDA)" if gpu else "Auto (CPU: no GPU found)")

    def selected_image(self) -> Image | None:
        name = self.image_combo.currentText()
        return next((ly for ly in self.image_layers() if ly.name == name), None)

    def selected_targets(self) -> list[str]:
        return [t for t, c in self.target_checks.items() if c.isChecked()]

    def selected_versions(self) -> dict[str, str]:
        return {t: c.currentData() for t, c in self.version_combos.items() if c.currentData()}

    def selected_device(self) -> str:
        return DEVICE_CHOICES[self.device_combo.currentIndex()].lower()

    def existing_lungs(self, image: Image) -> np.ndarray | None:
        """A lungs Labels layer on this image's grid (the user's, perhaps edited)."""
        for layer in reversed(list(self.viewer.layers)):
            if isinstance(layer, Labels) and layer.metadata.get("target") == "lungs" \
                    and layer.data.shape == image.data.shape:
                return np.array(layer.data, copy=True)  # the user may paint while it runs
        return None

    # --- running ---------------------------------------------------------------------
    def start(self):
        if self.worker is not None:
            return
        image = self.selected_image()
        targets = self.selected_targets()
        if image is None:
            show_error("Segment volume: open a CT image first (File > Open, or File > Open Sample)")
            return
        if not targets:
            show_error("Segment volume: tick at least one target")
            return
        if image.ndim == 2:
            self._start_slice(image, targets)
            return
        try:
            volume = volume_from_layer(image)
        except CTSegError as exc:
            show_error(str(exc))
            return
        lungs = None
        if "infection" in targets and "lungs" not in targets:
            lungs = self.existing_lungs(image)
        self.models.versions = self.selected_versions()
        self._image = image
        self._targets = targets
        self.result = None
        self.worker = create_worker(
            _segment_job, volume, targets, self.selected_device(), models=self.models, lungs=lungs,
            _start_thread=False,
            _connect={"yielded": self._on_progress, "returned": self._on_done, "errored": self._on_error,
                      "aborted": self._on_aborted, "finished": self._on_finished})
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.status.setText(f"segmenting {image.name}: {', '.join(targets)} ...")
        self.results_label.setText("")
        self._progress = napari_progress(total=0, desc="Segment volume")
        self.worker.start()

    def _start_slice(self, image: Image, targets: list[str]):
        """A 2D 8-bit slice: the targets whose card takes 8-bit input, through that path."""
        try:
            img = check_image8(np.asarray(image.data), image.name)
        except CTSegError as exc:
            show_error(f"Segment volume: {exc}")
            self.status.setText(str(exc))
            return
        self.models.versions = self.selected_versions()
        self._image = image
        self._targets = targets
        self.result = None
        self.worker = create_worker(
            segment_image8, img, targets, self.selected_device(), models=self.models, name=image.name,
            _start_thread=False,
            _connect={"returned": self._on_done, "errored": self._on_error, "finished": self._on_finished})
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.status.setText(f"segmenting the 2D image {image.name}: {', '.join(targets)} ...")
        self.results_label.setText("")
        self.worker.start()

    def cancel(self):
        if self.worker is not None:
            self.status.setText("cancelling ...")
            self.worker.quit()

    def _on_progress(self, report):
        self.progress_bar.setRange(0, report.total)
        self.progress_bar.setValue(report.done)
        self.progress_bar.setFormat(f"{report.message} (%p%)")
        bar = self._progress  # a local: updating it may process events that close it
        if bar is not None:
            if bar.total != report.total:
                bar.total = report.total
            bar.n = report.done
            bar.set_description(report.message)

    def _on_done(self, out):
        result, digests = out if isinstance(out, tuple) else (out, {})
        self.result = result
        image = self._image
        self.added_layers = []
        base_meta = dict(image.metadata)
        # Stacked by the cards' order (infection above the lungs' outlines).
        order = sorted(result.masks, key=lambda t: card_style(result.cards[t])["order"] if t in result.cards else 0)
        for target in order:
            mask = result.masks[target]
            meta = {**base_meta, "target": target, "model_version": result.versions.get(target, "")}
            if mask.ndim == 3:
                # the baseline of 'changed slices' (Save corrected mask), from the moment it exists
                meta[BASELINE_KEY] = digests.get(target) or slice_digests(mask)
                if METADATA_KEY not in meta:
                    meta[METADATA_KEY] = volume_from_layer(image).geometry.to_metadata()
            kwargs = labels_layer_kwargs(result.cards[target])
            contour = kwargs.pop("contour")
            layer = self.viewer.add_labels(
                mask, name=target, scale=image.scale, translate=image.translate, metadata=meta, **kwargs)
            layer.contour = contour  # not an add_labels argument
            self.added_layers.append(layer)
        self.viewer.layers.selection.active = image
        text = result.report()
        self.results_label.setText(text)
        self.copy_button.setEnabled(True)
        secs = sum(result.seconds.values())
        self.status.setText(f"done on {result.device} in {secs:.1f} s"
                            + ("; " + "; ".join(result.notes) if result.notes else ""))
        for note in result.notes:
            show_warning(note)
        show_info(f"Segment volume: {text.replace(chr(10), '; ')}")

    def _on_error(self, exc):
        if isinstance(exc, CTSegError):
            show_error(f"Segment volume: {exc}")
        else:
            show_error(f"Segment volume failed: {type(exc).__name__}: {exc}")
        self.status.setText(f"failed: {exc}")

    def _on_aborted(self):
        self.status.setText("cancelled: no layer was added")

    def _on_finished(self):
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0 if self.result is None else 1)
        self.progress_bar.setFormat("%p%")
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def copy_results(self):
        if self.result is not None:
            QApplication.clipboard().setText(self.result.report())
