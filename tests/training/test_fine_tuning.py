"""Fine-tuning on corrected masks: promotion, refusal, cancel, and the registry's user versions."""
import json

import nibabel as nib
import numpy as np
import pytest

from napari_ctseg.errors import ModelError, TrainingError
from napari_ctseg.training.fine_tuning import CorrectionCase, fine_tune
from napari_ctseg.models import registry
from napari_ctseg.models.registry import (
    active_version,
    list_versions,
    remove_version,
    set_active_version,
    sha256_file,
    user_weights_dir,
    version_source,
)
from napari_ctseg.cli import main
from napari_ctseg.training import run_to_end

FAST = {"epochs": 3, "steps_per_epoch": 8, "batch_size": 4, "lr": 3e-3, "anchor_weight": 0.0,
        "augmentation": {}}


def write_corrected_case(folder, seed=0, n_slices=16, liver_hu=170, lesion_hu=None):
    """A scan with a bright 'liver' on slices 2..13 and its (expert = corrected) mask, RAS affine.

    ``lesion_hu``: a dark lesion inside the liver, part of the liver mask (as in expert masks).
    """
    rng = np.random.default_rng(seed)
    n = 40
    yy, xx = np.mgrid[:n, :n]
    body = (yy - 20) ** 2 + (xx - 20) ** 2 <= 17 ** 2
    liver = (yy - 18) ** 2 + (xx - 12) ** 2 <= 7 ** 2
    lesion = (yy - 18) ** 2 + (xx - 12) ** 2 <= 4 ** 2
    ct = np.full((n, n, n_slices), -1000, np.int16)
    mask = np.zeros((n, n, n_slices), np.uint8)
    for k in range(n_slices):
        ct[..., k][body.T] = 30
        if 2 <= k <= 13:
            ct[..., k][liver.T] = liver_hu
            if lesion_hu is not None:
                ct[..., k][lesion.T] = lesion_hu
            mask[..., k][liver.T] = 1
    ct = (ct + rng.normal(0, 8, ct.shape)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "ct_liver_corrected.nii.gz")
    return folder / "ct.nii.gz", folder / "ct_liver_corrected.nii.gz"


def display_z(source_ks, n_slices=16):
    # The display z axis runs from superior to inferior: source k maps to n - 1 - k.
    return [n_slices - 1 - k for k in source_ks]


@pytest.fixture(scope="module")
def base_model_root(tmp_path_factory):
    """A tiny liver model 'b1', trained on bright livers without lesions (about a second)."""
    from training.test_training import TINY

    from napari_ctseg.training import train

    tmp = tmp_path_factory.mktemp("base")
    for name, seed in (("a", 1), ("b", 2)):
        write_corrected_case(tmp / "data" / name, seed=seed)
        (tmp / "data" / name / "ct_liver_corrected.nii.gz").rename(tmp / "data" / name / "liver.nii.gz")
    run_to_end(train("liver", tmp / "data", tmp / "weights" / "liver" / "b1", epochs=4,
                     split={"train": ["a"], "validation": ["b"]}, config=TINY))
    return tmp


@pytest.fixture
def tiny_weights(base_model_root, tmp_path, monkeypatch):
    """The trained tiny base as the only model; the bundled weights are hidden."""
    import shutil

    root = tmp_path / "weights"
    shutil.copytree(base_model_root / "weights", root)
    monkeypatch.setattr("napari_ctseg.models.registry.bundled_weights_dir", lambda: tmp_path / "no_bundled")
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(root))
    return root


@pytest.fixture
def case(tmp_path):
    """A scan whose livers hold dark lesions, which the base leaves out and the correction includes."""
    return write_corrected_case(tmp_path / "scan", seed=3, lesion_hu=40)


def bundled_digests():
    root = registry.bundled_weights_dir()
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_fine_tune_learns_the_correction_and_is_promoted(tiny_weights, case, private_user_data):
    scan, mask = case
    corr = CorrectionCase(str(scan), str(mask), display_z(range(2, 10)))  # slices 10..13 left as they were
    reports = list(fine_tune("liver", [corr], config=FAST))
    kinds = [r.kind for r in reports]
    assert kinds[0] == "prepare" and "start" in kinds and kinds[-1] == "done"
    assert kinds.count("step") == 3 * 8 and kinds.count("epoch") == 3
    # enough for a generic progress bar: steps done of the whole run, and words, for every report
    assert all(r.message for r in reports) and {r.total for r in reports} == {3 * 8}
    assert [r.done for r in reports] == sorted(r.done for r in reports) and reports[-1].done == 3 * 8
    assert [r.done for r in reports if r.kind == "epoch"] == [8, 16, 24]
    done = reports[-1]
    card = done.card
    ft = card.extra["fine_tune"]
    assert card.version == "b1-ft1" and card.training["base"] == "b1"
    assert ft["after"]["corrections"] > ft["before"]["corrections"] + 0.05, ft
    assert done.promoted and card.extra["status"] == "promoted"
    assert active_version("liver") == "b1-ft1"
    # the new version lives in the user's folder, the base is untouched
    assert card.path == user_weights_dir() / "liver" / "b1-ft1"
    assert version_source(card) == "fine-tuned"
    assert (tiny_weights / "liver" / "b1" / "model.pt").is_file()
    held = card.training["corrections"][0]["held_aside_slices"]
    assert held == sorted(display_z([2, 3]))  # the last quarter of the changed slices in display order
    assert ft["validation_on"].startswith("unchanged slices")
    assert not list((user_weights_dir() / "liver").glob(".*"))  # no partial folder left


def test_fine_tune_not_better_is_kept_as_candidate(tiny_weights, case):
    scan, mask = case
    corr = CorrectionCase(str(scan), str(mask), display_z(range(2, 10)))
    card = run_to_end(fine_tune("liver", [corr], config={**FAST, "lr": 0.0, "epochs": 1}))
    ft = card.extra["fine_tune"]
    assert card.extra["status"] == "candidate" and not ft["promoted"]
    assert "not better than the base" in ft["reason"]
    assert active_version("liver") == "b1"  # a candidate never becomes active by itself
    assert [c.version for c in list_versions("liver")] == ["b1", "b1-ft1"]
    # the user can still choose it, and roll back
    assert set_active_version("liver", "b1-ft1") == "b1-ft1"
    assert active_version("liver") == "b1-ft1"
    assert set_active_version("liver", "b1") == "b1"


def test_worse_on_validation_is_refused(tiny_weights, case):
    scan, mask = case
    corr = CorrectionCase(str(scan), str(mask), display_z(range(2, 10)))
    # Any loss on the validation slices is too much: the rule must then refuse.
    card = run_to_end(fine_tune("liver", [corr], config={**FAST, "max_validation_drop": -1.0}))
    ft = card.extra["fine_tune"]
    assert ft["after"]["corrections"] > ft["before"]["corrections"]
    assert not ft["promoted"] and "worse than the base on the validation" in ft["reason"]
    assert active_version("liver") == "b1"


def test_cancel_mid_run_leaves_nothing(tiny_weights, case):
    scan, mask = case
    corr = CorrectionCase(str(scan), str(mask), display_z(range(2, 10)))
    gen = fine_tune("liver", [corr], config={**FAST, "epochs": 3})
    epochs = 0
    for report in gen:
        epochs += report.kind == "epoch"
        if report.kind == "step" and epochs == 1 and report.step == 3:
            gen.close()  # Cancel, after a checkpoint was written
            break
    assert active_version("liver") == "b1"
    assert [c.version for c in list_versions("liver")] == ["b1"]
    folder = user_weights_dir() / "liver"
    assert not folder.exists() or not any(folder.iterdir())


def test_replay_and_base_validation_cases(tiny_weights, tmp_path):
    data = tmp_path / "data"
    write_corrected_case(data / "case_a", seed=1)
    write_corrected_case(data / "case_b", seed=2)
    for c in ("case_a", "case_b"):
        (data / c / "ct_liver_corrected.nii.gz").rename(data / c / "liver.nii.gz")
    card_path = tiny_weights / "liver" / "b1" / "card.json"
    card = json.loads(card_path.read_text())
    card["training"] = {"split": {"train": ["case_a"], "validation": ["case_b"]}}
    card_path.write_text(json.dumps(card))
    scan, mask = write_corrected_case(tmp_path / "scan", seed=3, lesion_hu=40)
    out = run_to_end(fine_tune("liver", [CorrectionCase(str(scan), str(mask))], data_dir=data, config=FAST))
    assert out.training["forgetting_guard"].startswith("replay")
    assert list(out.validation["cases"]) == ["case_b"]
    changed = out.training["corrections"][0]["changed_slices"]
    # where the base disagrees with the mask: it leaves out the lesion on every liver slice
    assert set(display_z(range(2, 14))) <= set(changed) and not {0, 15} & set(changed)
    # a fine-tune of a fine-tuned version still replays and validates on the original data
    again = run_to_end(fine_tune("liver", [CorrectionCase(str(scan), str(mask))], base_version=out.version,
                                 data_dir=data, config={**FAST, "epochs": 1}))
    assert again.version == "b1-ft2" and again.training["base"] == out.version
    assert list(again.validation["cases"]) == ["case_b"]
    assert again.training["base_training"]["split"]["train"] == ["case_a"]
    # the validation case was never a correction, and a correction scan is never validated on
    corr_b = CorrectionCase(str(data / "case_b" / "ct.nii.gz"), str(data / "case_b" / "liver.nii.gz"))
    third = run_to_end(fine_tune("liver", [corr_b], data_dir=data, config={**FAST, "epochs": 1}))
    assert "case_b" not in (third.validation["cases"] or {})
    assert third.extra["status"] == "candidate"


def test_whole_expert_mask_without_data_runs_as_a_candidate(tiny_weights, tmp_path, private_user_data, capsys):
    """An expert mask of a whole scan and no data folder: held-aside blocks spread along the scan,
    L2-SP, kept as a candidate, and one line says how to make it active."""
    scan, mask = write_corrected_case(tmp_path / "scan", seed=3, lesion_hu=40, n_slices=24)
    assert main(["finetune", "--target", "liver", "--scans", str(scan), "--masks", str(mask),
                 "--epochs", "1", "--steps-per-epoch", "4", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "kept as a candidate" in out and "ctseg models use liver b1-ft1" in out
    card = registry.get_card("liver", "b1-ft1")
    assert card.extra["status"] == "candidate" and registry.active_version("liver") == "b1"
    assert card.training["forgetting_guard"].startswith("L2-SP")
    held = card.training["corrections"][0]["held_aside_slices"]
    changed = card.training["corrections"][0]["changed_slices"]
    # held aside in blocks spread along the labelled slices: some in each third, not only the end
    lo, hi = min(changed), max(changed)
    thirds = {min(2, (z - lo) * 3 // (hi - lo + 1)) for z in held}
    assert thirds == {0, 1, 2}, (held, changed)
    assert card.validation["what"].startswith("none")


def test_bad_input_is_refused_before_any_work(tiny_weights, case, tmp_path):
    scan, mask = case
    with pytest.raises(TrainingError, match="no corrections"):
        next(fine_tune("liver", []))
    with pytest.raises(TrainingError, match="missing"):
        list(fine_tune("liver", [CorrectionCase(str(scan), str(tmp_path / "gone.nii.gz"))], config=FAST))
    with pytest.raises(TrainingError, match="no liver model version"):
        next(fine_tune("liver", [CorrectionCase(str(scan), str(mask))], base_version="v9"))
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 15), np.uint8), np.diag([0.8, 0.8, 2.5, 1])), other)
    with pytest.raises(TrainingError, match="shape"):
        list(fine_tune("liver", [CorrectionCase(str(scan), str(other))], config=FAST))
    with pytest.raises(TrainingError, match="learning rate"):
        next(fine_tune("liver", [CorrectionCase(str(scan), str(mask))], config={"lr": float("nan")}))
    with pytest.raises(TrainingError, match="unknown fine-tuning setting"):
        next(fine_tune("liver", [CorrectionCase(str(scan), str(mask))], config={"epochz": 2}))
    assert not (user_weights_dir() / "liver").exists()


def test_bundled_versions_cannot_be_removed_and_stay_byte_identical(case):
    before = bundled_digests()
    bundled = [c.version for c in list_versions("liver")]
    with pytest.raises(ModelError, match="bundled"):
        remove_version("liver", "v1")
    assert version_source(registry.get_card("liver", "v1")) == "bundled"
    scan, mask = case
    corr = CorrectionCase(str(scan), str(mask), display_z(range(2, 10)))
    base = registry.active_version("liver")  # the bundled default
    card = run_to_end(fine_tune("liver", [corr], config={**FAST, "epochs": 1, "steps_per_epoch": 2}))
    assert card.version == f"{base}-ft1" and card.path.parent.parent == user_weights_dir()
    assert bundled_digests() == before
    set_active_version("liver", card.version)
    assert remove_version("liver", card.version) == base  # the active one removed: back to the default
    assert [c.version for c in list_versions("liver")] == bundled
    assert bundled_digests() == before


def test_cli_finetune_and_models(tiny_weights, case, capsys):
    from napari_ctseg.cli import main

    scan, mask = case
    changed = ",".join(map(str, display_z(range(2, 10))))
    rc = main(["finetune", "--target", "liver", "--scans", str(scan), "--masks", str(mask),
               "--changed-slices", changed, "--epochs", "3", "--steps-per-epoch", "8", "--batch-size", "4",
               "--lr", "3e-3", "--device", "cpu", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == "b1-ft1" and out["promoted"] is True
    assert out["after"]["corrections"] > out["before"]["corrections"]
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {tuple(line[2:].split()[:3]): line for line in lines if line[2:].startswith("liver")}
    assert rows[("liver", "b1-ft1", "fine-tuned")].startswith("*")
    assert not rows[("liver", "b1", "folder")].startswith("*")
    assert main(["models", "use", "liver", "b1"]) == 0 and active_version("liver") == "b1"
    assert main(["models", "remove", "liver", "b1"]) == 2  # not a fine-tuned version
    assert "cannot be removed" in capsys.readouterr().err
    assert main(["models", "remove", "liver", "b1-ft1"]) == 0
    assert [c.version for c in list_versions("liver")] == ["b1"]
    assert main(["models", "use", "liver", "v7"]) == 2
    assert main(["finetune", "--target", "liver", "--scans", str(scan), "--masks", str(mask), str(mask)]) == 2
    assert "one corrected mask per scan" in capsys.readouterr().err
