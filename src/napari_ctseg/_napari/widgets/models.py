"""Models dock widget: every model version (bundled or fine-tuned), and the active one per target.

One row per version: target, version, source, date, validation Dice, status. **Use**
makes a version the active one in one click (also to roll back to the bundled one);
**Remove** deletes one of the user's fine-tuned versions after asking. Everything goes
through ``models.registry``; the bundled weights are never written.
"""
from __future__ import annotations

from napari.utils.notifications import show_error, show_info
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ctseg.errors import CTSegError
from napari_ctseg.models.registry import ModelRegistry, as_registry
from napari_ctseg._napari.widgets._models_events import connect_models_changed, models_events

COLUMNS = ("Target", "Version", "Source", "Date", "Val. Dice", "Status", "")


class ModelsWidget(QWidget):
    """Plugins > napari-ctseg > Models."""

    def __init__(self, napari_viewer=None, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = as_registry(registry)  # where the models are: ModelRegistry.default() in napari
        self.rows: list[dict] = []
        self.setMinimumWidth(340)
        layout = QVBoxLayout(self)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(160)
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.remove_button = QPushButton("Remove selected")
        self.remove_button.setToolTip("Delete the selected fine-tuned version (bundled ones stay)")
        self.remove_button.clicked.connect(self.remove_selected)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        buttons.addWidget(self.remove_button)
        buttons.addWidget(refresh)
        layout.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        connect_models_changed(self, self.refresh)
        self.refresh()

    def refresh(self):
        self.rows = []
        for target in self.registry.targets():
            try:
                cards = self.registry.list_versions(target)
                active = self.registry.active_version(target) if cards else None
            except CTSegError:
                continue
            for c in cards:
                dice = c.validation.get("mean_dice") if isinstance(c.validation, dict) else None
                self.rows.append({"target": target, "version": c.version, "source": self.registry.version_source(c),
                                  "created": c.created, "dice": dice, "status": c.extra.get("status", ""),
                                  "active": c.version == active,
                                  "reason": c.extra.get("fine_tune", {}).get("reason", "")})
        self.table.setRowCount(len(self.rows))
        bold = QFont(self.table.font())
        bold.setBold(True)
        for i, r in enumerate(self.rows):
            status = "active" if r["active"] else (r["status"] if r["status"] != "promoted" else "")
            values = (r["target"], r["version"], r["source"], (r["created"] or "")[:10],
                      "n/a" if r["dice"] is None else f"{r['dice']:.4f}", status)
            for j, v in enumerate(values):
                item = QTableWidgetItem(v)
                if r["active"]:
                    item.setFont(bold)
                if r["reason"]:
                    item.setToolTip(r["reason"])
                self.table.setItem(i, j, item)
            use = QPushButton("Use")
            use.setEnabled(not r["active"])
            use.setToolTip(f"Make {r['target']} {r['version']} the active version")
            use.clicked.connect(lambda _=False, t=r["target"], v=r["version"]: self.use(t, v))
            self.table.setCellWidget(i, len(COLUMNS) - 1, use)

    def row_of(self, target: str, version: str) -> int:
        return next(i for i, r in enumerate(self.rows) if r["target"] == target and r["version"] == version)

    def use_button(self, target: str, version: str) -> QPushButton:
        return self.table.cellWidget(self.row_of(target, version), len(COLUMNS) - 1)

    def use(self, target: str, version: str):
        try:
            now = self.registry.set_active_version(target, version)
        except CTSegError as exc:
            show_error(f"Models: {exc}")
            return
        self.status.setText(f"{target}: active version is now {now}")
        show_info(f"Models: {target} now uses {now}")
        models_events().changed.emit()

    def remove_selected(self, confirm: bool = True):
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            show_error("Models: select a fine-tuned version to remove")
            return
        r = self.rows[rows[0].row()]
        if r["source"] != "fine-tuned":
            show_error(f"Models: {r['target']} {r['version']} is {r['source']}; only your fine-tuned "
                       "versions can be removed")
            return
        if confirm:
            answer = QMessageBox.question(self, "Remove model version",
                                          f"Delete {r['target']} {r['version']} and its weights?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        try:
            now = self.registry.remove_version(r["target"], r["version"])
        except CTSegError as exc:
            show_error(f"Models: {exc}")
            return
        self.status.setText(f"removed {r['target']} {r['version']}; active: {now or 'none'}")
        models_events().changed.emit()
