"""Cohort dock widget: the rows of a cohort folder (``ctseg cohort run``), least certain first.

A sortable table (scan, status, review score, volumes, % of lungs involved, reviewed);
double-clicking a row opens the scan with its masks (read in a worker thread, so the viewer
stays responsive); **Next to review** marks the open scan reviewed and opens the segmented
scan with the highest review score not yet reviewed. The masks are ordinary Labels layers
with the target, model version and baseline in their metadata, so Mask tools' Save corrected
mask records a correction for Fine-tune as it does after Segment volume; a scan with such a
correction counts as reviewed. Everything else is ``napari_ctseg.cohort``.
"""
from __future__ import annotations

from pathlib import Path

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ... import cohort
from ...corrections import BASELINE_KEY, slice_digests
from ...errors import CTSegError
from .._layers import image_layer_data

# (header, table column, format)
COLUMNS = (("Scan", "scan_id", "{}"), ("Status", "status", "{}"), ("Review score", "review_score", "{:.3f}"),
           ("Lungs mL", "lungs_ml", "{:.0f}"), ("Liver mL", "liver_ml", "{:.0f}"),
           ("Infection mL", "infection_ml", "{:.1f}"), ("% lungs", "lung_involvement_pct", "{:.1f}"),
           ("Reviewed", None, "{}"))


class _Item(QTableWidgetItem):
    """A cell that sorts by its value (numbers as numbers, missing values last)."""

    def __init__(self, text: str, key):
        super().__init__(text)
        self.key = key

    def __lt__(self, other):
        a, b = self.key, getattr(other, "key", None)
        if a is None or b is None:  # missing values last, whichever the order
            table = self.tableWidget()
            descending = table is not None and \
                table.horizontalHeader().sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
            return (a is None and b is not None) if descending else (b is None and a is not None)
        if isinstance(a, str) != isinstance(b, str):
            return isinstance(b, str)
        return a < b


class CohortWidget(QWidget):
    """Plugins > napari-ctseg > Cohort."""

    def __init__(self, napari_viewer=None):
        super().__init__()
        self.viewer = napari_viewer
        self.folder: Path | None = None
        self.table_data = None
        self.current: str | None = None
        self.layers: list = []
        self.worker = None
        self.setMinimumWidth(380)
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.open_button = QPushButton("Open cohort folder...")
        self.open_button.clicked.connect(self._choose_folder)
        self.next_button = QPushButton("Next to review")
        self.next_button.setToolTip("Mark the open scan reviewed and open the least certain scan not reviewed yet")
        self.next_button.clicked.connect(self.next_to_review)
        self.next_button.setEnabled(False)
        top.addWidget(self.open_button)
        top.addWidget(self.next_button)
        layout.addLayout(top)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(220)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_scan(self.scan_at(row)))
        layout.addWidget(self.table)
        self.status = QLabel("Open the --out folder of 'ctseg cohort run'.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # --- the table ---------------------------------------------------------------------------
    def _choose_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Cohort folder (with cohort.csv)")
        if folder:
            self.open_cohort(folder)

    def open_cohort(self, folder) -> None:
        """Show the rows of ``folder``'s cohort table, the highest review score first."""
        folder = Path(folder)
        table = cohort.read_table(folder)
        if not len(table):
            show_error(f"{folder}: no cohort table here ({cohort.TABLE_CSV}); run 'ctseg cohort run' first")
            return
        self.folder, self.table_data = folder, table
        self.refresh()
        self.next_button.setEnabled(True)
        done = cohort.reviewed(folder)
        ok = int((table["status"] == "ok").sum())
        self.status.setText(f"{folder.name}: {len(table)} scans, {ok} segmented, "
                            f"{len([s for s in done if s in set(table['scan_id'])])} reviewed")

    def refresh(self) -> None:
        """Fill the table again; a scan with a correction saved since the run counts as reviewed."""
        cohort.review_corrections(self.folder, self.table_data)
        table, done = self.table_data, cohort.reviewed(self.folder)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(table))
        for r, row in enumerate(table.to_dict("records")):
            for c, (_, col, fmt) in enumerate(COLUMNS):
                value = ("yes" if row["scan_id"] in done else "") if col is None else row.get(col)
                if isinstance(value, float) and value != value:  # NaN
                    value = None
                text = "" if value is None else (fmt.format(value) if not isinstance(value, str) else value)
                item = _Item(text, value)
                if col == "scan_id":
                    item.setToolTip(str(row.get("path", "")) + (f"\n{row['error']}" if row.get("error") else ""))
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(2, Qt.SortOrder.DescendingOrder)

    def scan_at(self, row: int) -> str:
        return self.table.item(row, 0).text()

    def column_values(self, header: str) -> list[str]:
        """The texts of one column, top to bottom (as shown)."""
        c = [h for h, _, _ in COLUMNS].index(header)
        return [self.table.item(r, c).text() for r in range(self.table.rowCount())]

    # --- review ------------------------------------------------------------------------------
    def next_to_review(self) -> str | None:
        """Mark the open scan reviewed, then open the next one (None when every scan is reviewed)."""
        if self.folder is None:
            return None
        if self.current is not None:
            cohort.mark_reviewed(self.folder, self.current)
        scan = cohort.next_to_review(self.folder, self.table_data)
        self.refresh()
        if scan is None:
            self.status.setText("every segmented scan has been reviewed")
            show_info("Cohort: every segmented scan has been reviewed")
            return None
        self.open_scan(scan)
        return scan

    def open_scan(self, scan_id: str) -> None:
        """Read the scan and its masks in a worker thread, then show them (replacing the last one)."""
        if self.folder is None:
            return
        self.status.setText(f"opening {scan_id} ...")
        self.worker = create_worker(cohort.load_scan, self.folder, scan_id, self.table_data)
        self.worker.returned.connect(lambda out: self._show(scan_id, *out))
        self.worker.errored.connect(self._on_error)
        self.worker.start()

    def _on_error(self, exc):
        self.status.setText(f"could not open: {exc}")
        if isinstance(exc, (CTSegError, OSError)):
            show_error(str(exc))
        else:
            show_error(f"Cohort: unexpected error ({type(exc).__name__}: {exc})")

    def _show(self, scan_id, volume, masks, row) -> None:
        for layer in self.layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = []
        data, kwargs, _ = image_layer_data(volume)
        image = self.viewer.add_image(data, **kwargs)
        self.layers.append(image)
        for target, mask in masks.items():
            version = str(row.get(f"version_{target}", ""))
            meta = {**image.metadata, "target": target, "model_version": version,
                    BASELINE_KEY: slice_digests(mask), "cohort_scan": scan_id}
            style = _labels_style(target, version)
            contour = style.pop("contour", 0)
            layer = self.viewer.add_labels(mask, name=f"{target}", scale=image.scale, translate=image.translate,
                                           metadata=meta, **style)
            layer.contour = contour
            self.layers.append(layer)
        self.viewer.layers.selection.active = image
        self.current = scan_id
        score = row.get("review_score")
        self.status.setText(f"{scan_id}: review score {score:.3f}" if isinstance(score, float) else scan_id)


def _labels_style(target: str, version: str) -> dict:
    """The model card's colours and style for ``target``'s mask (napari's defaults without the card)."""
    from ...models.registry import get_card
    from .segment import labels_layer_kwargs

    try:
        return labels_layer_kwargs(get_card(target, version or None))
    except CTSegError:
        return {}
