"""Plugins > napari-ctseg > Cohort: review a cohort folder made by ``ctseg cohort run``.

A sortable table of the cohort's rows (review score, volumes, % of lungs involved, status,
what a re-run with a new model version changed, reviewed). Double-clicking a row opens its
scan with the run's masks (read in a napari worker, so the viewer stays responsive; the masks
are Labels layers like Segment volume's, so Mask tools edits and saves them). **Next to review** opens the least certain scan nobody reviewed
yet. Saving a corrected mask with Mask tools records it in the corrections store (which
Fine-tune learns from) and marks the scan reviewed here; **Mark reviewed** accepts a scan as it
is. The table follows the cohort folder: a run still going, or a new run with a new model
version, shows up as it writes its table. The bookkeeping is ``napari_ctseg.cohort.review``.
"""
from __future__ import annotations

import math
from pathlib import Path

from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QFileSystemWatcher, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ctseg.cohort import review as cohort_review
from napari_ctseg.cohort.table import TABLE_CSV, TABLE_PARQUET, read_table, volume_changes
from napari_ctseg.editing.corrections import BASELINE_KEY, corrections_dir, list_corrections, slice_digests, store_stamp
from napari_ctseg.errors import CTSegError
from napari_ctseg.models.definition import style as card_style
from napari_ctseg.models.registry import ModelRegistry, as_registry
from napari_ctseg._napari._layers import image_layer_data
from napari_ctseg._napari.widgets._mask_save import SAVE_FOLDER_KEY
from napari_ctseg._napari.widgets.segment import labels_layer_kwargs

COHORT_KEY = "ctseg_cohort"  # layer metadata: {"dir": cohort folder, "scan_id": ...}
COLUMNS = (("Scan", "scan_id"), ("Review score", "review_score"), ("Status", "status"),
           ("Lungs mL", "lungs_ml"), ("Liver mL", "liver_ml"), ("Infection mL", "infection_ml"),
           ("% lungs involved", "lung_involvement_pct"), ("Change", "_change"), ("Reviewed", "_reviewed"))


class _Item(QTableWidgetItem):
    """A cell that sorts by value: numbers as numbers (missing ones last), text as text."""

    def __init__(self, value, text: str | None = None):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        missing = value is None or (number and math.isnan(value))
        if text is None:
            text = "" if missing else (f"{value:.3f}" if isinstance(value, float) else str(value))
        super().__init__(text)
        self.key = (1, 0.0, "") if missing else ((0, float(value), "") if number else (0, 0.0, text.lower()))
        if number:
            self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other):
        other_key = getattr(other, "key", (1, 0.0, ""))
        if (self.key[0] or other_key[0]) and self.tableWidget() is not None:
            # Missing values stay at the bottom in either order.
            descending = self.tableWidget().horizontalHeader().sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
            if descending:
                return self.key[0] > other_key[0]
        return self.key < other_key


class CohortWidget(QWidget):
    """Plugins > napari-ctseg > Cohort."""

    def __init__(self, napari_viewer, registry: ModelRegistry | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.registry = as_registry(registry)
        self.folder: Path | None = None
        self.rows: list[dict] = []
        self.reviews: dict[str, dict] = {}
        self.worker = None
        self.opened: dict[str, list] = {}  # scan id -> the layers added for it
        self.current: str | None = None  # the scan shown last
        self._store_seen: tuple | None = None  # (corrections store stamp, its manifests)
        self.setMinimumWidth(360)

        layout = QVBoxLayout(self)
        line = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("cohort folder (ctseg cohort run --out)")
        self.folder_edit.returnPressed.connect(lambda: self.open_folder(self.folder_edit.text()))
        browse = QPushButton("Open…")
        browse.clicked.connect(self._browse)
        line.addWidget(self.folder_edit)
        line.addWidget(browse)
        layout.addLayout(line)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSortingEnabled(True)
        self.table.cellDoubleClicked.connect(lambda r, _c: self.open_scan(self._scan_at(r)))
        self.table.setMinimumHeight(200)
        layout.addWidget(self.table)

        buttons = QHBoxLayout()
        self.next_button = QPushButton("Next to review")
        self.next_button.setToolTip("Open the least certain scan (highest review score) not reviewed yet")
        self.next_button.clicked.connect(self.next_to_review)
        self.accept_button = QPushButton("Mark reviewed")
        self.accept_button.setToolTip("Accept the selected scan's masks as they are")
        self.accept_button.clicked.connect(self.mark_selected_reviewed)
        buttons.addWidget(self.next_button)
        buttons.addWidget(self.accept_button)
        layout.addLayout(buttons)
        self.status = QLabel("Open a cohort folder made by 'ctseg cohort run'.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self._enable(False)

        # The table follows the folder (a run writing rows) and the corrections store (a save).
        self.watcher = QFileSystemWatcher(self)
        self.watcher.directoryChanged.connect(self._folder_changed)
        self.watcher.fileChanged.connect(self._folder_changed)
        store = corrections_dir()
        store.mkdir(parents=True, exist_ok=True)
        self.watcher.addPath(str(store))

    # --- the table ----------------------------------------------------------------------------
    def _browse(self):
        folder = QFileDialog.getExistingDirectory(self, "Cohort folder", self.folder_edit.text() or "")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder) -> None:
        folder = Path(str(folder)).expanduser()
        if not ((folder / TABLE_CSV).is_file() or (folder / TABLE_PARQUET).is_file()):
            self.status.setText(f"{folder}: no {TABLE_CSV} here; run 'ctseg cohort run SRC --out {folder}' first")
            return
        if self.folder is not None:
            self.watcher.removePath(str(self.folder))
        self.folder = folder
        self.folder_edit.setText(str(folder))
        self.watcher.addPath(str(folder))
        self.refresh()
        self.table.sortItems(1, Qt.SortOrder.DescendingOrder)  # least certain first

    def refresh(self) -> None:
        """Read the table and the reviews again (keeping the sort and the selection)."""
        if self.folder is None:
            return
        try:
            table = read_table(self.folder)
        except Exception as exc:  # noqa: BLE001 - a table being rewritten: keep the last one shown
            self.status.setText(f"could not read the cohort table ({type(exc).__name__}); showing the last one")
            return
        self.rows = table.astype(object).where(table.notna(), None).to_dict("records") if len(table) else []
        cohort_review.reviews_from_corrections(self.folder, self.rows, self._corrections())
        self.reviews = cohort_review.load_reviews(self.folder)
        selected = self.selected_scan()
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            for j, (_, key) in enumerate(COLUMNS):
                if key == "_change":
                    item = _change_item(row)
                else:
                    item = _Item(self._reviewed_text(row) if key == "_reviewed" else row.get(key))
                if key == "status" and row.get("status") != "ok" and row.get("error"):
                    item.setToolTip(str(row["error"]))
                self.table.setItem(i, j, item)
        self.table.setSortingEnabled(sorting)
        if selected is not None:
            self.select_scan(selected)
        left = len(cohort_review.review_queue(self.rows, self.reviews))
        failed = sum(r.get("status") != "ok" for r in self.rows)
        self.status.setText(f"{len(self.rows)} scans, {failed} failed, {len(self.rows) - failed - left} reviewed, "
                            f"{left} to review")
        self._enable(bool(self.rows))

    def _corrections(self) -> list:
        """The corrections store's manifests, read again only when the store changed (the
        table refreshes on every write of a cohort run; the store changes on a save)."""
        stamp = store_stamp()
        if self._store_seen is None or self._store_seen[0] != stamp:
            self._store_seen = (stamp, list_corrections())
        return self._store_seen[1]

    def _reviewed_text(self, row) -> str:
        r = self.reviews.get(str(row.get("scan_id")))
        return "" if r is None else f"{r.get('how', 'yes')} {str(r.get('when', ''))[:10]}".strip()

    def _folder_changed(self, _path=None) -> None:
        if self.folder is not None:
            for name in (TABLE_CSV,):  # a file replaced by rename must be watched again
                path = self.folder / name
                if path.is_file() and str(path) not in self.watcher.files():
                    self.watcher.addPath(str(path))
            self.refresh()

    def _enable(self, on: bool) -> None:
        self.next_button.setEnabled(on and self.worker is None)
        self.accept_button.setEnabled(on)

    def _scan_at(self, row_index: int) -> str | None:
        item = self.table.item(row_index, 0)
        return item.text() if item is not None else None

    def selected_scan(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self._scan_at(rows[0].row()) if rows else None

    def select_scan(self, scan_id: str) -> None:
        for i in range(self.table.rowCount()):
            if self._scan_at(i) == scan_id:
                self.table.selectRow(i)
                return

    def row_of(self, scan_id: str) -> dict | None:
        return next((r for r in self.rows if str(r.get("scan_id")) == scan_id), None)

    # --- reviewing ------------------------------------------------------------------------------
    def next_to_review(self) -> str | None:
        self.refresh()
        queue = cohort_review.review_queue(self.rows, self.reviews)
        if not queue:
            self.status.setText("every scan that finished has been reviewed")
            return None
        # The one on screen is being reviewed: the next one after it (or it, when it is the last).
        scan_id = next((s for s in queue if s != self.current), queue[0])
        self.open_scan(scan_id)
        return scan_id

    def mark_selected_reviewed(self) -> None:
        scan_id = self.selected_scan()
        if scan_id is None or self.folder is None:
            self.status.setText("select a scan first")
            return
        cohort_review.mark_reviewed(self.folder, scan_id, "accepted")
        self.refresh()

    def open_scan(self, scan_id: str | None) -> None:
        """Read the scan and its masks in a worker, then add them as layers."""
        row = self.row_of(scan_id) if scan_id else None
        if row is None or self.folder is None or self.worker is not None:
            return
        if scan_id in self.opened:
            self.current = scan_id
            self.select_scan(scan_id)
            self.viewer.layers.selection.active = self.opened[scan_id][-1]
            return
        self.select_scan(scan_id)
        self.status.setText(f"opening {scan_id}…")
        self.worker = create_worker(_open_job, self.folder, row, self.registry, _start_thread=False,
                                    _connect={"returned": self._show, "errored": self._failed,
                                              "finished": self._finished})
        self._enable(True)
        self.worker.start()

    def _show(self, opened) -> None:
        self._close_reviewed()
        volume, masks = opened.volume, opened.masks
        data, kwargs, _ = image_layer_data(volume)
        cohort_meta = {"dir": str(self.folder), "scan_id": opened.scan_id}
        image = self.viewer.add_image(data, **kwargs)
        image.metadata[COHORT_KEY] = cohort_meta
        layers = [image]
        # Stacked by the cards' order, as Segment volume does (infection above the lungs' outlines).
        for target, (mask, card, digests) in sorted(masks.items(), key=lambda kv: card_style(kv[1][1])["order"]):
            meta = {**image.metadata, "target": target, "model_version": card.version, BASELINE_KEY: digests,
                    SAVE_FOLDER_KEY: str(self.folder / opened.scan_id)}  # the archive may be read-only
            kw = labels_layer_kwargs(card)
            contour = kw.pop("contour")
            layer = self.viewer.add_labels(mask, name=f"{target} ({opened.scan_id})", scale=image.scale,
                                           translate=image.translate, metadata=meta, **kw)
            layer.contour = contour
            layers.append(layer)
        self.opened[opened.scan_id] = layers
        self.current = opened.scan_id
        self.viewer.layers.selection.active = layers[-1]
        self.status.setText(f"{opened.scan_id}: edit with Mask tools and save to mark it reviewed, "
                            "or Mark reviewed to accept it")

    def _close_reviewed(self) -> None:
        """Remove the layers of scans opened before that are reviewed now (nothing unsaved is dropped)."""
        for scan_id in [s for s in self.opened if s in self.reviews]:
            for layer in self.opened.pop(scan_id):
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)

    def _failed(self, exc) -> None:
        text = str(exc) if isinstance(exc, CTSegError) else f"{type(exc).__name__}: {exc}"
        show_error(f"Cohort: {text}")
        self.status.setText(f"could not open: {text}")

    def _finished(self) -> None:
        self.worker = None
        self._enable(bool(self.rows))

    def cohort_layers(self) -> list:
        return [ly for layers in self.opened.values() for ly in layers if isinstance(ly, Labels)]


def _change_item(row: dict) -> _Item:
    """What a re-run changed: the largest volume change (sorted by its size), the rest in the tooltip."""
    changes = volume_changes(row)
    if not changes:
        return _Item(None)
    col, delta = max(changes.items(), key=lambda kv: abs(kv[1]))
    item = _Item(abs(delta), f"{col.removesuffix('_ml')} {delta:+.1f} mL")
    item.setToolTip("since the run before (" + str(row.get("model_key_before", "")) + "):\n"
                    + "\n".join(f"{c.removesuffix('_ml')}: {row.get(c + '_before')} -> {row.get(c)} mL ({d:+.1f})"
                                 for c, d in sorted(changes.items())))
    return item


def _open_job(folder, row, registry):
    """In the worker: the scan, its masks and their slice fingerprints (the baseline of Mask
    tools' changed slices), so the GUI thread only adds layers."""
    opened = cohort_review.open_scan(folder, row, registry)
    opened.masks = {t: (m, card, slice_digests(m)) for t, (m, card) in opened.masks.items()}
    return opened
