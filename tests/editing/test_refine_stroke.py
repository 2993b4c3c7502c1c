"""Click to correct with a scribble (napari_ctseg.editing.refine_stroke), on small synthetic volumes."""
import numpy as np
import pytest

from editing.test_refine import dice, ellipsoid
from napari_ctseg.editing.refine import Click, refine_click
from napari_ctseg.editing.refine_stroke import refine_stroke, stroke_clicks
from napari_ctseg.errors import RefineError

SHAPE = (40, 96, 96)
SPACING = (2.0, 1.0, 1.0)


def organ_scan(seed=0, shape=SHAPE):
    """A 60 HU organ (radii 20 x 36 x 36 mm) in -100 HU fat; the mask misses a 6 mm layer of
    its right side (x >= 70) over its whole height."""
    organ = ellipsoid(shape, (20, 48, 48), (10, 36, 36))
    rng = np.random.default_rng(seed)
    hu = (np.where(organ, 60, -100) + rng.normal(0, 10, shape)).astype(np.int16)
    hu[:, :2] = -1000
    mask = organ.astype(np.uint8)
    mask[:, :, 70:] = 0
    return hu, mask, organ


def long_organ_scan(seed=0):
    """A long 60 HU organ (a rod 160 mm long in y, 16 x 56 mm across) in -100 HU fat; the mask
    misses a 5 mm layer of its right side (x >= 63) all along it, farther than one click reaches."""
    shape = (30, 200, 80)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    organ = (((z - 15) / 8) ** 2 + ((x - 40) / 28) ** 2 <= 1) & (y >= 20) & (y < 180)
    rng = np.random.default_rng(seed)
    hu = (np.where(organ, 60, -100) + rng.normal(0, 10, shape)).astype(np.int16)
    hu[:, :2] = -1000
    mask = organ.astype(np.uint8)
    mask[:, :, 63:] = 0
    return hu, mask, organ


def test_clicks_spread_along_the_stroke():
    line = np.array([(10, y, 40) for y in range(10, 71)])  # 60 mm in y
    clicks = stroke_clicks(line, True, SPACING, step_mm=15.0)
    ys = sorted(c.zyx[1] for c in clicks)
    assert clicks[0].zyx == (10, 40, 40)  # the middle first
    assert ys[0] == 10 and ys[-1] == 70 and 4 <= len(clicks) <= 5
    assert all(c.include for c in clicks)
    assert len(stroke_clicks(line, False, SPACING, step_mm=1.0, max_clicks=8)) == 8
    assert len(stroke_clicks(line[:5], True, SPACING)) == 1


def test_an_include_stroke_fixes_the_side_it_is_drawn_along_in_3d_in_one_edit():
    hu, mask, organ = long_organ_scan()
    stroke = np.array([(15, y, 65) for y in range(25, 176)])  # on one axial slice, along the missed side
    edit, clicks = refine_stroke(hu, mask, 1, stroke, True, SPACING)
    assert 5 <= len(clicks) <= 8
    new = edit.apply(mask.copy())
    assert np.all(new[tuple(stroke.T)] == 1)  # what the user painted
    missed = organ & (mask == 0)
    assert np.count_nonzero(new.astype(bool) & missed) > 0.9 * np.count_nonzero(missed)
    # in 3D: on every slice of the missed layer (9 of them), not only the slice painted on
    assert set(np.unique(np.nonzero(new != mask)[0])) >= set(np.unique(np.nonzero(missed)[0]))
    assert len(np.unique(np.nonzero(missed)[0])) == 9
    assert np.count_nonzero(new.astype(bool) & ~organ) < 0.02 * np.count_nonzero(organ)  # no leak
    # one click at the stroke's middle reaches only part of it
    one = refine_click(hu, mask, 1, Click((15, 100, 65)), SPACING).apply(mask.copy())
    assert np.count_nonzero(one.astype(bool) & missed) < 0.75 * np.count_nonzero(missed)


def test_an_exclude_stroke_removes_what_it_crosses_and_never_another_label():
    hu, _, organ = organ_scan()
    mask = organ.astype(np.uint8)
    extra = ellipsoid(SHAPE, (20, 48, 90), (4, 10, 5)) & ~organ  # a blob of fat labelled organ
    mask[extra] = 1
    other = ellipsoid(SHAPE, (20, 10, 88), (3, 4, 4)) & ~organ & ~extra
    mask[other] = 2
    stroke = np.array([(20, y, 90) for y in range(40, 57)] + [(20, 10, 88)])  # also across label 2
    edit, _ = refine_stroke(hu, mask, 1, stroke, False, SPACING)
    new = edit.apply(mask.copy())
    assert np.count_nonzero((new == 1) & extra) < 0.1 * np.count_nonzero(extra)
    assert np.array_equal(new == 2, mask == 2)
    assert dice(new == 1, organ) > 0.99


def test_a_stroke_that_cannot_act_says_so():
    hu, mask, _ = organ_scan()
    with pytest.raises(RefineError, match="crosses no voxel of label 1"):
        refine_stroke(hu, mask, 1, [(20, 5, 5), (20, 5, 6)], False, SPACING)
    with pytest.raises(RefineError, match="no voxel inside the volume"):
        refine_stroke(hu, mask, 1, [(99, 5, 5)], True, SPACING)
