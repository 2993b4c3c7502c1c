"""Metrics on hand-computed cases: empty masks, single voxels, anisotropic spacing."""
import math

import numpy as np
import pytest

from napari_ctseg.evaluation.metrics import asd, compare, dice, hd95, iou, surface, surface_distances, volume_ml


def vol(shape=(5, 6, 7), *points):
    m = np.zeros(shape, bool)
    for p in points:
        m[p] = True
    return m


def test_both_empty_agree_perfectly():
    a, b = vol(), vol()
    assert dice(a, b) == 1.0
    assert iou(a, b) == 1.0
    assert hd95(a, b, (2, 1, 1)) == 0.0
    assert asd(a, b, (2, 1, 1)) == 0.0


def test_one_empty_has_no_distance():
    a, b = vol((5, 6, 7), (1, 1, 1)), vol()
    assert dice(a, b) == 0.0
    assert iou(a, b) == 0.0
    assert math.isnan(hd95(a, b))
    assert math.isnan(asd(b, a))


def test_one_voxel_identical_and_apart():
    a = vol((5, 6, 7), (1, 2, 3))
    assert dice(a, a) == 1.0 and hd95(a, a) == 0.0 and asd(a, a) == 0.0
    b = vol((5, 6, 7), (3, 2, 3))  # 2 voxels apart along z
    assert dice(a, b) == 0.0
    assert hd95(a, b, spacing=(2.5, 0.7, 0.7)) == pytest.approx(5.0)
    assert asd(a, b, spacing=(2.5, 0.7, 0.7)) == pytest.approx(5.0)
    c = vol((5, 6, 7), (1, 2, 6))  # 3 voxels apart along x
    assert hd95(a, c, spacing=(2.5, 0.7, 0.5)) == pytest.approx(1.5)
    d = vol((5, 6, 7), (2, 3, 3))  # diagonal in z-y
    assert hd95(a, d, spacing=(3.0, 4.0, 1.0)) == pytest.approx(5.0)


def test_dice_and_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True           # 4 pixels
    b[0, :2] = b[1, :2] = True  # 4 pixels, 2 shared
    assert dice(a, b) == pytest.approx(2 * 2 / 8)
    assert iou(a, b) == pytest.approx(2 / 6)


def test_asymmetric_surfaces_pool_both_directions():
    a = vol((1, 1, 6), (0, 0, 0))
    b = vol((1, 1, 6), (0, 0, 0), (0, 0, 4))
    d_ab, d_ba = surface_distances(a, b, spacing=(1, 1, 2))
    assert sorted(d_ab.tolist()) == [0.0]
    assert sorted(d_ba.tolist()) == [0.0, 8.0]
    # pooled distances [0, 0, 8]: mean 8/3; 95th percentile 0 + 0.9 * 8 (linear interpolation)
    assert asd(a, b, (1, 1, 2)) == pytest.approx(8 / 3)
    assert hd95(a, b, (1, 1, 2)) == pytest.approx(7.2)


def test_anisotropic_shifted_slab():
    a = np.zeros((6, 10, 10), bool)
    a[1:3, 2:8, 2:8] = True
    b = np.roll(a, 1, axis=0)  # one slice further along z
    # every surface voxel of one lies on or one slice from the other's surface
    assert hd95(a, b, spacing=(3.0, 1.0, 1.0)) <= 3.0 + 1e-9
    assert hd95(a, b, spacing=(3.0, 1.0, 1.0)) > 0
    # the same shift along x with 0.5 mm pixels is 6 times smaller
    c = np.roll(a, 1, axis=2)
    assert hd95(a, c, spacing=(3.0, 1.0, 0.5)) == pytest.approx(0.5)


def test_surface_of_cube_and_border():
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    assert surface(cube).sum() == 26
    full = np.ones((3, 3, 3), bool)  # the array border counts as outside
    assert surface(full).sum() == 26


def test_volume_ml():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, :2] = True
    m[1, 1, :3] = True  # 5 voxels
    assert volume_ml(m, (2.0, 1.0, 0.5)) == pytest.approx(5 * 1.0 / 1000)
    assert volume_ml(np.zeros((2, 2, 2), bool), (1, 1, 1)) == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_compare_per_label():
    ref = np.zeros((3, 8, 8), np.uint8)
    ref[1, 1:4, 1:4] = 1
    ref[1, 5:7, 5:7] = 2
    pred = ref.copy()
    pred[1, 5:7, 5:7] = 0
    out = compare(pred, ref, (2.0, 1.0, 1.0), {"right": 1, "left": 2})
    assert out["right"]["dice"] == 1.0 and out["right"]["hd95_mm"] == 0.0
    assert out["left"]["dice"] == 0.0 and math.isnan(out["left"]["hd95_mm"])
    assert out["right"]["volume_ml"] == pytest.approx(9 * 2 / 1000)
    assert out["left"]["reference_volume_ml"] == pytest.approx(4 * 2 / 1000)
