"""Cohort widget in a real viewer: open a cohort folder, sort, double-click to open, next to review."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from synthetic import make_hu_volume, write_nifti, write_tiny_weights

from napari_ctseg import cohort
from napari_ctseg._napari.widgets.cohort import CohortWidget
from napari_ctseg.volume import METADATA_KEY


@pytest.fixture
def cohort_folder(tmp_path, tiny_weights, monkeypatch):
    """Three segmented scans and a broken one: each task run inline (the table is what a run writes)."""
    root = tmp_path / "w"
    write_tiny_weights(root, targets=("lungs", "infection"), constant={"lungs": 1, "infection": 1})
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(root))
    src = tmp_path / "scans"
    src.mkdir()
    for i, n in enumerate((5, 6, 7)):
        write_nifti(src / f"scan{i}.nii.gz", make_hu_volume((24, 28, n), seed=i), np.diag([1.5, 1.5, 3.0, 1.0]))
    (src / "broken.nii.gz").write_bytes(b"broken")
    out = tmp_path / "cohort"
    versions = {t: r["version"] for t, r in cohort.resolve_versions(["lungs", "infection"]).items()}
    rows = [cohort.segment_task(t, str(out), ["lungs", "infection"], versions, "cpu")
            for t in cohort.discover([src]).tasks]
    table = cohort.write_table(out, rows)
    # Distinct review scores, so that the order is known: the tiny models agree with themselves.
    scores = {"scan0": 0.2, "scan1": 0.9, "scan2": 0.5}
    table["review_score"] = [scores.get(i.split("-")[0]) for i in table["scan_id"]]
    cohort.write_table(out, table.to_dict("records"))
    return out


def shown_scores(widget):
    return [float(v) if v else None for v in widget.column_values("Review score")]


def test_open_sort_double_click_and_next_to_review(make_napari_viewer, qtbot, cohort_folder):
    viewer = make_napari_viewer()
    widget = CohortWidget(viewer)
    widget.open_cohort(cohort_folder)
    table = cohort.read_table(cohort_folder)
    assert widget.table.rowCount() == 4
    scores = shown_scores(widget)
    assert scores[:3] == sorted([s for s in scores if s is not None], reverse=True) and scores[3] is None
    assert widget.column_values("Status").count("failed") == 1

    widget.table.sortItems(0, Qt.SortOrder.AscendingOrder)
    assert widget.column_values("Scan") == sorted(table["scan_id"])

    # Double-click the third row: its scan and masks open, on the scan's grid, with the metadata
    # Mask tools needs to save a correction.
    row = 2
    scan_id = widget.scan_at(row)
    rect = widget.table.visualItemRect(widget.table.item(row, 1))
    qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: widget.current == scan_id, timeout=30_000)
    volume, masks, _ = cohort.load_scan(cohort_folder, scan_id)
    names = [ly.name for ly in viewer.layers]
    assert names[0] == volume.name and set(names[1:]) == {"lungs", "infection"}
    for target, mask in masks.items():
        layer = viewer.layers[target]
        assert np.array_equal(layer.data, mask) and mask.any()
        assert layer.metadata["target"] == target and layer.metadata["model_version"] == "t1"
        assert layer.metadata[METADATA_KEY]["source_path"] == volume.geometry.source_path
        assert np.allclose(layer.scale, volume.spacing)

    # Next to review: the highest score first; each press marks the open scan reviewed.
    order = table[table["status"] == "ok"].sort_values("review_score", ascending=False)["scan_id"].tolist()
    widget.current = None
    seen = []
    for _ in order:
        scan = widget.next_to_review()
        qtbot.waitUntil(lambda s=scan: widget.current == s, timeout=30_000)
        seen.append(scan)
    assert seen == order
    assert len(viewer.layers) == 3  # the last scan replaced the others
    assert widget.next_to_review() is None
    assert set(cohort.reviewed(cohort_folder)) == set(order)
    reviewed_col = dict(zip(widget.column_values("Scan"), widget.column_values("Reviewed")))
    assert {s for s, v in reviewed_col.items() if v == "yes"} == set(order)
