"""Silver-standard lungs without airways, and synthetic lesions (Qt-free, synthetic data)."""
import numpy as np
import pytest

from napari_ctseg.training.labels.silver import airway_mask, find_trachea_seed, inside_body_air, silver_lung_labels
from napari_ctseg.training.labels.synthetic import LesionSettings, add_lesions

SPACING = (4.0, 2.0, 2.0)


def _chest(with_trachea=True):
    """A body with two lungs (-850 HU) and a trachea (-1000 HU) that splits into two bronchi."""
    z, y, x = np.mgrid[0:60, 0:80, 0:80]
    hu = np.full(z.shape, -1000, np.int16)
    hu[(y - 40) ** 2 + (x - 40) ** 2 < 36 ** 2] = 40
    for cx in (18, 62):
        lung = ((y - 42) ** 2 / 15 ** 2 + (x - cx) ** 2 / 12 ** 2 + (z - 40) ** 2 / 22 ** 2) < 1
        hu[lung] = -850
    if with_trachea:
        hu[(z < 24) & ((y - 30) ** 2 + (x - 40) ** 2 < 6 ** 2)] = -1000
        for cx in (18, 62):  # bronchi from the carina to each lung
            t = np.linspace(0, 1, 40)
            for tt in t:
                zz, xx = int(23 + 6 * tt), int(40 + (cx - 40) * tt)
                hu[zz, 28:33, max(xx - 2, 0):xx + 3] = -1000
    return hu


def test_airways_found_and_left_out_of_the_lungs():
    hu = _chest()
    inside = inside_body_air(hu)
    seed = find_trachea_seed(hu, SPACING, inside)
    assert seed is not None and seed[:5].any()
    air = airway_mask(hu, SPACING, inside, dilate_mm=0.0)
    assert air[2:20, 30, 40].all()  # the trachea
    assert not air[40, 42, 18] and not air[40, 42, 62]  # not the lungs
    labels = silver_lung_labels(hu, SPACING)
    assert not labels[air].any()
    assert labels[40, 42, 18] == 1 and labels[40, 42, 62] == 2  # right lung at small x
    assert (labels == 1).sum() > 0.9 * (hu[:, :, :40] == -850).sum()


def test_no_trachea_in_an_abdominal_scan():
    hu = _chest(with_trachea=False)[30:]  # lung bases only
    assert not airway_mask(hu, SPACING).any()
    labels = silver_lung_labels(hu, SPACING)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_lesions_painted_inside_the_lung_with_exact_masks():
    rng = np.random.default_rng(0)
    x = np.full((3, 96, 96), 0.2, np.float32)  # lung parenchyma, windowed
    lung = np.zeros(x.shape, bool)
    lung[:, 20:80, 10:45] = True
    x[:, ~lung[1]] = 0.8  # soft tissue around
    settings = LesionSettings.from_dict({"n_lesions": [2, 2], "p_consolidation": 1.0})
    out, mask = add_lesions(x, lung, (-1100.0, 250.0), rng, settings)
    assert mask.any() and not mask[~lung[1]].any()
    assert np.array_equal(out[:, ~lung[1]], x[:, ~lung[1]])  # nothing changes outside the lung
    assert out[1][mask].mean() > x[1][mask].mean() + 0.3  # consolidation is much denser than lung
    assert np.all(out >= x - 1e-6)  # lesions never darken (vessels stay)
    # Too little lung: nothing is painted.
    small = np.zeros_like(lung)
    small[:, 40:45, 40:45] = True
    out2, mask2 = add_lesions(x, small, (-1100.0, 250.0), rng, settings)
    assert not mask2.any() and np.array_equal(out2, x)


@pytest.mark.parametrize("seed", [1, 2])
def test_lesion_hu_within_the_chosen_ranges(seed):
    rng = np.random.default_rng(seed)
    lo, hi = -1100.0, 250.0
    x = np.full((1, 80, 80), (-870 - lo) / (hi - lo), np.float32)
    lung = np.ones(x.shape, bool)
    settings = LesionSettings.from_dict({"n_lesions": [1, 1], "p_consolidation": 0.0, "texture_hu": 0.0})
    out, mask = add_lesions(x, lung, (lo, hi), rng, settings)
    core = mask & (np.abs(out[0] - out[0][mask].max()) < 1e-3)
    hu = out[0][core] * (hi - lo) + lo
    assert hu.size and np.all(hu <= -350 + 1) and np.all(hu >= -870)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_organ_contrast_moves_the_organ_only(seed):
    from napari_ctseg.training.labels.synthetic import DEFAULT_ORGAN_CONTRAST, shift_organ_contrast

    window = (-200.0, 300.0)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    organ2d = (yy - 30) ** 2 + (xx - 28) ** 2 <= 14 ** 2
    hu = np.where(organ2d, 115.0, 40.0) + rng.normal(0, 8, (3, 64, 64))  # an enhanced liver in muscle
    hu[:, 58:, :] = -100.0  # fat
    x = ((hu - window[0]) / (window[1] - window[0])).astype(np.float32)
    organ = np.stack([organ2d] * 3)
    settings = {**DEFAULT_ORGAN_CONTRAST, "scale": [1.0, 1.0]}
    out = shift_organ_contrast(x, organ, window, np.random.default_rng(seed), settings)
    target = np.random.default_rng(seed).uniform(*settings["median_hu"])  # the first draw
    new_hu = out * 500.0 - 200.0
    assert abs(np.median(new_hu[organ]) - target) < 1.0  # the organ's median moved there
    # Its texture came along (scale 1: the voxels keep their spread), far outside nothing moved.
    assert np.std(new_hu[organ]) == pytest.approx(np.std(hu[organ]), rel=0.05)
    far = ~np.stack([(yy - 30) ** 2 + (xx - 28) ** 2 <= 19 ** 2] * 3)
    assert np.array_equal(out[far], x[far])
    # At the edge the change is blended: the ring just outside moves part of the way.
    ring = np.stack([((yy - 30) ** 2 + (xx - 28) ** 2 > 14 ** 2) & ((yy - 30) ** 2 + (xx - 28) ** 2 <= 15 ** 2)] * 3)
    moved = (out - x)[ring].mean() / ((target - 115.0) / 500.0)
    assert 0.05 < moved < 0.95
    # No organ in the stack: it comes back as it is.
    assert np.array_equal(shift_organ_contrast(x, np.zeros_like(organ), window, rng), x)
