"""The corrections store: one JSON manifest per saved correction, under XDG_DATA_HOME."""
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from napari_ctseg.editing import corrections


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "napari-ctseg" / "corrections"


def test_store_is_under_xdg_data_home(store):
    assert corrections.corrections_dir() == store
    assert corrections.list_corrections() == []


def test_record_and_list(store, tmp_path):
    scan, mask = tmp_path / "ct.nii.gz", tmp_path / "ct_liver_corrected.nii.gz"
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    corr = corrections.record_correction(scan, mask, "liver", "v2", [3, 4, 9], {"1": 120}, when=when)
    path = store / corr.manifest_path.split("/")[-1]
    assert path.is_file() and path.parent == store
    data = json.loads(path.read_text())
    assert data == {
        "scan_path": str(scan.resolve()), "mask_path": str(mask.resolve()), "target": "liver",
        "model_version": "v2", "changed_slices": [3, 4, 9], "created": "2024-05-06T07:08:09+00:00",
        "label_voxels": {"1": 120}, "version": 1,
    }
    corrections.record_correction(scan, tmp_path / "ct_lungs_corrected.nii.gz", "lungs", "", [1])
    assert [c.target for c in corrections.list_corrections()] == ["liver", "lungs"]
    (liver,) = corrections.list_corrections("liver")
    assert liver.mask_path == str(mask.resolve()) and liver.changed_slices == [3, 4, 9]
    assert corrections.list_corrections("infection") == []


def test_saving_the_same_mask_again_replaces_its_manifest(store, tmp_path):
    mask = tmp_path / "m.nii.gz"
    first = corrections.record_correction(tmp_path / "ct.nii", mask, "lungs", "v1", [1])
    second = corrections.record_correction(tmp_path / "ct.nii", mask, "lungs", "v1", [1, 2])
    assert first.manifest_path == second.manifest_path
    (only,) = corrections.list_corrections()
    assert only.changed_slices == [1, 2]
    assert not list(store.glob(".*.tmp"))


def test_broken_manifest_is_skipped(store, tmp_path):
    corrections.record_correction(tmp_path / "ct.nii", tmp_path / "a.nii.gz", "liver")
    (store / "broken.json").write_text("{not json")
    (store / "partial.json").write_text(json.dumps({"scan_path": "x"}))
    assert [c.target for c in corrections.list_corrections()] == ["liver"]


def test_changed_slices_against_digests():
    mask = np.zeros((6, 8, 8), np.uint8)
    mask[1:5, 2:6, 2:6] = 1
    digests = corrections.slice_digests(mask)
    assert corrections.changed_slices(digests, mask) == []
    mask[2, 0, 0] = 1
    mask[4, 3, 3] = 0
    assert corrections.changed_slices(digests, mask) == [2, 4]
    mask[2, 0, 0] = 0  # changed back: not a change
    assert corrections.changed_slices(digests, mask) == [4]
    # without a baseline every slice holding a label counts
    assert corrections.changed_slices(None, mask) == [1, 2, 3, 4]


def test_store_stamp_changes_with_every_save_and_only_then(store, tmp_path):
    assert corrections.store_stamp() == ()  # no store yet
    scan = tmp_path / "ct.nii.gz"
    corrections.record_correction(scan, tmp_path / "a.nii.gz", "lungs", "", [1])
    first = corrections.store_stamp()
    assert len(first) == 1 and corrections.store_stamp() == first  # reading changes nothing
    (store / "notes.txt").write_text("not a manifest")
    assert corrections.store_stamp() == first
    corrections.record_correction(scan, tmp_path / "b.nii.gz", "liver", "", [2])
    second = corrections.store_stamp()
    assert len(second) == 2 and second != first
