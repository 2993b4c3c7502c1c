"""Mask tools: compare the label with another Labels layer on the same grid (an expert's mask
opened from a DICOM SEG or RTSTRUCT, a colleague's NIfTI): Dice and the volume difference, the
figures ``ctseg evaluate`` computes (``napari_ctseg.evaluation.metrics``)."""
from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QComboBox, QGridLayout, QGroupBox, QLabel, QPushButton, QSpinBox

from napari_ctseg.evaluation.metrics import dice, volume_ml
from napari_ctseg._napari._compat import unwrap


class ComparePanel(QGroupBox):
    """Dice and volumes of the Mask tools' label (``host``) against a label of another layer."""

    def __init__(self, host):
        super().__init__("Compare with another mask")
        self.host = host
        grid = QGridLayout(self)
        self.other_combo = QComboBox()
        self.other_combo.setToolTip("A Labels layer on the same grid: an expert's SEG or RTSTRUCT, another NIfTI")
        self.other_label_spin = QSpinBox()
        self.other_label_spin.setRange(0, 65535)
        self.other_label_spin.setToolTip("Its label to compare with (0: any label of that layer)")
        self.compare_button = QPushButton("Compare")
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        grid.addWidget(QLabel("With"), 0, 0)
        grid.addWidget(self.other_combo, 0, 1)
        grid.addWidget(QLabel("its label"), 0, 2)
        grid.addWidget(self.other_label_spin, 0, 3)
        grid.addWidget(self.compare_button, 1, 0, 1, 4)
        grid.addWidget(self.result_label, 2, 0, 1, 4)
        self.compare_button.clicked.connect(self.compare)
        self.other_combo.currentIndexChanged.connect(self._other_chosen)

    @property
    def buttons(self) -> tuple[QPushButton, ...]:
        return (self.compare_button,)

    def candidates(self) -> list[Labels]:
        layer = self.host.layer
        if layer is None:
            return []
        return [ly for ly in self.host.labels_layers()
                if unwrap(ly) is not unwrap(layer) and tuple(ly.data.shape) == tuple(layer.data.shape)]

    def refresh(self) -> None:
        current = self.other_combo.currentText()
        names = [ly.name for ly in self.candidates()]
        self.other_combo.blockSignals(True)
        self.other_combo.clear()
        self.other_combo.addItems(names)
        if current in names:
            self.other_combo.setCurrentText(current)
        self.other_combo.blockSignals(False)
        self._other_chosen()

    def other(self) -> Labels | None:
        name = self.other_combo.currentText()
        return next((ly for ly in self.candidates() if ly.name == name), None)

    def _other_chosen(self, index=None) -> None:
        other = self.other()
        if other is not None:
            values = [int(v) for v in np.unique(np.asarray(other.data)) if v]
            self.other_label_spin.setValue(values[0] if len(values) == 1 else 0)

    def compare(self) -> dict | None:
        """Dice and volumes (mL) of the label against the other layer's label; shown and returned."""
        host, other = self.host, self.other()
        if not host.ready("compare") or other is None:
            self.result_label.setText("Open another mask on the same grid to compare with (a SEG, an RTSTRUCT, a NIfTI)")
            return None
        ours = np.asarray(host.layer.data) == host.label
        theirs_value = self.other_label_spin.value()
        theirs = np.asarray(other.data) == theirs_value if theirs_value else np.asarray(other.data) > 0
        spacing = host.spacing()
        v_ours, v_theirs = volume_ml(ours, spacing), volume_ml(theirs, spacing)
        out = {"dice": dice(ours, theirs), "ours_ml": v_ours, "theirs_ml": v_theirs,
               "difference_ml": v_ours - v_theirs,
               "difference_pct": 100.0 * (v_ours - v_theirs) / v_theirs if v_theirs else float("nan")}
        what = f"label {theirs_value}" if theirs_value else "any label"
        self.result_label.setText(
            f"Label {host.label} vs '{other.name}' ({what}): Dice {out['dice']:.3f}; {v_ours:.1f} mL vs "
            f"{v_theirs:.1f} mL ({out['difference_ml']:+.1f} mL, {out['difference_pct']:+.1f} %)")
        return out
