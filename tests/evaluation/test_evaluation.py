"""Evaluation on synthetic data with tiny untrained models: files written, figures recomputed."""
import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from synthetic import make_hu_volume, write_nifti, write_tiny_weights

from napari_ctseg.evaluation import metrics
from napari_ctseg.cli import main
from napari_ctseg.evaluation.evaluate import (
    EvaluationError,
    detect_layout,
    evaluate,
    evaluate_steps,
    load_split,
    resolve_cases,
    score_case,
)

SHAPE = (40, 36, 11)
# The tiny models' version, named every time: bundled weights (v1, ...) sort after it.
TINY = "t1"
AFFINE = np.array([[0.8, 0, 0, -14.0], [0, 0.8, 0, 9.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
# RAS: the display grid (I, P, L) is this array permuted and flipped along every axis


@pytest.fixture
def tiny_weights(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    write_tiny_weights(root)
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(root))
    return root


def _ellipsoid(shape, centre, radii):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) < 1


@pytest.fixture
def volume_data(tmp_path):
    """Two cases: ``a`` with an expert liver and lung mask, ``b`` with none."""
    data = tmp_path / "volumes"
    for i, name in enumerate(("a", "b")):
        (data / name).mkdir(parents=True)
        write_nifti(data / name / "ct.nii.gz", make_hu_volume(SHAPE, seed=i), AFFINE)
    liver = _ellipsoid(SHAPE, (12, 22, 3), (9, 8, 3)).astype(np.uint8)
    write_nifti(data / "a" / "liver.nii.gz", liver, AFFINE)
    lungs = np.zeros(SHAPE, np.uint8)
    lungs[_ellipsoid(SHAPE, (8, 14, 3), (6, 9, 3))] = 1
    lungs[_ellipsoid(SHAPE, (31, 14, 3), (6, 9, 3))] = 2
    write_nifti(data / "a" / "lungs.nii.gz", lungs, AFFINE)
    (data / "notes").mkdir()  # a folder without ct.nii.gz is not a case
    return data


@pytest.fixture
def slice_data(tmp_path):
    """Three 8-bit slices (one RGB JPG, one PNG, one without a mask), 0/255 masks."""
    data = tmp_path / "slices"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    sizes = {"1": (37, 50), "2": (44, 41), "3": (30, 30)}
    for name, (h, w) in sizes.items():
        img = (rng.random((h, w)) * 255).astype(np.uint8)
        img[h // 4:h // 2, w // 4:w // 2] = 220
        if name == "1":
            Image.fromarray(np.stack([img] * 3, -1)).save(data / "images" / f"{name}.jpg")
        else:
            Image.fromarray(img).save(data / "images" / f"{name}.png")
        if name != "3":
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4:h // 2, w // 4:w // 2] = 255
            Image.fromarray(mask).save(data / "masks" / f"{name}.png")
    return data


def test_volume_layout_writes_predictions_on_the_scan_geometry(tiny_weights, volume_data, tmp_path):
    out = tmp_path / "pred"
    progress = []
    report = evaluate("liver", volume_data, out, device="cpu", progress=progress.append, version=TINY)
    assert report.layout == "volumes" and report.version == "t1"
    assert [c.name for c in report.cases] == ["a", "b"]
    assert progress and progress[-1].done == progress[-1].total
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    for case in report.cases:
        img = nib.load(out / f"{case.name}.nii.gz")
        assert img.shape == SHAPE
        assert np.allclose(img.affine, AFFINE)
        assert case.prediction == str(out / f"{case.name}.nii.gz")


def test_volume_figures_equal_metrics_on_the_written_files(tiny_weights, volume_data, tmp_path):
    out = tmp_path / "pred"
    report = evaluate("liver", volume_data, out, device="cpu", version=TINY)
    a = report.cases[0]
    pred = np.asarray(nib.load(out / "a.nii.gz").dataobj) > 0
    ref = np.asarray(nib.load(volume_data / "a" / "liver.nii.gz").dataobj) > 0
    spacing = (0.8, 0.8, 2.0)
    assert a.has_ground_truth and a.distance_unit == "mm"
    assert a.dice == pytest.approx(metrics.dice(pred, ref))
    assert a.iou == pytest.approx(metrics.iou(pred, ref))
    hd = metrics.hd95(pred, ref, spacing)
    assert (math.isnan(a.hd95) and math.isnan(hd)) or a.hd95 == pytest.approx(hd)
    assert a.reference == pytest.approx(metrics.volume_ml(ref, spacing))
    m = report.mean()
    assert m["n"] == 1 and m["dice"] == pytest.approx(a.dice)


def test_case_without_ground_truth_is_predicted_and_reported(tiny_weights, volume_data, tmp_path):
    report = evaluate("liver", volume_data, tmp_path / "pred", device="cpu", cases=["b"], version=TINY)
    (b,) = report.cases
    assert not b.has_ground_truth and b.note == "no ground truth"
    assert b.dice is None and b.hd95 is None
    assert (tmp_path / "pred" / "b.nii.gz").is_file()
    assert report.mean()["n"] == 0
    assert "no ground truth" in report.table()
    assert report.to_dict()["cases"][0]["dice"] is None


def test_a_perfect_prediction_scores_one(tiny_weights, volume_data, tmp_path, monkeypatch):
    """A network that returns the expert mask (on the display grid) must score Dice 1 and HD95 0.

    The scan is RAS, so the display grid is a flipped, permuted view of the source: a prediction
    compared without mapping it back would not line up with the expert mask.
    """
    import napari_ctseg.segmentation.inference as inference
    from napari_ctseg.io import read_nifti

    expert = np.asarray(read_nifti(volume_data / "a" / "lungs.nii.gz").hu).astype(np.uint8)
    monkeypatch.setattr(inference, "predict_slices", lambda model, hu, z, *args, **kwargs: expert[z])
    report = evaluate("lungs", volume_data, tmp_path / "pred", device="cpu", cases="a", version=TINY)
    (a,) = report.cases
    assert a.dice == 1.0 and a.iou == 1.0 and a.hd95 == 0.0 and a.asd == 0.0
    assert a.labels["right lung"]["dice"] == 1.0 and a.labels["left lung"]["dice"] == 1.0
    written = np.asarray(nib.load(tmp_path / "pred" / "a.nii.gz").dataobj)
    assert np.array_equal(written, np.asarray(nib.load(volume_data / "a" / "lungs.nii.gz").dataobj))


def test_lungs_are_scored_together_and_per_lung(tiny_weights, volume_data, tmp_path):
    report = evaluate("lungs", volume_data, tmp_path / "pred", device="cpu", cases="a", version=TINY)
    (a,) = report.cases
    pred = np.asarray(nib.load(tmp_path / "pred" / "a.nii.gz").dataobj)
    ref = np.asarray(nib.load(volume_data / "a" / "lungs.nii.gz").dataobj)
    assert a.dice == pytest.approx(metrics.dice(pred > 0, ref > 0))
    assert set(a.labels) == {"right lung", "left lung"}
    assert a.labels["left lung"]["dice"] == pytest.approx(metrics.dice(pred == 2, ref == 2))
    assert "right lung" in report.table() and "labels" in report.mean()


def test_score_case_known_values():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[:, :, :5] = 1
    ref[:, :, 5:] = 2
    pred = ref.copy()
    pred[:, :, 4] = 2  # one column of the right lung called left
    overall, per_label, note = score_case("lungs", pred, ref, (1.0, 1.0, 1.0))
    assert overall["dice"] == 1.0 and note == ""
    assert per_label["right lung"]["dice"] == pytest.approx(2 * 160 / (160 + 200))
    assert per_label["left lung"]["hd95"] == pytest.approx(1.0)
    _, per_label, note = score_case("lungs", pred, (ref > 0).astype(np.uint8))
    assert per_label == {} and "one structure" in note


def test_slice_layout(tiny_weights, slice_data, tmp_path):
    out = tmp_path / "pred"
    report = evaluate("infection", slice_data, out, device="cpu", version=TINY)
    assert report.layout == "slices" and [c.name for c in report.cases] == ["1", "2", "3"]
    for case in report.cases:
        image = Image.open(next((slice_data / "images").glob(f"{case.name}.*")))
        written = Image.open(out / f"{case.name}.png")
        assert written.size == image.size and written.mode == "L"
        assert set(np.unique(np.asarray(written)).tolist()) <= {0, 255}
    one = report.cases[0]
    pred = np.asarray(Image.open(out / "1.png")) == 255
    ref = np.asarray(Image.open(slice_data / "masks" / "1.png")) == 255
    assert one.dice == pytest.approx(metrics.dice(pred, ref))
    assert one.iou == pytest.approx(metrics.iou(pred, ref))
    assert one.distance_unit == "px" and one.reference == ref.sum()
    three = report.cases[2]
    assert not three.has_ground_truth and three.note == "no ground truth" and three.dice is None
    assert report.mean()["n"] == 2


def test_split_names_with_folder_prefix(tiny_weights, slice_data, tmp_path):
    data, names = resolve_cases(slice_data, ["slices/2", "slices/1"])
    assert data == slice_data and names == ["2", "1"]
    data, names = resolve_cases(slice_data.parent, ["slices/2"])
    assert data == slice_data and names == ["2"]
    report = evaluate("infection", slice_data.parent, tmp_path / "pred", cases=["slices/2"], version=TINY)
    assert [c.name for c in report.cases] == ["2"]
    assert "covid_semiseg_train/1" in load_split("infection", "validation")


def test_bad_input(tiny_weights, volume_data, slice_data, tmp_path):
    with pytest.raises(EvaluationError, match="no such folder"):
        evaluate("liver", tmp_path / "missing", tmp_path / "pred")
    with pytest.raises(EvaluationError, match="no case zzz"):
        evaluate("liver", volume_data, tmp_path / "pred", cases=["zzz"], version=TINY)
    with pytest.raises(EvaluationError, match="only the infection"):
        evaluate("liver", slice_data, tmp_path / "pred", version=TINY)
    with pytest.raises(EvaluationError, match="among the evaluation data"):
        evaluate("infection", slice_data, slice_data / "masks", version=TINY)
    with pytest.raises(EvaluationError, match="among the evaluation data"):
        evaluate("liver", volume_data, volume_data / "a", cases=["a"], version=TINY)
    with pytest.raises(Exception, match="no liver model version 'v9'"):
        evaluate("liver", volume_data, tmp_path / "pred", version="v9")
    assert detect_layout(volume_data) == "volumes" and detect_layout(slice_data) == "slices"


def test_mask_off_the_scan_grid_is_refused(tiny_weights, volume_data, tmp_path):
    liver = np.zeros(SHAPE, np.uint8)
    write_nifti(volume_data / "a" / "liver.nii.gz", liver, AFFINE @ np.diag([1, 1, 1.25, 1]))
    with pytest.raises(EvaluationError, match="affine differs"):
        evaluate("liver", volume_data, tmp_path / "pred", cases=["a"], version=TINY)
    write_nifti(volume_data / "a" / "liver.nii.gz", liver[:, :, :5], AFFINE)
    with pytest.raises(EvaluationError, match="shape 40x36x5 differs"):
        evaluate("liver", volume_data, tmp_path / "pred", cases=["a"], version=TINY)
    write_nifti(volume_data / "a" / "liver.nii.gz", liver + 3, AFFINE)
    assert evaluate("liver", volume_data, tmp_path / "pred", cases=["a"], version=TINY).cases[0].reference > 0
    liver[0, 0, 0], liver[1, 1, 1] = 1, 2
    write_nifti(volume_data / "a" / "liver.nii.gz", liver, AFFINE)
    with pytest.raises(EvaluationError, match=r"labels \[1, 2\] are not liver labels"):
        evaluate("liver", volume_data, tmp_path / "pred", cases=["a"], version=TINY)


def test_generator_yields_progress(tiny_weights, slice_data, tmp_path):
    steps = evaluate_steps("infection", slice_data, tmp_path / "pred", version=TINY)
    first = next(steps)
    assert first.total == 3
    steps.close()


def test_cli_evaluate(tiny_weights, volume_data, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["evaluate", "--target", "liver", "--data", str(volume_data), "--predictions-out", str(out),
                 "--device", "cpu", "--model", TINY]) == 0
    text = capsys.readouterr().out
    assert "mean (1)" in text and "no ground truth" in text and "HD95 mm" in text
    assert main(["evaluate", "--target", "liver", "--data", str(volume_data), "--predictions-out", str(out),
                 "--cases", "a", "--model", TINY, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["version"] == "t1" and [c["name"] for c in d["cases"]] == ["a"]
    assert d["mean"]["n"] == 1


def test_cli_bad_input_one_line_nonzero_exit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_ctseg.cli", "evaluate", "--target", "liver",
                           "--data", str(tmp_path / "nowhere"), "--predictions-out", str(tmp_path / "p")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    assert main(["evaluate", "--target", "liver", "--data", str(tmp_path), "--predictions-out",
                 str(tmp_path / "p"), "--cases", "a", "--split", "validation"]) == 2
