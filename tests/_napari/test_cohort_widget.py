"""The Cohort widget in a real viewer: a cohort run by Dask (tiny models), its table sorted by review
score, Next to review opening the least certain scan with its masks, a save with Mask tools marking
it reviewed, Mark reviewed accepting one."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from cohort.test_cohort import mixed, run, weights  # noqa: F401 - fixtures (tests/cohort/)

from napari_ctseg.cohort.table import write_table

from napari_ctseg.cohort import review as cohort_review

from napari_ctseg.editing import corrections
from napari_ctseg._napari.widgets import cohort as cohort_widget
from napari_ctseg._napari.widgets.cohort import COLUMNS, CohortWidget
from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget
from napari_ctseg.io import read_scan


@pytest.fixture
def cohort_dir(weights, mixed, tmp_path):  # noqa: F811 - fixtures
    out = tmp_path / "cohort"
    table = run([mixed], out).table
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    # The tiny models are sure of everything (score 0): give the two scans different scores, as a
    # real run does, so the order is known: the DICOM series is the least certain.
    for r in rows:
        if r["status"] == "ok":
            r["review_score"] = 0.4 if r["kind"] == "dicom" else 0.1
    write_table(out, rows)
    return out, {r["kind"]: r for r in rows}


def column(widget, name):
    j = [c[0] for c in COLUMNS].index(name)
    return [widget.table.item(i, j).text() for i in range(widget.table.rowCount())]


def wait_opened(qtbot, widget, scan_id):
    qtbot.waitUntil(lambda: widget.worker is None and scan_id in widget.opened, timeout=60_000)


def test_review_a_cohort(make_napari_viewer, qtbot, cohort_dir, monkeypatch):
    out, by_kind = cohort_dir
    reads = []  # the widget's reads of the corrections store (the real reader, counted)
    monkeypatch.setattr(cohort_widget, "list_corrections",
                        lambda *a: reads.append(1) or corrections.list_corrections(*a))
    dicom, nifti = by_kind["dicom"], by_kind["nifti"]
    viewer = make_napari_viewer()
    widget = CohortWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.open_folder(out)
    assert widget.table.rowCount() == 3
    assert column(widget, "Scan")[:2] == [dicom["scan_id"], nifti["scan_id"]]  # least certain first
    assert column(widget, "Status")[2] == "failed"  # no score: last
    assert "3 scans, 1 failed, 0 reviewed, 2 to review" in widget.status.text()
    # A run writing rows refreshes the table; the store, unchanged, is not read again.
    widget.refresh()
    widget._folder_changed(str(out))
    assert len(reads) == 1
    # Sorting by a column sorts by value.
    widget.table.sortItems([c[0] for c in COLUMNS].index("Review score"), Qt.SortOrder.AscendingOrder)
    assert column(widget, "Review score")[:2] == ["0.100", "0.400"]

    # Double-click a row: its scan opens.
    row = column(widget, "Scan").index(nifti["scan_id"])
    rect = widget.table.visualItemRect(widget.table.item(row, 1))
    qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    wait_opened(qtbot, widget, nifti["scan_id"])
    assert widget.current == nifti["scan_id"] and len(viewer.layers) == 3

    assert widget.next_to_review() == dicom["scan_id"]  # the least certain one not on screen
    wait_opened(qtbot, widget, dicom["scan_id"])
    image, *labels = widget.opened[dicom["scan_id"]]
    volume = read_scan(dicom["path"])
    assert np.array_equal(image.data, volume.hu) and tuple(image.scale) == pytest.approx(volume.spacing)
    assert [ly.metadata["target"] for ly in labels] == ["lungs", "infection"]  # stacked by the cards' order
    lungs = next(ly for ly in labels if ly.metadata["target"] == "lungs")
    assert lungs.data.shape == volume.hu.shape and lungs.data.any()
    assert lungs.metadata["model_version"] == "t1" and tuple(lungs.scale) == tuple(image.scale)

    # Correct the lungs with Mask tools and save: the scan becomes reviewed, the store has it.
    tools = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(tools)
    tools.layer_combo.setCurrentText(lungs.name)
    lungs.data[2, :4, :4] = 0
    lungs.refresh()
    saved = tools.save_corrected(overwrite=True)
    # In the cohort folder, not in the (maybe read-only) archive of scans.
    assert saved.parent == out / dicom["scan_id"] and saved.name.endswith("_lungs_corrected.dcm")  # a DICOM scan: a SEG
    (record,) = corrections.list_corrections("lungs")
    assert record.changed_slices == [2]
    qtbot.waitUntil(lambda: dicom["scan_id"] in widget.reviews, timeout=10_000)  # the store is watched
    # The corrected mask beside the run's masks is not taken for a target's mask.
    again = cohort_review.open_scan(out, dicom)
    assert sorted(again.masks) == ["infection", "lungs"] and again.masks["lungs"][0][2, 0, 0] == 1
    assert widget.reviews[dicom["scan_id"]]["how"] == "corrected" and len(reads) == 2
    assert "1 reviewed, 1 to review" in widget.status.text()

    # Next: the other scan (open already, not reviewed: shown again); the reviewed scan's
    # layers are closed when another scan is opened.
    assert widget.next_to_review() == nifti["scan_id"]
    assert widget.current == nifti["scan_id"] and dicom["scan_id"] in widget.opened
    widget.select_scan(nifti["scan_id"])
    qtbot.mouseClick(widget.accept_button, Qt.MouseButton.LeftButton)
    assert cohort_review.load_reviews(out)[nifti["scan_id"]]["how"] == "accepted"
    assert widget.next_to_review() is None and "every scan" in widget.status.text()


def test_a_folder_without_a_cohort_says_so(make_napari_viewer, tmp_path):
    _, widget = make_napari_viewer().window.add_plugin_dock_widget("napari-ctseg", "Cohort")
    assert isinstance(widget, CohortWidget)  # from the plugin's manifest
    widget.open_folder(tmp_path)
    assert "no cohort.csv here" in widget.status.text() and not widget.next_button.isEnabled()


def test_review_queue_and_corrections_match_by_scan(tmp_path):
    rows = [{"scan_id": "a", "status": "ok", "review_score": 0.2, "path": str(tmp_path / "a.nii.gz")},
            {"scan_id": "b", "status": "ok", "review_score": float("nan"), "path": str(tmp_path / "b")},
            {"scan_id": "c", "status": "ok", "review_score": 0.9, "path": str(tmp_path / "c.nii.gz")},
            {"scan_id": "d", "status": "failed", "review_score": None, "path": str(tmp_path / "d.nii.gz")}]
    assert cohort_review.review_queue(rows, {}) == ["c", "a", "b"]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "IM0001").write_bytes(b"")
    for sid in "abc":
        (tmp_path / sid / "x").parent.mkdir(exist_ok=True)
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "a" / "lungs.nii.gz").write_bytes(b"")
    (tmp_path / "b" / "lungs.nii.gz").write_bytes(b"")
    old = corrections.Correction(str(tmp_path / "a.nii.gz"), "m.nii.gz", "lungs", created="2000-01-01T00:00:00+00:00")
    new = corrections.Correction(str(tmp_path / "b" / "IM0001"), "m2.nii.gz", "lungs",
                                 created="2100-01-01T00:00:00+00:00")
    # A correction older than the cohort's masks does not count; a DICOM file matches its series folder.
    assert cohort_review.reviews_from_corrections(tmp_path, rows, [old, new]) == ["b"]
    assert cohort_review.review_queue(rows, cohort_review.load_reviews(tmp_path)) == ["c", "a"]


def test_a_rerun_shows_what_changed(make_napari_viewer, tmp_path):
    rows = [{"scan_id": "a", "status": "ok", "review_score": 0.2, "path": "a.nii.gz", "liver_ml": 1510.0,
             "liver_ml_before": 1480.5, "lungs_ml": 4000.0, "lungs_ml_before": 4001.0, "model_key_before": "liver=v1"},
            {"scan_id": "b", "status": "ok", "review_score": 0.1, "path": "b.nii.gz", "liver_ml": 1200.0,
             "liver_ml_before": 1290.0},
            {"scan_id": "c", "status": "ok", "review_score": 0.3, "path": "c.nii.gz", "liver_ml": 900.0}]
    write_table(tmp_path, rows)
    widget = CohortWidget(make_napari_viewer())
    widget.open_folder(tmp_path)
    change = dict(zip(column(widget, "Scan"), column(widget, "Change")))
    assert change == {"a": "liver +29.5 mL", "b": "liver -90.0 mL", "c": ""}
    widget.table.sortItems([c[0] for c in COLUMNS].index("Change"), Qt.SortOrder.DescendingOrder)
    assert column(widget, "Scan") == ["b", "a", "c"]  # the largest change first, none last
