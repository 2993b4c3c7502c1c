"""Coarse-to-fine: a version whose card names a locate stage (tiny models on synthetic scans)."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_ctseg.errors import ModelError
from napari_ctseg.segmentation.inference import segment
from napari_ctseg.io.nifti import read_nifti
from napari_ctseg.evaluation.metrics import dice
from napari_ctseg.models.definition import locate_stage
from napari_ctseg.models.preprocess import Preprocessing, find_crop, mask_crop
from napari_ctseg.models.registry import ModelCard, describe, get_card
from napari_ctseg.training import run_to_end, train

TINY = {
    "architecture": {"base": 8, "depth": 2, "max_channels": 16},
    "steps_per_epoch": 8, "batch_size": 6, "lr": 1e-2, "warmup_fraction": 0.0,
    "augmentation": {"rotate_deg": 0.0, "scale": [1.0, 1.0], "translate": 0.0, "noise": 0.0,
                     "brightness": 0.0, "contrast": 0.0},
    "organ_lesions": {"p_lesion": 0.0},
    "ema_decay": 0.0,  # a few dozen steps: the plain weights (the average has its own test)
}
SPACING = (0.9, 0.9, 2.5)  # x, y, z mm


def write_case(folder, seed, centre=(20, 26)):
    """24 slices of 48 x 48: a water body, a bright 'liver' ellipsoid on slices 6..17 (source k)."""
    rng = np.random.default_rng(seed)
    n, z = 48, 24
    xx, yy, kk = np.meshgrid(np.arange(n), np.arange(n), np.arange(z), indexing="ij")
    body = (xx - 24) ** 2 + (yy - 24) ** 2 <= 21 ** 2
    liver = ((xx - centre[0]) / 9.0) ** 2 + ((yy - centre[1]) / 7.0) ** 2 + ((kk - 11.5) / 6.0) ** 2 <= 1
    ct = np.where(body, 40, -1000).astype(np.float32)
    ct[liver] = 150
    ct = (ct + rng.normal(0, 12, ct.shape)).astype(np.int16)
    folder.mkdir(parents=True)
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(liver.astype(np.uint8), affine), folder / "liver.nii.gz")


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """Tiny liver 'b1' (body crop, 32 px) and 'b2' (b1 locates, then 32 px on the liver's square)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("staged")
    for name, seed, centre in (("a", 0, (20, 26)), ("b", 1, (22, 24)), ("c", 2, (19, 27))):
        write_case(tmp / "data" / name, seed, centre)
    weights = tmp / "weights"
    split = {"train": ["a", "b"], "validation": ["c"]}
    mp = pytest.MonkeyPatch()
    mp.setenv("CTSEG_WEIGHTS_DIR", str(weights))
    mp.setattr("napari_ctseg.models.registry.bundled_weights_dir", lambda: tmp / "no_bundled")
    run_to_end(train("liver", tmp / "data", weights / "liver" / "b1", epochs=5, split=split,
                     config={**TINY, "stages": [], "preprocessing": {"size": [32, 32], "crop": "body"}}))
    reports = list(train("liver", tmp / "data", weights / "liver" / "b2", epochs=5, split=split,
                         config={**TINY, "stages": [{"name": "locate", "version": "b1", "every_mm": 5.0}],
                                 "preprocessing": {"size": [32, 32], "crop": "mask", "crop_margin_mm": 6.0,
                                                   "z_margin_mm": 5.0}}))
    yield tmp, reports
    mp.undo()


def test_mask_crop_is_the_box_plus_the_margin_in_mm():
    prep = Preprocessing.from_dict({"crop": "mask", "crop_margin_mm": 5.0, "z_margin_mm": 4.0})
    m = np.zeros((10, 40, 50), bool)
    m[3:6, 10:20, 20:30] = True
    crop, zs = mask_crop(m, (2.0, 0.5, 1.0), prep)
    # y: rows 10..19 widened by 10 px, x: columns 20..29 by 5 px; the square is the larger side
    assert crop.side == 30 and (crop.y0, crop.x0) == (0, 10)
    assert zs.tolist() == list(range(1, 8))  # slices 3..5 widened by 4 mm = 2 slices
    # the mask on every other slice of a volume: the gap is added to the margin
    crop2, zs2 = mask_crop(m[::2], (2.0, 0.5, 1.0), prep, z_positions=np.arange(0, 10, 2), n_slices=10)
    assert zs2.tolist() == list(range(1, 8))  # only slice 4 was run: 4 -+ (2 slices + the gap of 1)
    assert mask_crop(np.zeros((4, 8, 8)), (1, 1, 1), prep) is None
    with pytest.raises(ModelError, match="first stage"):
        find_crop(np.zeros((4, 8, 8)), prep)
    assert "crop_margin_mm" not in Preprocessing.from_dict({"crop": "body"}).to_dict()


def test_staged_version_is_trained_carded_and_segments(staged):
    tmp, reports = staged
    card = reports[-1].card
    assert card.stages == [{"name": "locate", "version": "b1", "every_mm": 5.0}]
    assert card.preprocessing["crop"] == "mask" and card.preprocessing["crop_margin_mm"] == 6.0
    assert any("locating the liver" in r.message for r in reports)
    stored = json.loads((tmp / "weights" / "liver" / "b2" / "card.json").read_text())
    assert stored["stages"] == card.stages
    assert "after locate by liver b1" in describe([get_card("liver", "b2")])[0]

    vol = read_nifti(tmp / "data" / "c" / "ct.nii.gz")
    truth = np.asarray(read_nifti(tmp / "data" / "c" / "liver.nii.gz").hu) > 0.5
    res = segment(vol, "liver", "cpu", versions={"liver": "b2"})
    assert res.versions == {"liver": "b2"}
    mask = res.masks["liver"] > 0
    assert dice(mask, truth) > 0.85, dice(mask, truth)
    # only the located slices (liver slices widened by 5 mm + the locate step) are run
    z_truth = np.flatnonzero(truth.any(axis=(1, 2)))
    z_mask = np.flatnonzero(mask.any(axis=(1, 2)))
    assert z_mask[0] >= z_truth[0] - 5 and z_mask[-1] <= z_truth[-1] + 5


def test_staged_version_reports_an_absent_organ(staged):
    tmp, _ = staged
    vol = read_nifti(tmp / "data" / "c" / "ct.nii.gz")
    vol.hu[:] = -1000  # air only: the locate stage finds nothing
    res = segment(vol, "liver", "cpu", versions={"liver": "b2"})
    assert not res.masks["liver"].any()
    assert any("not found" in n for n in res.notes)


def test_bad_stages_are_refused():
    card = ModelCard("liver", "x2", {"liver": 1}, {}, {"crop": "mask"}, stages=[{"name": "zoom"}])
    with pytest.raises(ModelError, match="not understood"):
        locate_stage(card)
    card.stages = [{"name": "locate", "version": "x2"}]
    with pytest.raises(ModelError, match="itself"):
        locate_stage(card)
    card.stages, card.preprocessing = [{"name": "locate", "version": "x1"}], {"crop": "body"}
    with pytest.raises(ModelError, match="crop 'mask'"):
        locate_stage(card)


def test_fine_tuning_a_staged_version_keeps_its_stages(staged, tmp_path, private_user_data):
    from napari_ctseg.training.fine_tuning import CorrectionCase, fine_tune

    tmp, _ = staged
    scan = tmp / "data" / "c" / "ct.nii.gz"
    # the user's correction: the expert liver grown by 2 voxels in-plane (the model disagrees)
    from scipy import ndimage

    img = nib.load(tmp / "data" / "c" / "liver.nii.gz")
    grown = ndimage.binary_dilation(np.asarray(img.dataobj) > 0, np.ones((5, 5, 1), bool), iterations=1)
    mask = tmp_path / "c_liver_corrected.nii.gz"
    nib.save(nib.Nifti1Image(grown.astype(np.uint8), img.affine), mask)
    card = run_to_end(fine_tune("liver", [CorrectionCase(str(scan), str(mask))], base_version="b2",
                                promote=False,
                                config={"epochs": 1, "steps_per_epoch": 2, "batch_size": 4}))
    assert card.stages == get_card("liver", "b2").stages and card.preprocessing["crop"] == "mask"
    # the held-aside and trained slices are the ones the second stage sees (the organ's, widened)
    held = card.training["corrections"][0]["held_aside_slices"]
    truth = np.asarray(read_nifti(mask).hu) > 0.5
    z = np.flatnonzero(truth.any(axis=(1, 2)))
    assert held and all(z[0] - 2 <= h <= z[-1] + 2 for h in held)
    res = segment(read_nifti(scan), "liver", "cpu", versions={"liver": card.version})
    assert res.masks["liver"].any()
