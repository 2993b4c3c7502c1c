"""Mask editing tools on synthetic masks with known answers (napari_ctseg.editing.tools)."""
import numpy as np
import pytest
from scipy import ndimage

from napari_ctseg.editing import tools as editing
from napari_ctseg.editing.tools import RegionEdit


def disc(shape, centre, radius):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def ball(shape, centre, radii):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
        + ((x - centre[2]) / radii[2]) ** 2 <= 1


def applied(mask, edit):
    return edit.apply(mask.copy())


def reference_dilation(inside, radius_mm, spacing):
    r = np.floor(radius_mm / np.asarray(spacing) + 1e-6).astype(int)
    z, y, x = np.mgrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    footprint = (z * spacing[0]) ** 2 + (y * spacing[1]) ** 2 + (x * spacing[2]) ** 2 <= radius_mm ** 2 * (1 + 1e-6)
    return ndimage.binary_dilation(inside, footprint), footprint


# --- region edits ------------------------------------------------------------------------
def test_edit_is_a_box_and_new_values():
    mask = np.zeros((4, 5, 6), np.uint8)
    edit = RegionEdit((slice(1, 3), slice(0, 2), slice(2, 5)), np.ones((2, 2, 3), np.uint8))
    assert edit.n_changed(mask) == 12
    (z, y, x), values = edit.changed_indices(mask)
    assert z.min() == 1 and z.max() == 2 and x.min() == 2 and x.max() == 4 and (values == 1).all()
    out = applied(mask, edit)
    assert out.sum() == 12 and out[1:3, 0:2, 2:5].all()
    assert RegionEdit.nothing().is_empty and RegionEdit.nothing().n_changed(mask) == 0


def test_label_box_with_margin_is_clipped():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[0:2, 4:6, 7:10] = 3
    assert editing.label_box(mask, 3) == (slice(0, 2), slice(4, 6), slice(7, 10))
    assert editing.label_box(mask, 3, margin=2) == (slice(0, 4), slice(2, 8), slice(5, 10))
    assert editing.label_box(mask, 1) is None


def test_tools_work_inside_the_label_box_only():
    mask = np.zeros((60, 80, 90), np.uint8)
    mask[20:30, 30:40, 40:50] = 1
    mask[0, 0, 0] = 2  # another label far away
    for edit in (editing.grow(mask, 1, 2.0, (1, 1, 1)), editing.remove_islands(mask, 1),
                 editing.fill_holes(mask, 1), editing.smooth(mask, 1, 1.0, (1, 1, 1), "median")):
        shape = edit.values.shape
        assert shape[0] <= 10 + 2 * 3 and shape[1] <= 10 + 2 * 3 and shape[2] <= 10 + 2 * 3
        assert edit.box[0].start >= 17


# --- fill between slices -------------------------------------------------------------------
def test_interpolation_between_two_discs_gives_intermediate_discs():
    mask = np.zeros((11, 64, 64), np.uint8)
    mask[0][disc((64, 64), (32, 32), 10)] = 1
    mask[10][disc((64, 64), (32, 32), 20)] = 1
    edit = editing.interpolate_between_slices(mask, 1)
    out = applied(mask, edit)
    areas = out.reshape(11, -1).sum(axis=1)
    assert (np.diff(areas) > 0).all()  # monotone from radius 10 to 20
    for k in range(1, 10):
        # radius 10 + k, within half a voxel (equivalent radii of the digital discs)
        expected = disc((64, 64), (32, 32), 10 + k).sum()
        assert abs(np.sqrt(areas[k] / np.pi) - np.sqrt(expected / np.pi)) < 0.5, (k, areas[k], expected)
        ys, xs = np.nonzero(out[k])
        assert abs(ys.mean() - 32) < 0.5 and abs(xs.mean() - 32) < 0.5
    # the outlined slices themselves are untouched; only slices between change
    assert (out[0] == mask[0]).all() and (out[10] == mask[10]).all()
    assert edit.box[0] == slice(0, 11)


def test_interpolation_of_overlapping_shifted_outlines_moves_along_the_shift():
    mask = np.zeros((9, 40, 60), np.uint8)
    mask[2][disc((40, 60), (20, 20), 8)] = 2
    mask[6][disc((40, 60), (20, 28), 8)] = 2
    out = applied(mask, editing.interpolate_between_slices(mask, 2))
    assert not out[:2].any() and not out[7:].any()  # nothing beyond the outlines
    centres = [np.nonzero(out[k])[1].mean() for k in range(2, 7)]
    assert np.allclose(centres, [20, 22, 24, 26, 28], atol=0.6)
    assert (out[4] == 2).sum() > 0.8 * (mask[2] == 2).sum()


def test_interpolation_fills_only_background_and_only_gaps():
    mask = np.zeros((5, 30, 30), np.uint8)
    mask[0, 10:20, 10:20] = 1
    mask[4, 10:20, 10:20] = 1
    mask[2, 14:16, 14:16] = 2  # another label in the gap is kept
    out = applied(mask, editing.interpolate_between_slices(mask, 1))
    assert (out[1:4, 10:20, 10:20] > 0).all()
    assert (out[2, 14:16, 14:16] == 2).all()
    one_slice = np.zeros_like(mask)
    one_slice[2, 5:9, 5:9] = 1
    assert editing.interpolate_between_slices(one_slice, 1).is_empty


def test_interpolation_along_other_axes():
    mask = np.zeros((30, 12, 30), np.uint8)
    mask[:, 1, :][disc((30, 30), (15, 15), 5)] = 1
    mask[:, 9, :][disc((30, 30), (15, 15), 5)] = 1
    out = applied(mask, editing.interpolate_between_slices(mask, 1, axis=1))
    for k in range(1, 10):
        assert (out[:, k, :] == mask[:, 1, :]).all()


# --- islands and holes ---------------------------------------------------------------------
def test_remove_islands_keeps_the_largest_pieces():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:10, 2:10, 2:10] = 1   # 512 voxels
    mask[12:16, 12:16, 12:16] = 1  # 64
    mask[18, 18, 18] = 1         # 1
    mask[11, 2:5, 2:5] = 2       # another label: untouched
    out = applied(mask, editing.remove_islands(mask, 1, keep=1))
    assert (out == 1).sum() == 512 and (out == 2).sum() == 9
    out2 = applied(mask, editing.remove_islands(mask, 1, keep=2))
    assert (out2 == 1).sum() == 512 + 64
    out3 = applied(mask, editing.remove_islands(mask, 1, keep=None, min_size_voxels=2))
    assert (out3 == 1).sum() == 512 + 64 and out3[18, 18, 18] == 0


def test_island_connectivity():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # corner neighbours
    mask[1, 1, 2] = 0
    assert (applied(mask, editing.remove_islands(mask, 1, connectivity=1)) == 1).sum() == 1
    assert (applied(mask, editing.remove_islands(mask, 1, connectivity=3)) == 1).sum() == 2


def test_fill_holes_per_axial_slice_and_in_3d():
    mask = np.zeros((12, 20, 20), np.uint8)
    mask[1:11, 3:17, 3:17] = 1
    mask[4:7, 8:11, 8:11] = 0        # a closed cavity: a hole in 3D and in its slices
    mask[:, 12:14, 12:14] = 0        # a vessel through all slices: a hole only per slice
    mask[5, 8:10, 8:10] = 3          # another label inside the cavity stays
    per_slice = applied(mask, editing.fill_holes(mask, 1, mode="slice"))
    assert (per_slice[1:11, 3:17, 3:17] > 0).all()
    assert (per_slice[5, 8:10, 8:10] == 3).all()
    in_3d = applied(mask, editing.fill_holes(mask, 1, mode="3d"))
    assert (in_3d[4:7, 8:11, 8:11] > 0).all()
    assert (in_3d[:, 12:14, 12:14] == 0).all()  # open at the top and bottom: not a 3D hole
    # A notch open to the side is not a hole
    notch = np.zeros((3, 10, 10), np.uint8)
    notch[1, 2:8, 2:8] = 1
    notch[1, 4:6, 2:5] = 0
    assert editing.fill_holes(notch, 1).n_changed(notch) == 0


def test_holes_and_islands_match_scipy_on_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(3):
        inside = ndimage.binary_opening(rng.random((14, 30, 33)) < 0.6)
        mask = inside.astype(np.uint8)
        box = editing.label_box(mask, 1)
        ref = mask.copy()
        ref[box] = ndimage.binary_fill_holes(mask[box] == 1)
        assert (applied(mask, editing.fill_holes(mask, 1, mode="3d")) == ref).all()
        pieces, n = ndimage.label(inside)
        biggest = np.bincount(pieces.ravel())[1:].max()
        assert (applied(mask, editing.remove_islands(mask, 1)) == 1).sum() == biggest


# --- grow, shrink, smooth ------------------------------------------------------------------
def test_grow_respects_anisotropic_spacing():
    mask = np.zeros((11, 21, 21), np.uint8)
    mask[5, 10, 10] = 1
    out = applied(mask, editing.grow(mask, 1, 2.0, (2.0, 1.0, 1.0)))
    zs, ys, xs = np.nonzero(out)
    assert (zs.min(), zs.max()) == (4, 6)     # 1 voxel of 2 mm in z
    assert (ys.min(), ys.max()) == (8, 12)    # 2 voxels of 1 mm in y
    assert (xs.min(), xs.max()) == (8, 12)
    assert out[4, 10, 10] and not out[4, 11, 10]  # (2 mm, 1 mm) is beyond 2 mm


def test_grow_matches_an_ellipsoid_dilation():
    mask = np.zeros((20, 30, 40), np.uint8)
    mask[ball(mask.shape, (10, 15, 20), (3, 6, 9))] = 1
    mask[0, 0, 0] = 2
    spacing = (1.5, 0.8, 0.6)
    ref, _ = reference_dilation(mask == 1, 2.5, spacing)
    out = applied(mask, editing.grow(mask, 1, 2.5, spacing))
    assert ((out == 1) == (ref & (mask != 2))).all()
    assert out[0, 0, 0] == 2


def test_grow_does_not_overwrite_other_labels():
    mask = np.zeros((5, 5, 12), np.uint8)
    mask[2, 2, 3] = 1
    mask[2, 2, 4] = 2
    out = applied(mask, editing.grow(mask, 1, 1.0, (1, 1, 1)))
    assert out[2, 2, 4] == 2 and out[2, 2, 2] == 1 and out[1, 2, 3] == 1


def test_shrink_is_the_opposite_of_grow():
    mask = np.zeros((30, 40, 40), np.uint8)
    mask[5:25, 5:35, 5:35] = 1
    out = applied(mask, editing.shrink(mask, 1, 2.0, (2.0, 1.0, 1.0)))
    zs, ys, xs = np.nonzero(out)
    assert (zs.min(), zs.max()) == (6, 23) and (ys.min(), ys.max()) == (7, 32) and (xs.min(), xs.max()) == (7, 32)
    assert (out[6:24, 7:33, 7:33] == 1).all()
    assert editing.shrink(mask, 1, 0.0, (1, 1, 1)).is_empty


def test_shrink_leaves_the_volume_edge_alone():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[:, :, :5] = 1
    out = applied(mask, editing.shrink(mask, 1, 1.0, (1, 1, 1)))
    assert (out[:, :, :4] == 1).all() and (out[:, :, 4] == 0).all()


def test_smooth_open_close_median():
    spacing = (1.0, 1.0, 1.0)
    mask = np.zeros((21, 21, 31), np.uint8)
    mask[ball(mask.shape, (10, 10, 10), (6, 6, 6))] = 1
    base = mask.copy()
    mask[10, 10, 17:24] = 1  # a thin spike sticking out
    mask[10, 10, 10] = 0     # a pinhole
    opened = applied(mask, editing.smooth(mask, 1, 1.5, spacing, "open"))
    assert not opened[10, 10, 18:24].any()          # spike gone
    closed = applied(mask, editing.smooth(mask, 1, 1.5, spacing, "close"))
    assert closed[10, 10, 10] == 1                   # pinhole filled
    assert closed[10, 10, 23] == 1                   # closing keeps the spike
    median = applied(mask, editing.smooth(mask, 1, 1.5, spacing, "median"))
    assert median[10, 10, 10] == 1 and not median[10, 10, 19:24].any()
    # the ball itself survives all three almost unchanged
    for out in (opened, closed, median):
        assert np.count_nonzero((out == 1) != (base == 1)) < 0.05 * base.sum()
    with pytest.raises(ValueError):
        editing.smooth(mask, 1, 1.0, spacing, "gaussian")


def test_median_is_the_majority_in_the_ellipsoid():
    rng = np.random.default_rng(0)
    mask = (rng.random((12, 20, 25)) < 0.5).astype(np.uint8)
    spacing = (2.0, 0.9, 0.7)
    _, footprint = reference_dilation(mask == 1, 2.0, spacing)
    count = ndimage.correlate((mask == 1).astype(int), footprint.astype(int), mode="constant")
    out = applied(mask, editing.smooth(mask, 1, 2.0, spacing, "median"))
    assert ((out == 1) == (2 * count > footprint.sum())).all()


# --- HU range ------------------------------------------------------------------------------
def test_limit_to_hu_range_keeps_only_voxels_in_range():
    hu = np.array([[-1000, -500, -150, 0, 400]], dtype=np.int16)
    change = np.ones_like(hu, dtype=bool)
    low, high = editing.HU_RANGE_PRESETS["lung"]
    assert (low, high) == (-1024.0, -200.0)
    assert editing.limit_to_hu_range(change, hu, low, high).tolist() == [[True, True, False, False, False]]
    assert editing.limit_to_hu_range(change, hu, -100, 300).tolist() == [[False, False, False, True, False]]
    with pytest.raises(ValueError):
        editing.limit_to_hu_range(change, hu[:, :2], 0, 1)


def test_edit_limited_to_hu_range():
    mask = np.zeros((5, 5, 10), np.uint8)
    mask[2, 2, 2:5] = 1
    hu = np.full(mask.shape, -800, np.int16)
    hu[:, :, 6:] = 50  # soft tissue beyond x = 6
    edit = editing.grow(mask, 1, 3.0, (1, 1, 1))
    limited = editing.limit_edit_to_hu_range(edit, mask, hu, -1024, -200)
    out = applied(mask, limited)
    assert out[2, 2, 5] == 1 and not out[:, :, 6:].any()
    assert applied(mask, edit)[2, 2, 7] == 1


def test_label_volume_ml():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[:5, :4, :2] = 1  # 40 voxels
    assert editing.label_volume_ml(mask, 1, (2.0, 0.5, 0.5)) == pytest.approx(40 * 0.5 / 1000)
    assert editing.label_volume_ml(mask, 2, (1, 1, 1)) == 0


@pytest.mark.parametrize("dtype, values", [(np.uint8, (1, 2)), (np.uint16, (3, 300)), (np.int32, (7, 70000))])
def test_label_voxels_counts_each_label_and_leaves_out_background(dtype, values):
    from napari_ctseg.editing.tools import label_voxels

    mask = np.zeros((4, 5, 6), dtype)
    mask[0, :2, :3] = values[0]  # 6 voxels
    mask[3, 4, :] = values[1]  # 6 voxels
    mask[2, 0, 0] = values[1]
    assert label_voxels(mask) == {str(values[0]): 6, str(values[1]): 7}
    assert label_voxels(np.zeros((2, 2, 2), dtype)) == {}
