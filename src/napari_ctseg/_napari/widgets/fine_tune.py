"""Fine-tune dock widget: teach a model from the saved corrections, in a worker thread.

The widget gathers the choices (target, base version, which saved corrections, epochs,
steps, learning rate, device, optional training data for replay) into a call of
``fine_tuning.fine_tune`` run in a child process (``napari_ctseg.jobs``) whose reports a
napari thread worker relays, so the viewer stays usable (you can keep editing) and an
out-of-memory kill or a crash in training cannot take napari down. It shows a progress bar with an ETA, a live plot of the loss and of
the Dice on the held-aside corrections and the validation per epoch, and Cancel, which
stops after the current training step and leaves nothing behind. At the end it says
whether the new version became active, and why.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
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

from ...corrections import Correction, list_corrections
from ...errors import CTSegError
from ...fine_tuning import CorrectionCase, FineTuneConfig
from ...jobs import in_child_process
from ...inference import choose_device
from ...models.registry import ModelRegistry, as_registry
from ._models_events import connect_models_changed, models_events

DEVICE_CHOICES = ("Auto", "CPU", "CUDA")


def run_fine_tune(cancel: threading.Event, *args, **kwargs):
    """``fine_tune`` for a worker, in a child process (``napari_ctseg.jobs``): its reports come
    back here; a set ``cancel`` closes the run there (its partial files are deleted) and
    returns ``None``. An out-of-memory kill or a crash there is an error here, never a crash
    of napari, and the run's garbage and GIL are its own."""
    return (yield from in_child_process("napari_ctseg.fine_tuning:fine_tune", *args, cancel=cancel, **kwargs))


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
        fm = p.fontMetrics()
        lh = fm.height()
        w, h = self.width(), self.height()
        p.fillRect(self.rect(), QColor("#262930"))
        left, right = fm.horizontalAdvance("0.000") + 8, 8
        pw = max(w - left - right, 10)
        gap = lh + 6
        top_h = max((h - 3 * lh - 2 * gap - lh - 4) * 0.55, 20)
        dice_box = QRectF(left, lh + 6, pw, top_h)
        loss_box = QRectF(left, dice_box.bottom() + gap + lh, pw,
                          max(h - dice_box.bottom() - gap - 3 * lh - 8, 20))
        text = QColor("#c8ccd4")
        n_epochs = max(self.total_steps // self.steps_per_epoch, 1)

        def x_of(step):
            return left + pw * step / self.total_steps

        def frame(box, lo, hi, fmt, title):
            p.setPen(QPen(QColor("#5a5f6a"), 1))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(box)
            p.setPen(QPen(QColor("#3a3f4a"), 1, Qt.PenStyle.DotLine))
            for e in range(1, n_epochs):
                x = x_of(e * self.steps_per_epoch)
                p.drawLine(QPointF(x, box.top()), QPointF(x, box.bottom()))
            p.setPen(text)
            for v, y in ((hi, box.top()), (lo, box.bottom())):
                p.drawText(QRectF(0, y - lh / 2, left - 4, lh), Qt.AlignmentFlag.AlignRight, fmt.format(v))
            p.drawText(QRectF(box.left(), box.top() - lh - 2, box.width(), lh), Qt.AlignmentFlag.AlignLeft, title)

        def y_of(box, v, lo, hi):
            return box.bottom() - box.height() * min(max((v - lo) / max(hi - lo, 1e-9), 0.0), 1.0)

        def series(points, colour, width=2, dots=True):
            p.setPen(QPen(colour, width))
            for a, b in zip(points, points[1:]):
                p.drawLine(a, b)
            if dots:
                p.setBrush(colour)
                for pt in points:
                    p.drawEllipse(pt, 3, 3)
                p.setBrush(Qt.BrushStyle.NoBrush)

        # Dice panel
        lo, hi = self.dice_range()
        frame(dice_box, lo, hi, "{:.2f}", "Dice per epoch (dashed: the base model)")
        for key in ("corrections", "validation"):
            base = self.baseline.get(key)
            pts = [QPointF(x_of(e["step"]), y_of(dice_box, e[key], lo, hi)) for e in self.epochs
                   if e.get(key) is not None]
            if base is not None:
                y = y_of(dice_box, base, lo, hi)
                p.setPen(QPen(self.COLORS[key], 1, Qt.PenStyle.DashLine))
                p.drawLine(QPointF(dice_box.left(), y), QPointF(dice_box.right(), y))
                pts = [QPointF(dice_box.left(), y), *pts]
            series(pts, self.COLORS[key])
        # loss panel
        losses = [v for _, v in self.step_loss]
        lmax = max(losses) * 1.1 if losses else 1.0
        lmax = lmax if lmax > 0 else 1.0
        frame(loss_box, 0.0, lmax, "{:.3f}", "loss per step (dots: epoch means)")
        faint = QColor(self.COLORS["loss"])
        faint.setAlpha(120)
        series([QPointF(x_of(s), y_of(loss_box, v, 0.0, lmax)) for s, v in self.step_loss], faint, 1, False)
        series([QPointF(x_of(e["step"]), y_of(loss_box, e["loss"], 0.0, lmax)) for e in self.epochs
                if e.get("loss") is not None], self.COLORS["loss"])
        p.setPen(text)
        p.drawText(QRectF(loss_box.left(), loss_box.bottom() + 2, loss_box.width(), lh),
                   Qt.AlignmentFlag.AlignCenter, f"epochs 0..{n_epochs}")
        # legend, its own row at the bottom
        x, yl = float(left), loss_box.bottom() + lh + 4 + lh / 2
        for key, label in (("corrections", "held-aside corrections"), ("validation", "validation"),
                           ("loss", "loss")):
            p.setPen(QPen(self.COLORS[key], 2))
            p.drawLine(QPointF(x, yl), QPointF(x + 12, yl))
            p.setPen(text)
            p.drawText(QPointF(x + 15, yl + fm.ascent() / 2 - 1), label)
            x += 15 + fm.horizontalAdvance(label) + 10
        p.end()


class FineTuneWidget(QWidget):
    """Plugins > napari-ctseg > Fine-tune."""

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = as_registry(registry)  # where the models are: ModelRegistry.default() in napari
        self.worker = None
        self.card = None
        self.last_report = None
        self._cancel = threading.Event()
        self._progress = None

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

        box = QGroupBox("Saved corrections to learn from")
        vbox = QVBoxLayout(box)
        self.corrections_list = QListWidget()
        self.corrections_list.setToolTip("Saved with Mask tools > Save corrected mask; tick the ones to use")
        self.corrections_list.setMinimumHeight(70)
        vbox.addWidget(self.corrections_list)
        refresh = QPushButton("Refresh list")
        refresh.clicked.connect(self.refresh_corrections)
        vbox.addWidget(refresh)
        layout.addWidget(box)

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
        layout.addWidget(settings)

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
        self._cancel = threading.Event()
        self._global_step = 0
        self.plot.clear(cfg["epochs"] * cfg["steps_per_epoch"], cfg["steps_per_epoch"])
        self.worker = create_worker(
            run_fine_tune, self._cancel, target, corrections, base_version=self.base_combo.currentData(),
            data_dir=data, config=cfg, device=str(device), roots=self.registry, out_root=self.registry.user_dir,
            _start_thread=False,
            _connect={"yielded": self._on_report, "returned": self._on_returned, "errored": self._on_error,
                      "finished": self._on_finished})
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.eta_label.setText("")
        self.status.setText(f"preparing to fine-tune {target} on {len(corrections)} correction(s) ...")
        self._progress = napari_progress(total=cfg["epochs"] * cfg["steps_per_epoch"], desc="Fine-tune")
        self.worker.start()

    def cancel(self):
        if self.worker is not None:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling after the current step ...")

    def _on_report(self, report):
        self.last_report = report
        total = report.epochs * max(report.steps, 1)
        if report.kind in ("prepare", "start"):
            self.status.setText(report.message)
            if report.kind == "start":
                self.plot.set_baseline(report.corrections_dice, report.val_dice)
            return
        if report.kind == "step":
            self._global_step = (report.epoch - 1) * report.steps + report.step
            self.plot.add_step(self._global_step, report.loss)
        elif report.kind == "epoch":
            self.plot.add_epoch(self._global_step, report.loss, report.corrections_dice, report.val_dice)
            self.status.setText(report.message)
        done = min(self._global_step, total)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        if done:
            left = report.elapsed_s / done * (total - done)
            self.eta_label.setText(f"step {done}/{total}, {report.elapsed_s:.0f} s so far, "
                                   f"about {left:.0f} s left" if done < total else
                                   "evaluating the new weights ...")
        bar = self._progress
        if bar is not None:
            bar.n = done
            bar.refresh()

    def _on_returned(self, card):
        if card is None:
            self.status.setText("cancelled: nothing was written; the active version is unchanged")
            return
        self.card = card
        ft = card.extra.get("fine_tune", {})
        verdict = "now the active version" if ft.get("promoted") else "kept as a candidate"
        self.status.setText(f"{card.target} {card.version}: {verdict}. {ft.get('reason', '')}")
        self.progress_bar.setValue(self.progress_bar.maximum())
        self.eta_label.setText(f"done in {card.training.get('time_s', 0):.0f} s")
        show_info(f"Fine-tune: {card.target} {card.version} {verdict}")
        models_events().changed.emit()

    def _on_error(self, exc):
        msg = str(exc) if isinstance(exc, CTSegError) else f"{type(exc).__name__}: {exc}"
        show_error(f"Fine-tune: {msg}")
        self.status.setText(f"failed: {msg}; the active version is unchanged")

    def _on_finished(self):
        self.worker = None
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.card is None:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
        if self._progress is not None:
            self._progress.close()
            self._progress = None
