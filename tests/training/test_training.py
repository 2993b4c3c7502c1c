"""The training loop on tiny synthetic cases: it learns, writes a checked model, honours the rules."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_ctseg.cli import build_parser, main
from napari_ctseg.errors import TrainingError
from napari_ctseg.models.registry import load_model, sha256_file
from napari_ctseg.training import (
    TrainingReport,
    augment,
    default_config,
    dice_ce_loss,
    load_splits,
    make_infection_split,
    run_to_end,
    train,
)

TINY = {
    "architecture": {"base": 8, "depth": 2, "max_channels": 16},
    "preprocessing": {"size": [32, 32], "crop": "body"},
    "stages": [],  # one network (the coarse-to-fine liver v2 has its own test)
    "organ_lesions": {"p_lesion": 0.0},
    "ema_decay": 0.0,  # a few dozen steps: the plain weights (the average has its own test)
    "bn_recalibration_batches": 0,
    "steps_per_epoch": 6,
    "batch_size": 4,
    "lr": 1e-2,
    "warmup_fraction": 0.0,
    "augmentation": {"rotate_deg": 0.0, "scale": [1.0, 1.0], "translate": 0.0, "noise": 0.0,
                     "brightness": 0.0, "contrast": 0.0},
}


def write_case(folder, seed):
    """A 6-slice 'abdomen': a water body with a brighter 'liver' on the patient's right."""
    rng = np.random.default_rng(seed)
    z, n = 6, 40
    yy, xx = np.mgrid[:n, :n]
    body = (yy - 20) ** 2 + (xx - 20) ** 2 <= 17 ** 2
    liver = (yy - 18) ** 2 + (xx - 12) ** 2 <= 6 ** 2
    ct = np.full((n, n, z), -1000, np.int16)  # RAS voxel order (x, y, z)
    mask = np.zeros((n, n, z), np.uint8)
    for k in range(1, z - 1):
        ct[..., k][body.T] = 30
        ct[..., k][liver.T] = 160
        mask[..., k][liver.T] = 1
    ct = (ct + rng.normal(0, 10, ct.shape)).astype(np.int16)
    folder.mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "liver.nii.gz")


@pytest.fixture
def data(tmp_path):
    write_case(tmp_path / "data" / "case_a", 0)
    write_case(tmp_path / "data" / "case_b", 1)
    return tmp_path / "data"


SPLIT = {"train": ["case_a"], "validation": ["case_b"]}


def test_loop_learns_and_writes_a_checked_model(data, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "weights" / "liver" / "v9"
    reports = list(train("liver", data, out, epochs=4, seed=3, split=SPLIT, config=TINY))
    assert all(isinstance(r, TrainingReport) for r in reports)
    kinds = [r.kind for r in reports]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 4
    losses = [r.loss for r in reports if r.kind == "step"]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    epochs = [r for r in reports if r.kind == "epoch"]
    assert all(r.val_dice is not None and "case_b" in r.val_cases for r in epochs)
    assert reports[-1].fraction == 1.0
    assert all(r.message for r in reports) and {r.total for r in reports} == {24}
    assert [r.done for r in reports] == sorted(r.done for r in reports) and reports[-1].done == 24

    card = reports[-1].card
    stored = json.loads((out / "card.json").read_text())
    assert stored["sha256"] == sha256_file(out / "model.pt") == card.sha256
    assert stored["version"] == "v9" and stored["labels"] == {"liver": 1}
    assert stored["training"]["split"] == SPLIT and stored["training"]["seed"] == 3
    assert stored["training"]["device"] == "cpu" and stored["training"]["epochs"] == 4
    assert stored["training"]["best_epoch"] == max(epochs, key=lambda r: r.val_dice).epoch
    case = stored["validation"]["cases"]["case_b"]
    assert set(case["labels"]["liver"]) >= {"dice", "iou", "hd95_mm", "asd_mm", "volume_ml"}
    assert stored["validation"]["mean_dice"] == pytest.approx(case["dice"])
    assert not list(out.glob(".*tmp"))  # no temporary files left

    model, loaded = load_model("liver", roots=[tmp_path / "weights"])
    assert loaded.version == "v9" and not model.training


def test_same_seed_same_losses(data, tmp_path):
    torch.set_num_threads(1)
    runs = []
    for name in ("a", "b"):
        gen = train("liver", data, tmp_path / name, epochs=1, seed=5, split=SPLIT,
                    config={**TINY, "steps_per_epoch": 3})
        runs.append([r.loss for r in gen if r.kind == "step"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-4)


def test_never_overwrites_and_checks_its_input(data, tmp_path):
    out = tmp_path / "w" / "v1"
    list(train("liver", data, out, epochs=1, split=SPLIT, config={**TINY, "steps_per_epoch": 1}))
    with pytest.raises(TrainingError, match="already holds a model"):
        next(train("liver", data, out, epochs=1, split=SPLIT, config=TINY))
    with pytest.raises(TrainingError, match="unknown target"):
        next(train("kidney", data, tmp_path / "x", split=SPLIT))
    with pytest.raises(TrainingError, match="both in training and validation"):
        next(train("liver", data, tmp_path / "x", split={"train": ["case_a"], "validation": ["case_a"]}))
    with pytest.raises(TrainingError, match="missing"):
        list(train("liver", data, tmp_path / "x", split={"train": ["nope"], "validation": ["case_b"]},
                   config=TINY))
    with pytest.raises(TrainingError, match="unknown training setting"):
        next(train("liver", data, tmp_path / "x", split=SPLIT, config={"epochz": 3}))


def test_cancel_keeps_the_best_checkpoint_so_far(data, tmp_path):
    out = tmp_path / "liver" / "v2"
    gen = train("liver", data, out, epochs=5, split=SPLIT, config={**TINY, "steps_per_epoch": 2})
    for r in gen:
        if r.kind == "epoch":
            break
    gen.close()
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["stopped_early"] is True and card["training"]["epochs_run"] == 1
    assert card["sha256"] == sha256_file(out / "model.pt")
    assert not (out.parent / ".v2.partial").exists()


def test_cancel_before_any_validation_writes_nothing(data, tmp_path):
    out = tmp_path / "liver" / "v3"
    gen = train("liver", data, out, epochs=2, split=SPLIT, config={**TINY, "steps_per_epoch": 2})
    for r in gen:
        if r.kind == "step":
            break
    gen.close()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_no_left_right_flips_for_organs():
    for target in ("lungs", "liver"):
        assert not default_config(target).augmentation.get("dihedral")
    assert default_config("infection").augmentation["dihedral"]


def test_augment_moves_image_and_labels_together():
    gen = torch.Generator().manual_seed(0)
    y = torch.zeros(6, 32, 32, dtype=torch.long)
    y[:, 4:12, 6:20] = 1
    x = y[:, None].float().repeat(1, 3, 1, 1)
    aug = {"rotate_deg": 30.0, "scale": [0.8, 1.2], "translate": 0.1, "dihedral": True}
    xa, ya = augment(x, y, aug, 0.0, gen)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    agree = ((xa[:, 1] > 0.5).long() == ya).float().mean()
    assert agree > 0.97


def test_loss_is_small_for_a_perfect_prediction():
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, 2:5, 2:5] = 1
    good = torch.nn.functional.one_hot(y, 2).permute(0, 3, 1, 2).float() * 20 - 10
    assert dice_ce_loss(good, y) < 0.05
    assert dice_ce_loss(-good, y) > 1.0


def test_infection_split_is_fixed_and_grouped():
    ids = [str(i) for i in range(50)]
    groups = {"16": "g", "17": "g"}
    a = make_infection_split(ids, 10, seed=0, groups=groups)
    assert a == make_infection_split(ids, 10, seed=0, groups=groups)
    assert len(a["train"]) == 40 and len(a["validation"]) == 10
    assert not set(a["train"]) & set(a["validation"])
    assert ("16" in a["validation"]) == ("17" in a["validation"])


def test_shipped_splits():
    splits = load_splits()
    assert splits["lungs"]["train"] == ["liver_ircad07"] and splits["lungs"]["validation"] == ["liver_ircad01"]
    assert splits["liver"]["train"] == ["liver_ircad01", "liver_ircad07"]
    assert splits["liver"]["validation"][0] == "liver_chaos03"
    inf = splits["infection"]
    assert len(inf["train"]) == 40 and len(inf["validation"]) == 10 and "seed" in inf
    assert not set(inf["train"]) & set(inf["validation"])


def test_cli_train(data, tmp_path, capsys):
    args = build_parser().parse_args(["train", "--target", "lungs", "--data", "d", "--out", "o"])
    assert args.epochs is None and args.device == "cpu" and args.seed == 0
    assert main(["train", "--target", "liver", "--data", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no such data folder" in capsys.readouterr().err
    assert main(["train", "--target", "liver", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--device", "cuda:7"]) == 2 or torch.cuda.is_available()


def test_silver_lung_labels_by_hand():
    from napari_ctseg.training import silver_lung_labels

    hu = np.full((3, 60, 60), -1000, np.int16)  # outside air
    hu[:, 5:55, 5:55] = 40  # body
    hu[:, 15:45, 10:25] = -850  # patient's right lung (small x)
    hu[:, 15:45, 32:50] = -850  # left lung
    hu[:, 20:22, 15:17] = 50  # a vessel: a small hole, filled
    hu[:, 25:40, 36:46] = 30  # a big island (a dome under the lung base): not filled
    hu[:, 50:52, 28:30] = -900  # a little bowel gas: not lung
    labels = silver_lung_labels(hu, (2.0, 1.0, 1.0), max_hole_mm2=50)
    assert labels[1, 30, 15] == 1 and labels[1, 30, 40] == 0 and labels[1, 16, 40] == 2
    assert labels[1, 21, 16] == 1  # vessel filled
    assert labels[1, 51, 29] == 0 and labels[1, 0, 0] == 0
    assert set(np.unique(labels).tolist()) == {0, 1, 2}


def _write_host(folder, seed):
    """A 'chest' without infection: a body with two lungs, and its expert lung mask."""
    rng = np.random.default_rng(seed)
    n, z = 40, 8
    ct = np.full((n, n, z), -1000, np.int16)
    lungs = np.zeros((n, n, z), np.uint8)
    yy, xx = np.mgrid[:n, :n]
    body = (yy - 20) ** 2 + (xx - 20) ** 2 <= 18 ** 2
    for k in range(z):
        ct[..., k][body.T] = 30
        ct[8:18, 10:30, k] = -850
        ct[22:32, 10:30, k] = -850
        lungs[8:18, 10:30, k] = 1
        lungs[22:32, 10:30, k] = 2
    ct = (ct + rng.normal(0, 10, ct.shape)).astype(np.int16)
    folder.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(lungs, affine), folder / "lungs.nii.gz")


def test_infection_with_hosts_synthetic_lesions_and_a_negative_case(tmp_path):
    from PIL import Image

    from napari_ctseg.models.preprocess import Preprocessing
    from napari_ctseg.training.labels.synthetic import LesionSettings
    from napari_ctseg.training import _build_hosts, _sample_hosts, load_host_case

    data = tmp_path / "data"
    (data / "slices" / "images").mkdir(parents=True)
    (data / "slices" / "masks").mkdir(parents=True)
    for i in range(3):
        img = np.full((48, 48), 60, np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        img[10 + i:25 + i, 10:30] = 150
        mask[10 + i:25 + i, 10:30] = 255
        Image.fromarray(img).save(data / "slices" / "images" / f"{i}.jpg")
        Image.fromarray(mask).save(data / "slices" / "masks" / f"{i}.png")
    _write_host(data / "host_a", 0)
    _write_host(data / "neg_b", 1)
    cfg = {**TINY, "synthetic": {"p_lesion": 1.0, "host_fraction": 0.5, "radius_px": [2.0, 5.0]},
           "init_from": {"version": None}}  # a tiny network: no warm start from v1
    split = {"train": ["slices/0", "slices/1"], "validation": ["slices/2"],
             "train_hosts": ["host_a"], "validation_negative": ["neg_b"]}
    card = run_to_end(train("infection", data, tmp_path / "m", epochs=2, split=split, config=cfg))
    assert card.training["split"]["train_hosts"] == ["host_a"]
    assert "negative" in card.training["labels_source"]["neg_b"]
    neg = card.validation["cases"]["neg_b"]
    assert neg["negative"] and neg["dice"] == pytest.approx(max(0.0, 1 - neg["false_positive_pct_of_lung"]))
    assert "negative_score" in card.validation and "false-positive" in card.training["selection"]
    # The host batches: lesions with masks, inside the lungs only.
    prep = Preprocessing.from_dict({**default_config("infection").preprocessing, "size": [32, 32]})
    hosts = _build_hosts([load_host_case(data, "host_a")], prep)
    xs, ys = _sample_hosts(hosts, prep, 6, np.random.default_rng(0),
                           LesionSettings.from_dict({"p_lesion": 1.0, "radius_px": [2.0, 5.0]}))
    assert any(y.any() for y in ys)
    lung_any = np.logical_or.reduce(hosts.lungs[0], axis=0)
    assert all(not (y.numpy() > 0)[~lung_any].any() for y in ys)


def test_instance_numbers_follow_the_display_order(tmp_path):
    from synthetic import write_dicom_series

    from napari_ctseg.io import read_scan
    from napari_ctseg.training import instance_numbers_by_z

    hu = np.zeros((5, 8, 8), np.int16)
    for k in range(5):
        hu[k] = 100 * k  # slice k (at increasing patient z, towards the head) is brighter
    write_dicom_series(tmp_path / "s", hu)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    vol = read_scan(tmp_path / "s")
    inst = instance_numbers_by_z(tmp_path / "s", vol.shape[0])
    import pydicom

    by_inst = {int(ds.InstanceNumber): float(ds.pixel_array.mean()) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
               for ds in (pydicom.dcmread(p) for p in (tmp_path / "s").iterdir() if p.name.startswith("IM"))}
    for z, i in enumerate(inst):  # display z 0 is the head end: the same pixels as its instance
        assert float(np.asarray(vol.hu[z]).mean()) == pytest.approx(by_inst[i])
    assert float(np.asarray(vol.hu[0]).mean()) == pytest.approx(400)  # the head end


def test_batchnorm_recalibration_sets_exact_averages():
    from napari_ctseg.training import recalibrate_batchnorm

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    bn = torch.nn.BatchNorm2d(3)
    model = torch.nn.Sequential(conv, bn)
    batches = [torch.randn(4, 2, 8, 8) * (i + 1) + i for i in range(3)]
    with torch.no_grad():
        feats = torch.cat([conv(x) for x in batches])
    recalibrate_batchnorm(model, iter(batches), "cpu")
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and model.training


def test_config_from_a_card_or_a_file_runs_that_recipe(data, tmp_path, capsys):
    from napari_ctseg.training import TrainingConfig, config_from_file

    out = tmp_path / "m"
    card = run_to_end(train("liver", data, out, epochs=1, split=SPLIT, config={**TINY, "steps_per_epoch": 1}))
    again = config_from_file(out / "card.json")  # a card: its recipe, whole
    assert isinstance(again, TrainingConfig) and again.to_dict() == card.training["config"]
    bare = tmp_path / "recipe.json"
    net = {"architecture": TINY["architecture"], "preprocessing": TINY["preprocessing"]}
    bare.write_text(json.dumps({**net, "epochs": 3, "batch_size": 2}))
    cfg = config_from_file(bare)  # a bare config: what it leaves out is the dataclass default
    assert cfg.epochs == 3 and cfg.batch_size == 2 and cfg.stages == [] and cfg.organ_contrast == {}
    bare.write_text(json.dumps({"epochs": 3}))
    with pytest.raises(TrainingError, match="needs architecture and preprocessing"):
        config_from_file(bare)
    bare.write_text(json.dumps({**net, "learning_rate": 1.0}))
    with pytest.raises(TrainingError, match="unknown training setting.*learning_rate"):
        config_from_file(bare)
    bare.write_text("{not json")
    with pytest.raises(TrainingError, match="cannot read"):
        config_from_file(bare)
    # ctseg train --config: the card's recipe, trained again (its split is the shipped one).
    for name in ("liver_ircad01", "liver_ircad07", "liver_chaos03", "liver_dcmqi_3slice"):
        write_case(tmp_path / "named" / name, len(name))
    assert main(["train", "--target", "liver", "--data", str(tmp_path / "named"), "--out",
                 str(tmp_path / "m2"), "--config", str(out / "card.json")]) == 0
    trained = json.loads((tmp_path / "m2" / "card.json").read_text())
    assert trained["training"]["config"] == card.training["config"]
    assert trained["architecture"]["base"] == 8


def test_organ_contrast_in_training_batches(data):
    from napari_ctseg.models.preprocess import Preprocessing
    from napari_ctseg.training import build_cache, load_case, sample_batch

    cfg = {**default_config("liver").preprocessing, **TINY["preprocessing"]}
    prep = Preprocessing.from_dict(cfg)
    cache = build_cache([load_case("liver", data, "case_a")], prep, 2, 2.0)
    plain, y = sample_batch(cache, prep, 6, np.random.default_rng(0))
    changed, y2 = sample_batch(cache, prep, 6, np.random.default_rng(0),
                               organ_contrast={"p": 1.0, "median_hu": [-50.0, -50.0], "scale": [1.0, 1.0]})
    assert torch.equal(y, y2)  # the labels never change
    organ = y > 0
    assert organ.any()
    centre = prep.context
    # The synthetic liver (160 HU) now has a median of -50 HU; far from it nothing moved.
    hu = changed[:, centre] * (prep.window[1] - prep.window[0]) + prep.window[0]
    assert float(hu[organ].median()) == pytest.approx(-50.0, abs=15.0)
    far = torch.from_numpy(np.stack([ndimage.distance_transform_edt(~o) > 5 for o in organ.numpy()]))
    assert torch.allclose(changed[:, centre][far], plain[:, centre][far], atol=1e-6)


def test_split_from_a_card_or_a_file(data, tmp_path):
    from napari_ctseg.training import split_from_file

    out = tmp_path / "m"
    card = run_to_end(train("liver", data, out, epochs=1, split=SPLIT, config={**TINY, "steps_per_epoch": 1}))
    assert split_from_file(out / "card.json") == card.training["split"] == SPLIT
    bare = tmp_path / "split.json"
    bare.write_text(json.dumps({"train": ["case_b"], "validation": ["case_a"]}))
    # ctseg train --split: those cases (here the tiny cases, not the shipped split's names).
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(card.training["config"]))
    assert main(["train", "--target", "liver", "--data", str(data), "--out", str(tmp_path / "m2"),
                 "--config", str(recipe), "--split", str(bare), "--epochs", "1"]) == 0
    trained = json.loads((tmp_path / "m2" / "card.json").read_text())
    assert trained["training"]["split"] == {"train": ["case_b"], "validation": ["case_a"]}
    bare.write_text(json.dumps({"train": ["case_b"]}))
    with pytest.raises(TrainingError, match="needs train and validation lists"):
        split_from_file(bare)
