"""Fine-tune dock widget: teach a model from the saved corrections, in a child process.

The widget gathers the choices (target, base version, which saved corrections, epochs,
steps, learning rate, device, optional training data for replay) into a call of
``fine_tuning.fine_tune`` run in a child process (``jobs.in_child_process``, the job named by
``FineTuneWidget.job_name``) and driven by the plugin's one Qt adapter (``_napari/_jobs.py``,
a napari thread worker): the viewer stays usable (you can keep editing), and an
out-of-memory kill or a crash in training cannot take napari down: the widget says so in
one line and can start again. It shows a progress bar with the time left, a live plot of the
loss and of the Dice on the held-aside corrections and the validation per epoch, and
Cancel, which stops after the current training step and leaves nothing behind. At the end
it says whether the new version became active, and why.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_ctseg.editing.corrections import Correction, list_corrections
from napari_ctseg.errors import CTSegError
from napari_ctseg.training.fine_tuning import CorrectionCase, FineTuneConfig
from napari_ctseg.jobs import CancelToken, in_child_process
from napari_ctseg.segmentation.inference import choose_device
from napari_ctseg.models.registry import ModelRegistry, as_registry
from napari_ctseg._napari._jobs import run_job
from napari_ctseg._napari.widgets._models_events import connect_models_changed, models_events

DEVICE_CHOICES = ("Auto", "CPU", "CUDA")


FINE_TUNE_JOB = "napari_ctseg.training.fine_tuning:fine_tune"
"""The job the widget runs in a child process, by name (the child imports it itself)."""


def _slices_text(zs: list[int]) -> str:
    if not zs:
        return "no slice changed"
    runs, start, prev = [], zs[0], zs[0]
    for z in zs[1:] + [None]:
        if z is not None and z == prev + 1:
            prev = z
            continue
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
        if z is not None:
            start = prev = z
    return f"{len(zs)} slice{'s' if len(zs) != 1 else ''} changed (z {', '.join(runs[:4])}{' ...' if len(runs) > 4 else ''})"


class TrainingPlot(QWidget):
    """Two panels over the steps of a run: Dice per epoch on the held-aside corrections and the
    validation (top, the base model's Dice dashed), and the loss per step with its epoch means
    (bottom)."""

    COLORS = {"loss": QColor("#f0a030"), "corrections": QColor("#40c0ff"), "validation": QColor("#70e070")}
    LABELS = {"corrections": "held-aside corrections", "validation": "validation"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(250)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self, total_steps: int = 1, steps_per_epoch: int = 1):
        self.total_steps = max(total_steps, 1)
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.step_loss: list[tuple[int, float]] = []
        self.epochs: list[dict] = []  # {"step", "loss", "corrections", "validation"}
        self.baseline: dict = {}
        self.update()

    def add_step(self, global_step: int, loss: float):
        self.step_loss.append((global_step, loss))
        self.update()

    def add_epoch(self, global_step: int, loss, corrections, validation):
        self.epochs.append({"step": global_step, "loss": loss, "corrections": corrections,
                            "validation": validation})
        self.update()

    def set_baseline(self, corrections, validation):
        self.baseline = {"corrections": corrections, "validation": validation}
        self.update()

    def dice_range(self) -> tuple[float, float]:
        values = [e[k] for e in self.epochs for k in ("corrections", "validation") if e.get(k) is not None]
        values += [v for v in self.baseline.values() if v is not None]
        low = min(values) if values else 0.0
        return max(0.0, math.floor((low - 0.01) * 20) / 20), 1.0  # down to a multiple of 0.05

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("#262930"))
        fm = p.fontMetrics()
        lh = fm.height()
        left = fm.horizontalAdvance("0.000") + 8
        pw = max(self.width() - left - 8, 10)
        gap = lh + 6
        top_h = max((self.height() - 3 * lh - 2 * gap - lh - 4) * 0.55, 20)
        dice_box = QRectF(left, lh + 6, pw, top_h)
        loss_box = QRectF(left, dice_box.bottom() + gap + lh, pw,
                          max(self.height() - dice_box.bottom() - gap - 3 * lh - 8, 20))
        self._dice_panel(_Panel(p, dice_box, *self.dice_range(), self))
        self._loss_panel(p, loss_box)
        self._legend(p, left, loss_box.bottom() + lh + 4 + lh / 2)
        p.end()

    def x_of(self, step: float, box: QRectF) -> float:
        return box.left() + box.width() * step / self.total_steps

    @property
    def n_epochs(self) -> int:
        return max(self.total_steps // self.steps_per_epoch, 1)

    def _dice_panel(self, panel: _Panel) -> None:
        panel.frame("{:.2f}", "Dice per epoch (dashed: the base model)")
        box = panel.box
        for key in ("corrections", "validation"):
            base = self.baseline.get(key)
            pts = [QPointF(self.x_of(e["step"], box), panel.y(e[key])) for e in self.epochs
                   if e.get(key) is not None]
            if base is not None:
                y = panel.y(base)
                panel.p.setPen(QPen(self.COLORS[key], 1, Qt.PenStyle.DashLine))
                panel.p.drawLine(QPointF(box.left(), y), QPointF(box.right(), y))
                pts = [QPointF(box.left(), y), *pts]
            panel.series(pts, self.COLORS[key])

    def _loss_panel(self, p: QPainter, box: QRectF) -> None:
        losses = [v for _, v in self.step_loss]
        lmax = max(losses) * 1.1 if losses else 1.0
        panel = _Panel(p, box, 0.0, lmax if lmax > 0 else 1.0, self)
        panel.frame("{:.3f}", "loss per step (dots: epoch means)")
        faint = QColor(self.COLORS["loss"])
        faint.setAlpha(120)
        panel.series([QPointF(self.x_of(s, box), panel.y(v)) for s, v in self.step_loss], faint, 1, False)
        panel.series([QPointF(self.x_of(e["step"], box), panel.y(e["loss"])) for e in self.epochs
                      if e.get("loss") is not None], self.COLORS["loss"])
        p.setPen(_TEXT)
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), p.fontMetrics().height()),
                   Qt.AlignmentFlag.AlignCenter, f"epochs 0..{self.n_epochs}")

    def _legend(self, p: QPainter, x: float, y: float) -> None:
        """The legend, its own row at the bottom."""
        fm = p.fontMetrics()
        for key, label in (*self.LABELS.items(), ("loss", "loss")):
            p.setPen(QPen(self.COLORS[key], 2))
            p.drawLine(QPointF(x, y), QPointF(x + 12, y))
            p.setPen(_TEXT)
            p.drawText(QPointF(x + 15, y + fm.ascent() / 2 - 1), label)
            x += 15 + fm.horizontalAdvance(label) + 10


_TEXT = QColor("#c8ccd4")


class _Panel:
    """One framed panel of ``TrainingPlot``: values ``lo``..``hi`` from the bottom to the top of ``box``."""

    def __init__(self, painter: QPainter, box: QRectF, lo: float, hi: float, plot: TrainingPlot):
        self.p, self.box, self.lo, self.hi, self.plot = painter, box, lo, hi, plot

    def y(self, v: float) -> float:
        frac = min(max((v - self.lo) / max(self.hi - self.lo, 1e-9), 0.0), 1.0)
        return self.box.bottom() - self.box.height() * frac

    def frame(self, fmt: str, title: str) -> None:
        """The box, a dotted line between epochs, the range's two ends and the title."""
        p, box, lh = self.p, self.box, self.p.fontMetrics().height()
        p.setPen(QPen(QColor("#5a5f6a"), 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(box)
        p.setPen(QPen(QColor("#3a3f4a"), 1, Qt.PenStyle.DotLine))
        for e in range(1, self.plot.n_epochs):
            x = self.plot.x_of(e * self.plot.steps_per_epoch, box)
            p.drawLine(QPointF(x, box.top()), QPointF(x, box.bottom()))
        p.setPen(_TEXT)
        for v, y in ((self.hi, box.top()), (self.lo, box.bottom())):
            p.drawText(QRectF(0, y - lh / 2, box.left() - 4, lh), Qt.AlignmentFlag.AlignRight, fmt.format(v))
        p.drawText(QRectF(box.left(), box.top() - lh - 2, box.width(), lh), Qt.AlignmentFlag.AlignLeft, title)

    def series(self, points: list[QPointF], colour: QColor, width: int = 2, dots: bool = True) -> None:
        p = self.p
        p.setPen(QPen(colour, width))
        for a, b in zip(points, points[1:]):
            p.drawLine(a, b)
        if dots:
            p.setBrush(colour)
            for pt in points:
                p.drawEllipse(pt, 3, 3)
            p.setBrush(Qt.BrushStyle.NoBrush)


class FineTuneWidget(QWidget):
    """Plugins > napari-ctseg > Fine-tune."""

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = as_registry(registry)  # where the models are: ModelRegistry.default() in napari
        self.worker = None
        self.card = None
        self.last_report = None
        self._global_step = 0

        self.setMinimumWidth(340)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.target_combo = QComboBox()
        self.target_combo.addItems(self.registry.targets())
        self.target_combo.currentTextChanged.connect(self._target_changed)
        form.addRow("Target", self.target_combo)
        self.base_combo = QComboBox()
        self.base_combo.setToolTip("The version to start from (default: the active one)")
        form.addRow("Base version", self.base_combo)
        layout.addLayout(form)

        layout.addWidget(self._corrections_box())
        layout.addWidget(self._settings_box())

        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress_bar = QProgressBar()
        layout.addWidget(self.progress_bar)
        self.eta_label = QLabel("")
        layout.addWidget(self.eta_label)
        self.plot = TrainingPlot()
        layout.addWidget(self.plot)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(3 * self.status.fontMetrics().lineSpacing())
        layout.addWidget(self.status)
        layout.addStretch(1)

        connect_models_changed(self, self.refresh_versions)
        self._target_changed(self.target_combo.currentText())

    def _corrections_box(self) -> QGroupBox:
        """The saved corrections of the target, each to tick or not."""
        box = QGroupBox("Saved corrections to learn from")
        vbox = QVBoxLayout(box)
        self.corrections_list = QListWidget()
        self.corrections_list.setToolTip("Saved with Mask tools > Save corrected mask; tick the ones to use")
        self.corrections_list.setMinimumHeight(70)
        vbox.addWidget(self.corrections_list)
        refresh = QPushButton("Refresh list")
        refresh.clicked.connect(self.refresh_corrections)
        vbox.addWidget(refresh)
        return box

    def _settings_box(self) -> QGroupBox:
        """Epochs, steps, learning rate, device and the optional data folder."""
        settings = QGroupBox("Settings")
        sform = QFormLayout(settings)
        defaults = FineTuneConfig()
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 500)
        self.epochs_spin.setValue(defaults.epochs)
        sform.addRow("Epochs", self.epochs_spin)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10000)
        self.steps_spin.setValue(defaults.steps_per_epoch)
        self.steps_spin.setToolTip(f"Training steps per epoch (batches of {defaults.batch_size} slices)")
        sform.addRow("Steps per epoch", self.steps_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(0.0, 0.1)
        self.lr_spin.setSingleStep(0.0001)
        self.lr_spin.setValue(defaults.lr)
        sform.addRow("Learning rate", self.lr_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        sform.addRow("Device", self.device_combo)
        data_row = QHBoxLayout()
        self.data_edit = QLineEdit(os.environ.get("CTSEG_DATA_DIR", ""))
        self.data_edit.setPlaceholderText("optional: the base model's training data")
        self.data_edit.setToolTip("With the base model's data folder, a share of each batch replays its "
                                  "training cases and its validation cases judge the new model; without "
                                  "it, training is held close to the base weights and the slices you "
                                  "left unchanged are the validation")
        browse = QPushButton("...")
        browse.setFixedWidth(30)
        browse.clicked.connect(self._browse_data)
        data_row.addWidget(self.data_edit)
        data_row.addWidget(browse)
        sform.addRow("Data folder", data_row)
        return settings

    # --- choices ---------------------------------------------------------------------
    def _target_changed(self, target):
        self.refresh_versions()
        self.refresh_corrections()

    def refresh_versions(self):
        target = self.target_combo.currentText()
        current = self.base_combo.currentData()
        self.base_combo.clear()
        try:
            cards = self.registry.list_versions(target)
            active = self.registry.active_version(target)
        except CTSegError as exc:
            self.base_combo.addItem("(no model)")
            self.base_combo.setToolTip(str(exc))
            return
        for card in cards:
            self.base_combo.addItem(card.version + (" (active)" if card.version == active else ""), card.version)
        idx = self.base_combo.findData(current if self.worker is not None and current else active)
        self.base_combo.setCurrentIndex(max(idx, 0))

    def refresh_corrections(self):
        target = self.target_combo.currentText()
        self.corrections_list.clear()
        for corr in reversed(list_corrections(target)):  # newest first
            missing = [p for p in (corr.scan_path, corr.mask_path) if not p or not Path(p).exists()]
            scan = Path(corr.scan_path).name if corr.scan_path else "(unknown scan)"
            text = (f"{Path(corr.mask_path).name}\n    {scan}; {_slices_text(corr.changed_slices)}; "
                    f"{corr.created[:16].replace('T', ' ')}")
            item = QListWidgetItem(text + ("  [file missing]" if missing else ""))
            item.setData(Qt.ItemDataRole.UserRole, corr)
            item.setToolTip(f"scan: {corr.scan_path}\nmask: {corr.mask_path}\n"
                            f"model version of the first mask: {corr.model_version or '(drawn by hand)'}")
            if missing:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
                item.setCheckState(Qt.CheckState.Unchecked)
            else:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked)
            self.corrections_list.addItem(item)
        if self.corrections_list.count() == 0:
            item = QListWidgetItem(f"no saved {target} corrections yet (Mask tools > Save corrected mask)")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.corrections_list.addItem(item)

    def selected_corrections(self) -> list[Correction]:
        out = []
        for i in range(self.corrections_list.count()):
            item = self.corrections_list.item(i)
            corr = item.data(Qt.ItemDataRole.UserRole)
            if corr is not None and item.checkState() == Qt.CheckState.Checked:
                out.append(corr)
        return out

    def _browse_data(self):
        folder = QFileDialog.getExistingDirectory(self, "The base model's training data folder",
                                                  self.data_edit.text())
        if folder:
            self.data_edit.setText(folder)

    def config(self) -> dict:
        return {"epochs": self.epochs_spin.value(), "steps_per_epoch": self.steps_spin.value(),
                "lr": float(self.lr_spin.value())}

    # --- running ---------------------------------------------------------------------
    job_name = FINE_TUNE_JOB

    def start(self):
        if self.worker is not None:
            return
        target = self.target_combo.currentText()
        chosen = self.selected_corrections()
        if not chosen:
            show_error(f"Fine-tune: tick at least one saved {target} correction "
                       "(Mask tools > Save corrected mask records them)")
            return
        data = self.data_edit.text().strip() or None
        if data and not Path(data).is_dir():
            show_error(f"Fine-tune: {data}: no such data folder")
            return
        device, note = choose_device(DEVICE_CHOICES[self.device_combo.currentIndex()].lower())
        if note:
            show_info(f"Fine-tune: {note}")
        corrections = [CorrectionCase(c.scan_path, c.mask_path, list(c.changed_slices) or None) for c in chosen]
        cfg = self.config()
        self.card = None
        self.last_report = None
        self._global_step = 0
        self.plot.clear(cfg["epochs"] * cfg["steps_per_epoch"], cfg["steps_per_epoch"])
        self.status.setText(f"preparing to fine-tune {target} on {len(corrections)} correction(s) ...")
        # In a child process: an out-of-memory kill or a crash there is an error here, never
        # a crash of napari, and the run's garbage and GIL are its own.
        token = CancelToken()
        job = in_child_process(self.job_name, target, corrections, base_version=self.base_combo.currentData(),
                               data_dir=data, config=cfg, device=str(device), roots=self.registry,
                               out_root=self.registry.user_dir, cancel=token)
        self.worker = run_job(
            job, title="Fine-tune", owner=self, token=token, on_event=self._on_report, on_done=self._on_returned,
            on_finished=self._on_finished, progress_bar=self.progress_bar, eta_label=self.eta_label,
            status=self.status, start_button=self.start_button, cancel_button=self.cancel_button,
            eta_unit="step", finishing_text="evaluating the new weights ...",
            cancelling_text="cancelling after the current step ...",
            cancelled_text="cancelled: nothing was written; the active version is unchanged",
            failed_text="failed: {error}; the active version is unchanged")

    def cancel(self):
        if self.worker is not None:
            self.worker.cancel()

    def _on_report(self, report):
        """The plot and the status line; the bar and the time left are the adapter's."""
        self.last_report = report
        kind = getattr(report, "kind", "")
        if kind == "start":
            self.plot.set_baseline(report.corrections_dice, report.val_dice)
        elif kind == "step":
            self._global_step = (report.epoch - 1) * report.steps + report.step
            self.plot.add_step(self._global_step, report.loss)
        elif kind == "epoch":
            self.plot.add_epoch(self._global_step, report.loss, report.corrections_dice, report.val_dice)
        if kind in ("prepare", "start", "epoch"):
            self.status.setText(report.message)

    def _on_returned(self, card):
        if card is None:  # the run stopped without writing a version
            self.status.setText("cancelled: nothing was written; the active version is unchanged")
            return
        self.card = card
        ft = card.extra.get("fine_tune", {})
        verdict = "now the active version" if ft.get("promoted") else "kept as a candidate"
        self.status.setText(f"{card.target} {card.version}: {verdict}. {ft.get('reason', '')}")
        show_info(f"Fine-tune: {card.target} {card.version} {verdict}")
        models_events().changed.emit()

    def _on_finished(self):
        self.worker = None
