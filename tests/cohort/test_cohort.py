"""Cohorts on a real Dask LocalCluster with tiny models: discovery, rows, resume, results, report."""
from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from synthetic import make_hu_volume, write_dicom_series, write_nifti, write_structured_report, write_tiny_weights

from napari_ctseg.cohort import run as cohort
from napari_ctseg.cohort.discover import discover
from napari_ctseg.cohort.table import read_table, volume_changes, write_table
from napari_ctseg.cli import main
from napari_ctseg.segmentation.inference import segment
from napari_ctseg.io import read_scan, write_mask

TARGETS = "lungs,infection"


@pytest.fixture
def weights(tiny_weights, tmp_path, monkeypatch):
    """Tiny models (version t1) whose lungs and infection masks are not empty: the right lung and
    infection everywhere. The environment variable reaches the Dask worker processes."""
    root = tmp_path / "cohort_weights"
    write_tiny_weights(root, targets=("lungs", "infection"), constant={"lungs": 1, "infection": 1})
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(root))
    return root


@pytest.fixture
def mixed(tmp_path):
    """A folder with a NIfTI scan, a DICOM series (with a report beside it) in a subfolder, and a broken file."""
    src = tmp_path / "scans"
    src.mkdir()
    write_nifti(src / "chest.nii.gz", make_hu_volume((24, 28, 6)), np.diag([1.5, 1.5, 3.0, 1.0]))
    write_dicom_series(src / "patient2" / "dicom", make_hu_volume((20, 24, 5), seed=1).transpose(2, 1, 0))
    write_structured_report(src / "patient2" / "dicom" / "SR0001")
    (src / "broken.nii.gz").write_bytes(b"this is not a gzip file")
    return src


def run(sources, out, **kwargs):
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("processes", False)
    return cohort.run_to_end(sources, out, TARGETS, **kwargs)


def test_discover_finds_each_nifti_and_each_dicom_series_and_lists_the_rest(mixed, tmp_path):
    write_dicom_series(mixed / "patient2" / "dicom", make_hu_volume((20, 24, 3), seed=2).transpose(2, 1, 0),
                       description="second", prefix="B")
    found = discover([mixed])
    kinds = sorted(t.kind for t in found.tasks)
    assert kinds == ["dicom", "dicom", "nifti", "nifti"]  # two series, chest, broken (named .nii.gz)
    assert sorted(t.n_files for t in found.tasks if t.kind == "dicom") == [3, 5]
    assert any("SR" in note for note in found.listed)
    assert any("2 DICOM series" in note for note in found.listed)
    # Stable ids; a CSV of paths (relative to the CSV) finds the same scans.
    again = discover([mixed])
    assert [t.scan_id for t in found.tasks] == [t.scan_id for t in again.tasks]
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "note"])
        w.writerow(["scans/chest.nii.gz", "a"])
        w.writerow(["scans/patient2", "b"])
        w.writerow(["scans/missing.nii.gz", "c"])
    from_csv = discover([listing])
    ids = {t.scan_id for t in found.tasks}
    assert len(from_csv.tasks) == 4
    assert len(ids & {t.scan_id for t in from_csv.tasks}) == 3
    assert [t.kind for t in from_csv.tasks if t.scan_id not in ids] == ["other"]  # missing: its row says so


def test_mixed_folder_gives_a_row_per_scan_and_masks_equal_to_segment(weights, mixed, tmp_path):
    out = tmp_path / "out"
    reports = []
    result = run([mixed], out, progress=reports.append)
    table = result.table
    assert len(table) == 3 and result.ran == 3 and result.failures == 1
    broken = table[table["path"].str.endswith("broken.nii.gz")].iloc[0]
    assert broken["status"] == "failed" and "broken.nii.gz" in broken["error"] and "gzip" in broken["error"]
    ok = table[table["status"] == "ok"]
    assert sorted(ok["kind"]) == ["dicom", "nifti"]
    assert (ok["version_lungs"] == "t1").all() and (ok["version_infection"] == "t1").all()
    # Progress: scans done, failures, ETA; the last report counts everything.
    last = reports[-1]
    assert (last.done, last.total, last.failures) == (3, 3, 1) and last.eta_s == 0
    assert reports[0].dashboard and reports[0].dashboard.startswith("http")
    # The table on disk (CSV and Parquet) is the table returned.
    assert list(pd.read_csv(out / "cohort.csv")["scan_id"]) == list(table["scan_id"])
    assert pd.read_parquet(out / "cohort.parquet")["status"].tolist() == table["status"].tolist()

    for row in ok.itertuples():
        volume = read_scan(row.path)
        direct = segment(volume, TARGETS, "cpu")
        assert row.series_uid == (volume.series.uid if volume.series else "") or row.kind == "nifti"
        assert row.shape_zyx == "x".join(map(str, volume.shape))
        for target, mask in direct.masks.items():
            written = nib.load(out / row.scan_id / f"{target}.nii.gz")
            reference = nib.load(write_mask(tmp_path / "ref" / row.scan_id / f"{target}.nii.gz", mask,
                                            volume.geometry))
            assert np.array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))
            assert np.allclose(written.affine, reference.affine)
            assert getattr(row, f"{target}_ml") == pytest.approx(sum(direct.volumes_ml[target].values()), abs=1e-3)
        assert row.lung_involvement_pct == pytest.approx(direct.lung_involvement_pct)
        assert (row.caveats if isinstance(row.caveats, str) else "") == ";".join(c.code for c in direct.caveats)
        for lung, fig in (direct.infection_by_lung or {}).items():  # None: one lung label only
            assert getattr(row, f"infection_{lung.replace(' ', '_')}_ml") == pytest.approx(fig["ml"], abs=1e-3)
        assert 0.0 <= row.review_score <= 1.0


def test_interrupted_run_keeps_its_rows_and_resumes(weights, mixed, tmp_path):
    out = tmp_path / "out"
    steps = cohort.run_cohort([mixed], out, TARGETS, workers=1, processes=False)
    report = next(steps)
    while report.row is None or report.row["status"] != "ok":
        report = next(steps)
    steps.close()  # interrupted after the first scan segmented
    first = pd.read_csv(out / "cohort.csv")
    assert len(first) == report.done < 3
    done_ids = set(first.loc[first["status"] == "ok", "scan_id"])
    assert done_ids == {report.row["scan_id"]}

    result = run([mixed], out)  # the failed scan is tried again, the segmented one is skipped
    table = result.table
    assert len(table) == 3
    assert result.ran == 2 and result.skipped == 1
    assert set(table.loc[table["status"] == "ok", "scan_id"]) >= done_ids
    # Everything done: a third run skips the segmented scans and retries only the failed one.
    ok_ids = set(table.loc[table["status"] == "ok", "scan_id"])
    mtimes = {i: (out / i / "lungs.nii.gz").stat().st_mtime_ns for i in ok_ids}
    again = run([mixed], out)
    assert again.ran == 1 and again.skipped == 2
    assert {i: (out / i / "lungs.nii.gz").stat().st_mtime_ns for i in ok_ids} == mtimes

    # A new model version re-runs the scans (its rows name the new version).
    write_tiny_weights(weights, targets=("infection",), version="t2", seed=3)
    newer = run([mixed], out)
    assert newer.ran == 3 and newer.skipped == 0
    assert set(newer.table.loc[newer.table["status"] == "ok", "version_infection"]) == {"t2"}
    # ... and each re-run row says what changed since the run before.
    before = again.table.set_index("scan_id")
    for row in newer.table[newer.table["status"] == "ok"].to_dict("records"):
        old = before.loc[row["scan_id"]]
        assert row["model_key_before"] == old["model_key"] != row["model_key"]
        assert row["infection_ml_before"] == pytest.approx(old["infection_ml"])
        changes = volume_changes(row)
        assert changes["infection_ml"] == pytest.approx(row["infection_ml"] - old["infection_ml"])
        assert changes["lungs_ml"] == pytest.approx(0.0)  # the lungs model did not change
    failed = newer.table[newer.table["status"] != "ok"].iloc[0]
    assert "model_key_before" not in failed or failed["model_key_before"] != failed["model_key_before"]  # NaN


def test_changed_input_reruns_only_that_scan(weights, mixed, tmp_path):
    out = tmp_path / "out"
    run([mixed], out)
    write_nifti(mixed / "chest.nii.gz", make_hu_volume((24, 28, 7)), np.diag([1.5, 1.5, 3.0, 1.0]))
    result = run([mixed], out)
    assert result.ran == 2 and result.skipped == 1  # chest (changed) and the broken file
    chest = result.table[result.table["path"].str.endswith("chest.nii.gz")].iloc[0]
    assert chest["status"] == "ok" and chest["shape_zyx"].startswith("7x")


def test_flip_disagreement_is_zero_for_a_symmetric_answer_and_one_for_a_mirrored_one(weights):
    from napari_ctseg.models.registry import get_card
    from napari_ctseg.io.volume import CTVolume

    volume = read_scan_like(make_hu_volume((24, 28, 6)))
    card = get_card("lungs", "t1")

    class LeftHalf(torch.nn.Module):
        """Class 1 on the left half of the image only: mirrored, the answer moves to the right."""

        def forward(self, x):
            out = torch.zeros((x.shape[0], 3, *x.shape[2:]))
            out[:, 0] = 1.0
            out[:, 1, :, : x.shape[-1] // 2] = 2.0
            return out

    class Everywhere(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros((x.shape[0], 3, *x.shape[2:]))
            out[:, 1] = 1.0
            return out

    mask = np.ones(volume.shape, dtype=np.uint8)
    assert isinstance(volume, CTVolume)
    assert cohort.flip_disagreement(volume, mask, card, Everywhere(), torch.device("cpu")) == 0.0
    assert cohort.flip_disagreement(volume, mask, card, LeftHalf(), torch.device("cpu")) == 1.0


def read_scan_like(hu_ijk):
    from napari_ctseg.io._common import build_volume

    return build_volume(hu_ijk, np.diag([1.5, 1.5, 3.0, 1.0]), name="t", source_path="", source_kind="nifti")


def test_cli_cohort_run_on_a_process_worker_and_report(weights, mixed, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    # The models are named with --weights only: the registry object must reach the worker process
    # (which would otherwise find the bundled weights, without version t1).
    monkeypatch.delenv("CTSEG_WEIGHTS_DIR")
    rc = main(["cohort", "run", str(mixed), "--out", str(out), "--targets", TARGETS, "--workers", "1",
               "--weights", str(weights)])
    captured = capsys.readouterr()
    assert rc == 1  # one scan failed
    assert "3 scans" in captured.out and "failed 1" in captured.out
    assert "Dask dashboard http" in captured.err and "3/3 scans, 1 failed" in captured.err
    table = pd.read_csv(out / "cohort.csv")
    workers = set(table.loc[table["status"] == "ok", "worker"])
    assert len(workers) == 1 and next(iter(workers)).startswith("tcp://")  # a worker process
    assert (table.loc[table["status"] == "ok", "version_lungs"] == "t1").all()

    rc = main(["cohort", "report", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "3 scans: 1 failed, 2 ok" in text
    png = out / "cohort_report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "cohort_summary.csv").set_index("figure")
    ok = table[table["status"] == "ok"]
    assert summary.loc["lungs_ml", "median"] == pytest.approx(ok["lungs_ml"].median())
    assert summary.loc["lung_involvement_pct", "n"] == 2


def test_report_without_a_table_says_so(tmp_path, capsys):
    assert main(["cohort", "report", str(tmp_path)]) == 2
    assert "no cohort table" in capsys.readouterr().err


def test_an_existing_scheduler_is_used_and_left_running(weights, mixed, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        result = run([mixed], tmp_path / "out", scheduler=cluster.scheduler_address, workers=None)
        ok = result.table[result.table["status"] == "ok"]
        assert len(ok) == 2
        assert set(ok["worker"]) == set(cluster.scheduler_info["workers"])  # its worker did the work
        with Client(cluster.scheduler_address) as client:  # still up: the run only closed its client
            assert client.submit(sum, [1, 2]).result() == 3


def test_review_queue_follows_the_score_and_skips_reviewed_and_failed_scans(tmp_path):
    from napari_ctseg.cohort import review as cohort_review

    rows = [{"scan_id": "a", "status": "ok", "review_score": 0.1},
            {"scan_id": "b", "status": "ok", "review_score": 0.7},
            {"scan_id": "c", "status": "failed", "review_score": None, "error": "bad"},
            {"scan_id": "d", "status": "ok", "review_score": 0.4}]
    write_table(tmp_path, rows)
    table = read_table(tmp_path)
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    order = []
    while queue := cohort_review.review_queue(rows, cohort_review.load_reviews(tmp_path)):
        order.append(queue[0])
        cohort_review.mark_reviewed(tmp_path, queue[0])
    assert order == ["b", "d", "a"]
    assert set(cohort_review.load_reviews(tmp_path)) == {"a", "b", "d"}


def test_a_correction_saved_after_the_run_marks_the_scan_reviewed(tmp_path):
    from datetime import datetime, timedelta, timezone

    from napari_ctseg.cohort import review as cohort_review
    from napari_ctseg.editing.corrections import list_corrections, record_correction

    scans = {name: tmp_path / f"{name}.nii.gz" for name in ("a", "b")}
    for p in scans.values():
        p.write_bytes(b"x")
    now = datetime.now(timezone.utc)
    rows = [{"scan_id": n, "status": "ok", "review_score": 0.5, "path": str(p), "ended_at": now.timestamp()}
            for n, p in scans.items()]
    out = tmp_path / "out"
    write_table(out, rows)
    record_correction(scans["a"], tmp_path / "a_lungs.nii.gz", "lungs", "t1", when=now + timedelta(minutes=5))
    record_correction(scans["b"], tmp_path / "b_lungs.nii.gz", "lungs", "t1", when=now - timedelta(days=1))
    assert cohort_review.reviews_from_corrections(out, rows, list_corrections()) == ["a"]  # b's is older
    assert set(cohort_review.load_reviews(out)) == {"a"}
    assert cohort_review.review_queue(rows, cohort_review.load_reviews(out)) == ["b"]


def test_local_workers_start_without_the_nannys_malloc_trim(tmp_path):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers, which halves our speed there."""
    import os

    client, cluster = cohort.start_client(workers=1)
    try:
        env = client.submit(lambda: dict(os.environ), pure=False).result()
    finally:
        client.close()
        cluster.close()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env.get("OMP_NUM_THREADS") == "1"


def test_format_seg_writes_a_seg_beside_each_dicom_scans_masks(weights, mixed, tmp_path):
    """--format seg: <target>.dcm on the DICOM series, read back onto it; the NIfTI scan's row says
    why it has none; the NIfTI masks (which the review reads) are written for both."""
    pytest.importorskip("highdicom")
    from napari_ctseg.io import read_scan
    from napari_ctseg.io.dicom_objects import read_seg

    out = tmp_path / "cohort"
    result = run([mixed], out, seg=True)
    rows = {r["kind"] + ("_ok" if r["status"] == "ok" else ""): r for r in result.table.to_dict("records")}
    dicom, nifti = rows["dicom_ok"], rows["nifti_ok"]
    for target in TARGETS.split(","):
        seg_path = out / dicom["scan_id"] / f"{target}.dcm"
        assert seg_path.is_file() and (out / dicom["scan_id"] / f"{target}.nii.gz").is_file()
        maps = read_seg(seg_path, read_scan(dicom["path"]))
        assert maps and maps[0].segments[0].algorithm.endswith(f"napari-ctseg {target} t1")
        assert not (out / nifti["scan_id"] / f"{target}.dcm").exists()
    assert "no DICOM SEG" in nifti["warnings"] and "no DICOM SEG" not in str(dicom["warnings"])


def test_format_rtstruct_writes_one_structure_set_per_dicom_scan(weights, mixed, tmp_path):
    """--format rtstruct: rtstruct.dcm with every target's ROIs on the DICOM series, as its NIfTI
    masks; the NIfTI scan's row says why it has none."""
    from napari_ctseg.io.dicom_objects import read_rtstruct

    out = tmp_path / "cohort"
    result = run([mixed], out, rtstruct=True)
    rows = {r["kind"] + ("_ok" if r["status"] == "ok" else ""): r for r in result.table.to_dict("records")}
    dicom, nifti = rows["dicom_ok"], rows["nifti_ok"]
    ct = read_scan(dicom["path"])
    maps = read_rtstruct(out / dicom["scan_id"] / "rtstruct.dcm", ct)
    rois = {s.name: m.data == s.value for m in maps for s in m.segments}
    lungs = ct.geometry.to_display(np.asanyarray(nib.load(out / dicom["scan_id"] / "lungs.nii.gz").dataobj))
    assert set(rois) == {"right lung", "left lung", "infection"}
    assert np.array_equal(rois["right lung"], lungs == 1) and np.array_equal(rois["left lung"], lungs == 2)
    assert not (out / nifti["scan_id"] / "rtstruct.dcm").exists()
    assert "no RTSTRUCT" in nifti["warnings"] and "no RTSTRUCT" not in str(dicom["warnings"])
