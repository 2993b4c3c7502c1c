"""Click to correct with a box (napari_ctseg.editing.refine_box), on small synthetic volumes."""
import json

import nibabel as nib
import numpy as np
import pytest

from editing.test_refine import SHAPE, SPACING, dice, ellipsoid, phantom, write_case, write_clicks
from napari_ctseg.cli import main
from napari_ctseg.editing.refine_box import box_corners, choose_window, refine_box
from napari_ctseg.errors import RefineError
from napari_ctseg.evaluation.robot import box_on


def two_tissues_scan(seed=0):
    """A 60 HU tumour (radii 10 x 12 x 9 mm, off-centre) inside a 140 HU organ that fills most of
    the volume, with a -100 HU fat border; label 2 (another structure) already drawn elsewhere."""
    rng = np.random.default_rng(seed)
    organ = ellipsoid(SHAPE, (20, 32, 32), (19, 30, 30))
    tumour = ellipsoid(SHAPE, (18, 24, 40), (5, 12, 9))
    hu = np.where(organ, 140, -100)
    hu = np.where(tumour, 60, hu) + rng.normal(0, 8, SHAPE)
    mask = np.zeros(SHAPE, np.uint8)
    mask[ellipsoid(SHAPE, (20, 50, 14), (4, 5, 5))] = 2
    return hu.astype(np.int16), mask, tumour


def test_a_box_on_one_slice_segments_the_structure_in_3d_in_one_edit():
    hu, mask, tumour = two_tissues_scan()
    for axis in (0, 1, 2):
        box = box_on(tumour, axis)
        assert box[0][axis] == box[1][axis]  # drawn on one slice
        edit = refine_box(hu, mask, 1, box, SPACING)
        new = edit.apply(mask.copy())
        got = new == 1
        assert dice(got, tumour) > 0.9, axis
        # in 3D: slices of the tumour nobody drew are found
        slices = np.unique(np.nonzero(got)[axis])
        assert len(slices) >= 0.8 * len(np.unique(np.nonzero(tumour)[axis]))
        assert np.array_equal(new == 2, mask == 2)  # another label is never touched


def test_the_box_finds_its_structure_where_the_centre_is_not_it():
    """A crescent (a thick shell's half) around the box's centre: the centre is the tissue
    around it, not the structure, yet the structure is the tissue that fills the box and not its
    surroundings."""
    rng = np.random.default_rng(1)
    outer = ellipsoid(SHAPE, (20, 32, 32), (12, 20, 20))
    inner = ellipsoid(SHAPE, (20, 32, 32), (8, 13, 13))
    crescent = outer & ~inner
    crescent[:, :, :32] = False
    hu = (np.where(crescent, 60, -100) + rng.normal(0, 8, SHAPE)).astype(np.int16)
    box = box_on(crescent, 0)
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    assert hu[tuple((lo + hi) // 2)] < -50  # the box's centre is fat
    new = refine_box(hu, np.zeros(SHAPE, np.uint8), 1, box, SPACING).apply(np.zeros(SHAPE, np.uint8))
    assert dice(new, crescent) > 0.85


def test_the_window_is_the_tissue_that_fills_the_box_not_its_surroundings():
    rng = np.random.default_rng(2)
    inside = np.concatenate([rng.normal(60, 8, 700), rng.normal(-100, 8, 300)])
    around = rng.normal(-100, 8, 500)
    med, half, _ = choose_window(inside, around)
    assert abs(med - 60) < 8 and half < 80
    assert choose_window(inside[:10], around) is None


def test_bad_boxes_say_why():
    hu, mask, _ = two_tissues_scan()
    with pytest.raises(RefineError, match="outside the volume"):
        refine_box(hu, mask, 1, ((100, 0, 0), (120, 5, 5)), SPACING)
    with pytest.raises(RefineError, match="two sides at least"):
        refine_box(hu, mask, 1, ((5, 10, 10), (5, 10, 30)), SPACING)
    with pytest.raises(RefineError, match="mm wide on a side"):
        refine_box(hu, mask, 1, ((5, 10, 10), (5, 11, 30)), SPACING)
    with pytest.raises(RefineError, match="two opposite corners"):
        box_corners([(1, 2)], SHAPE)
    lo, hi = box_corners(((5, 30, 2), (5, -4, 70)), SHAPE)  # any order; clipped to the volume
    assert lo.tolist() == [5, 0, 2] and hi.tolist() == [5, 30, 63]


def test_cli_refine_takes_a_box(tmp_path, capsys):
    """{"box": [[i, j, k], [i, j, k]]}: the structure inside, added to the mask's label."""
    hu, organ = phantom()
    mask = np.zeros(SHAPE, np.uint8)
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    lo, hi = box_on(organ, 0)
    corners = [list(geo.display_to_source_index(lo)), list(geo.display_to_source_index(hi))]
    clicks = write_clicks(tmp_path / "b.json", [{"box": corners}])
    out = tmp_path / "fixed.nii.gz"
    assert main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["clicks"][0]
    assert row["box"] == [list(lo), list(hi)] and row["added_voxels"] > 1000
    written = geo.to_display(np.asarray(nib.load(out).dataobj))
    assert dice(written, organ) > 0.95
    bad = write_clicks(tmp_path / "x.json", [{"box": corners, "label": "exclude"}])
    code = main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(bad),
                 "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err  # an empty mask: nothing to take out
    assert code == 2 and "holds no label 1" in err and not (tmp_path / "o.nii.gz").exists()
    code = main(["refine", str(scan), "--target", "lungs", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "name it with --label" in err


def test_the_warm_child_gives_the_same_box_edit_from_the_part_of_the_scan_it_reads():
    from napari_ctseg.editing.refine_process import RefineProcess

    hu, mask, tumour = two_tissues_scan()
    box = box_on(tumour, 1)
    here = refine_box(hu, mask, 1, box, SPACING)
    process = RefineProcess()
    try:
        there = process.submit_box(hu, mask, 1, box, SPACING).result(timeout=120)
    finally:
        process.close()
    assert here.box == there.box and np.array_equal(here.values, there.values)


def test_the_robot_box_is_the_tight_rectangle_of_the_largest_cross_section():
    s = np.zeros((10, 20, 30), bool)
    s[2:8, 5:9, 10:20] = True
    s[4, 3:15, 8:25] = True  # the widest axial slice
    assert box_on(s, 0) == ((4, 3, 8), (4, 14, 24))
    lo, hi = box_on(s, 2)
    assert lo[2] == hi[2] and (lo[0], hi[0]) == (2, 7)
    assert box_on(np.zeros((3, 3, 3), bool), 0) is None


def test_a_box_of_three_sides_bounds_the_structure_in_3d():
    """A box given in 3D (the CLI's, corners differing on every axis): nothing is added outside it."""
    hu, mask, tumour = two_tissues_scan()
    idx = np.argwhere(tumour)
    lo, hi = idx.min(0), idx.max(0)
    edit = refine_box(hu, mask, 1, (lo, hi), SPACING)
    got = edit.apply(mask.copy()) == 1
    assert dice(got, tumour) > 0.9
    outside = np.ones(SHAPE, bool)
    outside[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))] = False
    assert not (got & outside).any()


def leak_scan(seed=0):
    """A 140 HU organ whose mask leaked into a 20 HU neighbour (a piece of bowel) beside it, in
    -100 HU fat; label 2 elsewhere."""
    rng = np.random.default_rng(seed)
    organ = ellipsoid(SHAPE, (20, 32, 22), (14, 24, 16))
    bowel = ellipsoid(SHAPE, (20, 30, 48), (7, 10, 9)) & ~organ
    hu = np.where(organ, 140, -100)
    hu = np.where(bowel, 20, hu) + rng.normal(0, 8, SHAPE)
    mask = (organ | bowel).astype(np.uint8)
    mask[ellipsoid(SHAPE, (6, 56, 56), (3, 4, 4))] = 2
    return hu.astype(np.int16), mask, organ, bowel


def test_an_exclude_box_takes_the_structure_inside_it_out_of_the_label_in_3d():
    hu, mask, organ, bowel = leak_scan()
    for axis in (0, 1, 2):
        box = box_on(bowel, axis)
        edit = refine_box(hu, mask, 1, box, SPACING, include=False)
        new = edit.apply(mask.copy())
        got = new == 1
        assert np.count_nonzero(got & bowel) < 0.05 * np.count_nonzero(bowel), axis  # out, on every slice
        assert got[organ].all(), axis  # the organ kept
        assert np.array_equal(new == 2, mask == 2)  # another label is never touched
        assert set(np.unique(new[mask != new])) <= {0}  # it only removes


def test_an_exclude_box_never_reaches_past_its_outline():
    """A box over part of the organ itself, across its edge (the structure inside is the label's
    own tissue): only what lies within the box's outline, on its slice and the slices along its
    normal, goes; the walker alone would take some of the organ beyond it on other slices."""
    hu, mask, organ, bowel = leak_scan()
    z = 20
    lo, hi = (z, 14, 24), (z, 50, 40)
    new = refine_box(hu, mask, 1, (lo, hi), SPACING, include=False).apply(mask.copy())
    gone = (mask == 1) & (new != 1)
    assert gone.any()
    outline = np.zeros(SHAPE, bool)
    outline[:, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
    assert not (gone & ~outline).any()


def test_the_warm_child_gives_the_same_exclude_box_edit():
    from napari_ctseg.editing.refine_process import RefineProcess

    hu, mask, organ, bowel = leak_scan()
    box = box_on(bowel, 0)
    here = refine_box(hu, mask, 1, box, SPACING, include=False)
    process = RefineProcess()
    try:
        there = process.submit_box(hu, mask, 1, box, SPACING, include=False).result(timeout=120)
    finally:
        process.close()
    assert not here.is_empty and here.box == there.box and np.array_equal(here.values, there.values)


def test_cli_refine_takes_an_exclude_box(tmp_path, capsys):
    hu, mask, organ, bowel = leak_scan()
    mask[mask == 2] = 0
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    lo, hi = box_on(bowel, 1)
    corners = [list(geo.display_to_source_index(lo)), list(geo.display_to_source_index(hi))]
    clicks = write_clicks(tmp_path / "b.json", [{"box": corners, "label": "exclude"}])
    out = tmp_path / "fixed.nii.gz"
    assert main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["clicks"][0]
    assert row["removed_voxels"] > 0.9 * np.count_nonzero(bowel) and row["added_voxels"] == 0
    written = geo.to_display(np.asarray(nib.load(out).dataobj))
    assert dice(written == 1, organ) > 0.99
