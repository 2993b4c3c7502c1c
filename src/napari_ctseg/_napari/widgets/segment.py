"""Segment volume dock widget: the bundled U-Nets over the chosen CT, in a worker process.

The widget gathers the choices (image layer, targets, device, model versions) and runs
``inference.segment_in_child`` (``segment_steps`` in a child process: the networks never share
the viewer's GIL, and a crash or an out-of-memory kill there is an error message here, never a
crash of napari) as a job through the plugin's one Qt adapter (``_napari/_jobs.py``: napari's
thread worker waits for the child; progress with the time left here and in napari's activity
dock, errors in one line). A 2D 8-bit slice (``segment_image8``, a fraction of a second) runs in
the thread. Cancel stops the job before
its next batch of slices; no layer is added then. Results arrive as one new Labels layer
per target, on the image's scale/translate with the source geometry in ``metadata`` (so
File > Save writes them onto the scan), never replacing a layer that is already there.
"""
from __future__ import annotations

import atexit
from functools import partial

import numpy as np
import pandas as pd
import torch
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
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

from napari_ctseg.editing.corrections import BASELINE_KEY, slice_digests
from napari_ctseg.errors import CTSegError
from napari_ctseg.segmentation.inference import ModelSet, SegmentResult, check_image8, segment_image8, segment_in_child
from napari_ctseg.jobs import CancelToken, WorkerProcess, single_step
from napari_ctseg.models.definition import colors as card_colors
from napari_ctseg.models.definition import label_display_name
from napari_ctseg.models.definition import style as card_style
from napari_ctseg.models.registry import ModelRegistry, as_registry
from napari_ctseg.io.volume import METADATA_KEY, CTVolume, Geometry
from napari_ctseg._napari._compat import layer_renamed
from napari_ctseg._napari._jobs import run_job
from napari_ctseg._napari._layers import geometry_from_metadata
from napari_ctseg._napari._warm import warm_up
from napari_ctseg._napari.widgets._models_events import connect_models_changed

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


_WORKER: WorkerProcess | None = None


def segment_worker() -> WorkerProcess:
    """The viewer's one warm Segment volume process (torch imported, weights kept loaded)."""
    global _WORKER
    if _WORKER is None:
        _WORKER = WorkerProcess(warm=("napari_ctseg.segmentation.inference",), name="napari-ctseg Segment volume")
        atexit.register(_WORKER.close)  # before multiprocessing's own clean-up: nothing left behind
    return _WORKER


def _warm_worker() -> None:
    try:
        segment_worker().start()
    except (OSError, RuntimeError):  # no child processes here: the first run starts its own
        pass


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
        self._pending: list[tuple] = []  # result layers still to add (one per event-loop turn)
        self._adding = False  # from the result's arrival until its layers are in and it is shown
        self._job_ended = False

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
        # Python and torch start in the worker process now, while the user looks at the scan,
        # not when Segment volume is pressed.
        QTimer.singleShot(0, _warm_worker)
        QTimer.singleShot(0, partial(warm_up, napari_viewer))  # the first result layer costs napari less (``_warm``)

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
        self._token = None
        job = self._slice_job(image, targets) if image.ndim == 2 else self._volume_job(image, targets)
        if job is None:
            return
        self._image = image
        self._targets = targets
        self.result = None
        self.results_label.setText("")
        what = "the 2D image " if image.ndim == 2 else ""
        self.status.setText(f"segmenting {what}{image.name}: {', '.join(targets)} ...")
        self.worker = run_job(
            job, title="Segment volume", owner=self, token=self._token, on_done=self._on_done, on_finished=self._on_finished,
            progress_bar=self.progress_bar, status=self.status, start_button=self.run_button,
            cancel_button=self.cancel_button, cancelled_text="cancelled: no layer was added")

    def _volume_job(self, image: Image, targets: list[str]):
        try:
            volume = volume_from_layer(image)
        except CTSegError as exc:
            show_error(str(exc))
            return None
        lungs = None
        if "infection" in targets and "lungs" not in targets:
            lungs = self.existing_lungs(image)
        self._token = CancelToken()
        return segment_in_child(volume, targets, self.selected_device(), versions=self.selected_versions(),
                                registry=self.registry, lungs=lungs, cancel=self._token, process=segment_worker())

    def _slice_job(self, image: Image, targets: list[str]):
        """A 2D 8-bit slice: the targets whose card takes 8-bit input, through that path."""
        try:
            img = check_image8(np.asarray(image.data), image.name)
        except CTSegError as exc:
            show_error(f"Segment volume: {exc}")
            self.status.setText(str(exc))
            return None
        self.models.versions = self.selected_versions()
        return single_step(segment_image8, img, targets, self.selected_device(), models=self.models,
                           name=image.name, message=f"segmenting {image.name}")

    def cancel(self):
        if self.worker is not None:
            self.worker.cancel()

    def _on_done(self, out):
        result, digests = out if isinstance(out, tuple) else (out, {})
        self.result = result
        image = self._image
        self.added_layers = []
        base_meta = dict(image.metadata)
        # Stacked by the cards' order (infection above the lungs' outlines).
        order = sorted(result.masks, key=lambda t: card_style(result.cards[t])["order"] if t in result.cards else 0)
        geometry = None
        self._pending = []
        self._adding = True
        for target in order:
            mask = result.masks[target]
            meta = {**base_meta, "target": target, "model_version": result.versions.get(target, "")}
            if mask.ndim == 3:
                # the baseline of 'changed slices' (Save corrected mask), from the moment it exists
                meta[BASELINE_KEY] = digests.get(target) or slice_digests(mask)
                if METADATA_KEY not in meta:
                    geometry = geometry or volume_from_layer(image).geometry.to_metadata()
                    meta[METADATA_KEY] = geometry
            self._pending.append((target, mask, meta, labels_layer_kwargs(result.cards[target])))
        # One layer per turn of the event loop: napari builds each layer's visuals in the GUI
        # thread (about 0.3 s for a 512x512x129 Labels layer in software rendering), so the
        # window stays responsive between them. The job counts as running until the last one.
        self._add_next_layer()

    def _add_next_layer(self):
        if not self._pending:
            self._show_result()
            return
        target, mask, meta, kwargs = self._pending.pop(0)
        image = self._image
        contour = kwargs.pop("contour")
        try:
            layer = self.viewer.add_labels(
                mask, name=target, scale=image.scale, translate=image.translate, metadata=meta, **kwargs)
        except RuntimeError:  # the viewer was closed meanwhile
            self._pending = []
            self._adding = False
            self._release()
            return
        layer.contour = contour  # not an add_labels argument
        self.added_layers.append(layer)
        QTimer.singleShot(0, self._add_next_layer)

    def _show_result(self):
        try:
            result = self.result
            if self._image in self.viewer.layers:  # the user may have closed it meanwhile
                self.viewer.layers.selection.active = self._image
            text = result.report()
            self.results_label.setText(text)
            self.copy_button.setEnabled(True)
            secs = sum(result.seconds.values())
            self.status.setText(f"done on {result.device} in {secs:.1f} s"
                                + ("; " + "; ".join(result.notes) if result.notes else ""))
            for note in result.notes:
                show_warning(note)
            show_info(f"Segment volume: {text.replace(chr(10), '; ')}")
            if result.caveats:  # one warning per run: the infection figure may not be infection
                show_warning("Segment volume: caution about the infection figure: "
                             + "; ".join(c.message for c in result.caveats))
        finally:
            self._adding = False
            self._release()

    def _on_finished(self):
        self._job_ended = True
        self._release()

    def _release(self):
        """The run is over once the job has ended and its layers are in."""
        if self._job_ended and not self._adding:
            self.worker = None
            self._job_ended = False

    def copy_results(self):
        if self.result is not None:
            QApplication.clipboard().setText(self.result.report())
