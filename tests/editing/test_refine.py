"""Click to correct (napari_ctseg.editing.refine) and ``ctseg refine``, on small synthetic volumes."""
import json

import nibabel as nib
import numpy as np
import pytest
from synthetic import write_nifti

from napari_ctseg.cli import main
from napari_ctseg.editing.tools import RegionEdit
from napari_ctseg.errors import CTSegError, RefineError
from napari_ctseg.editing.refine import Click, choose_radius_mm, refine, refine_click
from napari_ctseg.io.volume import Geometry

SHAPE = (40, 64, 64)
SPACING = (2.0, 1.0, 1.0)


def ellipsoid(shape, centre, radii):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
        + ((x - centre[2]) / radii[2]) ** 2 <= 1


def phantom(seed=0, shape=SHAPE):
    """A 60 HU "organ" (a ball of radius 20 mm on 2 x 1 x 1 mm voxels) in -100 HU fat, noisy,
    with air in the first rows (so that the reader sees a CT in HU)."""
    organ = ellipsoid(shape, (20, 32, 32), (10, 20, 20))
    rng = np.random.default_rng(seed)
    hu = np.where(organ, 60, -100) + rng.normal(0, 12, shape)
    hu[:, :2] = -1000
    return hu.astype(np.int16), organ


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def changed_slices(before, after):
    return np.unique(np.nonzero(before != after)[0])


# --- include / exclude ---------------------------------------------------------------------------
def test_include_click_adds_the_missed_part_in_3d():
    hu, organ = phantom()
    mask = organ.astype(np.uint8)
    mask[:, :, 42:] = 0  # the mask misses the organ's right part
    edit = refine_click(hu, mask, 1, Click((20, 32, 47)), SPACING)
    new = edit.apply(mask.copy())
    assert dice(mask, organ) < 0.93 and dice(new, organ) > 0.99
    assert not np.any((new == 1) & ~organ)  # nothing outside the organ
    assert len(changed_slices(mask, new)) >= 10  # in 3D, not only the clicked slice
    assert np.all(new[mask == 1] == 1)  # an include only adds


def test_include_never_adds_a_separate_piece():
    hu, organ = phantom()
    other = ellipsoid(SHAPE, (20, 32, 60), (3, 3, 3))  # same HU, in the box, apart from the organ
    hu = np.where(other, hu + 160, hu).astype(np.int16)
    mask = organ.astype(np.uint8)
    mask[:, :, 42:] = 0
    new = refine_click(hu, mask, 1, Click((20, 32, 47)), SPACING).apply(mask.copy())
    assert dice(new, organ) > 0.99 and not np.any(new[other])


def test_exclude_click_removes_an_extra_blob():
    hu, organ = phantom()
    blob = ellipsoid(SHAPE, (20, 32, 56), (3, 6, 6)) & ~organ  # fat wrongly in the mask
    mask = (organ | blob).astype(np.uint8)
    edit = refine_click(hu, mask, 1, Click((20, 32, 57), include=False), SPACING)
    new = edit.apply(mask.copy())
    assert np.count_nonzero(blob & (new == 1)) <= 0.05 * np.count_nonzero(blob)
    assert np.count_nonzero(organ & (new == 0)) <= 0.01 * np.count_nonzero(organ)
    assert len(changed_slices(mask, new)) >= 3
    assert not np.any((new == 1) & (mask == 0))  # an exclude only removes


def test_exclude_removes_only_the_piece_connected_to_the_click():
    hu, organ = phantom()
    left = ellipsoid(SHAPE, (20, 32, 3), (3, 3, 3))
    right = ellipsoid(SHAPE, (20, 32, 61), (3, 3, 3))  # two false islands in the fat
    mask = (organ | left | right).astype(np.uint8)
    new = refine_click(hu, mask, 1, Click((20, 32, 61), include=False), SPACING).apply(mask.copy())
    assert not np.any(new[right]) and np.all(new[left] == 1) and np.all(new[organ] == 1)


def test_other_labels_are_never_touched():
    right = ellipsoid(SHAPE, (20, 32, 18), (8, 14, 14))  # two touching "lungs" of the same HU
    left = ellipsoid(SHAPE, (20, 32, 46), (8, 14, 14)) & ~right
    noise = np.random.default_rng(1).normal(0, 12, SHAPE)
    hu = (np.where(right | left, 60, -100) + noise).astype(np.int16)
    mask = np.zeros(SHAPE, np.uint8)
    mask[right] = 1
    mask[left] = 2
    mask[right & (np.arange(64)[None, None, :] > 24)] = 0  # label 1 misses its side next to label 2
    new = refine_click(hu, mask, 1, Click((20, 32, 28)), SPACING).apply(mask.copy())
    assert np.array_equal(new == 2, mask == 2)
    assert dice(new == 1, right) > dice(mask == 1, right) + 0.05
    back = refine_click(hu, new, 2, Click((20, 32, 46), include=False), SPACING).apply(new.copy())
    assert np.array_equal(back == 1, new == 1)  # excluding label 2 leaves label 1 alone
    with pytest.raises(RefineError, match="on label 2"):
        refine_click(hu, mask, 1, Click((20, 32, 46)), SPACING)


def test_region_edit_undoes_exactly_and_refine_applies_clicks_in_order():
    hu, organ = phantom()
    mask = organ.astype(np.uint8)
    mask[:, :, 42:] = 0
    mask[ellipsoid(SHAPE, (20, 32, 5), (3, 3, 3))] = 1
    clicks = [Click((20, 32, 47)), Click((20, 32, 5), include=False)]
    results = []
    new, edits = refine(hu, mask, 1, clicks, SPACING, results=results)
    assert len(edits) == 2 and all(isinstance(e, RegionEdit) and not e.is_empty for e in edits)
    assert results[0].added > 0 and results[0].removed == 0
    assert results[1].removed > 0 and results[1].added == 0
    assert dice(new, organ) > 0.99
    # undo, newest first: each edit's box gets back what was there before it
    undo, states = [], [mask.copy()]
    for e in edits:
        undo.append(RegionEdit(e.box, states[-1][e.box].copy()))
        states.append(e.apply(states[-1].copy()))
    assert np.array_equal(states[-1], new)
    for u in reversed(undo):
        u.apply(new)
    assert np.array_equal(new, mask)


def test_radius_follows_the_structure_size():
    _, organ = phantom()
    tumour = ellipsoid(SHAPE, (20, 32, 32), (2, 4, 4))
    assert choose_radius_mm(organ.astype(np.uint8), 1, Click((20, 32, 50)), SPACING) >= 19
    assert choose_radius_mm(tumour.astype(np.uint8), 1, Click((20, 32, 37)), SPACING) <= 20


def test_anisotropic_spacing_and_a_click_on_the_volume_edge():
    hu, organ = phantom()
    mask = organ.astype(np.uint8)
    mask[:22] = 0  # the top half missing: click right on the organ's top slice region
    new = refine_click(hu, mask, 1, Click((12, 32, 32)), (2.0, 1.0, 1.0)).apply(mask.copy())
    assert dice(new, organ) > 0.97 and not np.any((new == 1) & ~organ)
    edge = refine_click(hu, mask, 1, Click((0, 0, 0)), SPACING)  # in the fat at a corner
    assert not np.any(edge.apply(mask.copy())[organ & (mask == 0)])


# --- errors --------------------------------------------------------------------------------------
def test_errors_are_refine_errors_with_clear_messages():
    hu, organ = phantom()
    mask = organ.astype(np.uint8)
    assert issubclass(RefineError, CTSegError)
    with pytest.raises(RefineError, match="outside the volume"):
        refine_click(hu, mask, 1, Click((40, 0, 0)), SPACING)
    with pytest.raises(RefineError, match="outside the volume"):
        refine(hu, mask, 1, [Click((1, 1, 1)), Click((-1, 0, 0))], SPACING)
    with pytest.raises(RefineError, match="no clicks"):
        refine(hu, mask, 1, [], SPACING)
    with pytest.raises(RefineError, match="shape 40x64x63 differs"):
        refine_click(hu, mask[:, :, :63], 1, Click((1, 1, 1)), SPACING)
    with pytest.raises(RefineError, match="holds no label 3"):
        refine_click(hu, mask, 3, Click((20, 32, 32), include=False), SPACING)
    two = mask.copy()
    two[organ] = 2
    with pytest.raises(RefineError, match="include click .* is on label 2, not on label 1"):
        refine_click(hu, two, 1, Click((20, 32, 32)), SPACING)


# --- source <-> display indices --------------------------------------------------------------------
@pytest.mark.parametrize("affine", [
    np.diag([1.0, 1.0, 1.0, 1.0]),
    np.diag([-0.7, -0.8, 2.5, 1.0]),
    np.array([[0, 0, -2.0, 5], [-1.0, 0, 0, 3], [0, 1.5, 0, -7], [0, 0, 0, 1]]),
    np.array([[0, 1.0, 0, 0], [0, 0, -1.0, 0], [-2.0, 0, 0, 0], [0, 0, 0, 1]]),
])
def test_source_to_display_index_follows_to_display(affine):
    shape = (5, 6, 7)
    source = np.arange(np.prod(shape)).reshape(shape)
    geo = Geometry.for_source(affine, shape)
    display = geo.to_display(source)
    for ijk in np.ndindex(shape):
        zyx = geo.source_to_display_index(ijk)
        assert display[zyx] == source[ijk]
        assert geo.display_to_source_index(zyx) == ijk
    with pytest.raises(ValueError, match="outside"):
        geo.source_to_display_index((5, 0, 0))


# --- the CLI ---------------------------------------------------------------------------------------
# The source array (i, j, k) is the display array (z, y, x) turned about: i runs along
# display x reversed, j along z reversed, k along y (an affine permuting and flipping axes).
CLI_AFFINE = np.array([[1.0, 0, 0, -30], [0, 0, -1.0, 40], [0, 2.0, 0, -50], [0, 0, 0, 1]])


def write_case(tmp_path, mask_display, hu_display):
    geo = Geometry.for_source(CLI_AFFINE, (64, 40, 64))
    assert geo.display_shape == SHAPE and np.allclose(geo.spacing, SPACING)
    scan = write_nifti(tmp_path / "scan.nii.gz", geo.to_source(hu_display), CLI_AFFINE)
    mask = write_nifti(tmp_path / "mask.nii.gz", geo.to_source(mask_display).astype(np.uint8), CLI_AFFINE)
    return geo, scan, mask


def write_clicks(path, clicks):
    path.write_text(json.dumps(clicks))
    return path


def test_cli_refine_end_to_end_on_a_turned_nifti(tmp_path, capsys):
    hu, organ = phantom()
    mask = organ.astype(np.uint8)
    mask[:, :, 42:] = 0
    mask[ellipsoid(SHAPE, (20, 32, 5), (3, 3, 3))] = 1
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    include_zyx, exclude_zyx = (20, 32, 47), (20, 32, 5)
    inc_ijk, exc_ijk = geo.display_to_source_index(include_zyx), geo.display_to_source_index(exclude_zyx)
    assert inc_ijk != include_zyx  # the conversion really matters here
    clicks = write_clicks(tmp_path / "clicks.json", [{"ijk": list(inc_ijk), "label": "include"},
                                                     {"ijk": list(exc_ijk), "label": "exclude"}])
    out = tmp_path / "out" / "fixed.nii.gz"
    (tmp_path / "out").mkdir()
    assert main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("click 1 include at ijk") and "+" in text[0] and " s" in text[0]
    assert text[1].startswith("click 2 exclude") and text[-1].startswith("wrote")
    img = nib.load(out)
    written = np.asarray(img.dataobj)
    assert written.shape == (64, 40, 64) and np.allclose(img.affine, CLI_AFFINE)
    expected, _ = refine(hu, mask, 1, [Click(include_zyx), Click(exclude_zyx, include=False)], SPACING)
    assert np.array_equal(written, geo.to_source(expected))
    organ_src = geo.to_source(organ)
    assert written[inc_ijk] == 1 and written[exc_ijk] == 0
    assert dice(written, organ_src) > 0.99 > dice(geo.to_source(mask), organ_src)


def test_cli_refine_json_and_a_label_of_the_users_own(tmp_path, capsys):
    hu, organ = phantom()
    mask = np.where(organ, 3, 0).astype(np.uint8)  # a label the liver card does not have
    mask[:, :, 42:] = 0
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    clicks = write_clicks(tmp_path / "c.json", [{"ijk": list(geo.display_to_source_index((20, 32, 47))),
                                                 "label": "include"}])
    out = tmp_path / "fixed.nii"
    assert main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(out), "--label", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["label"] == 3 and report["clicks"][0]["label"] == "include"
    assert report["clicks"][0]["added_voxels"] > 500 and report["clicks"][0]["removed_voxels"] == 0
    written = np.asarray(nib.load(out).dataobj)
    assert set(np.unique(written)) == {0, 3}
    assert dice(written, geo.to_source(organ)) > 0.99


@pytest.mark.parametrize("content, message", [
    ("[]", "the list is empty"),
    ("{not json", "not valid JSON"),
    ('{"ijk": [1, 2, 3]}', "must hold a JSON list"),
    ('[{"ijk": [1, 2], "label": "include"}]', "click 1: \"ijk\" must be three whole voxel indices"),
    ('[{"ijk": [1.5, 2, 3], "label": "include"}]', "three whole voxel indices"),
    ('[{"ijk": [1, 2, 3], "label": "add"}]', '"label" must be "include" or "exclude"'),
    ('[{"ijk": [1, 2, 3]}]', 'write {"ijk"'),
    ('[{"ijk": [1, 2, 3], "label": "include"}, {"ijk": [64, 0, 0], "label": "exclude"}]',
     "click 2 at ijk [64, 0, 0] is outside the scan (source shape 64x40x64"),
])
def test_cli_refine_bad_clicks_one_line(tmp_path, capsys, content, message):
    hu, organ = phantom()
    _, scan, mask_path = write_case(tmp_path, organ.astype(np.uint8), hu)
    clicks = tmp_path / "clicks.json"
    clicks.write_text(content)
    code = main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_cli_refine_click_on_another_label_or_no_label_one_line(tmp_path, capsys):
    hu, organ = phantom()
    mask = np.where(organ, 2, 0).astype(np.uint8)
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    ijk = list(geo.display_to_source_index((20, 32, 32)))
    for kind, message in (("include", f"click 1 (include) at ijk {ijk} is on label 2, not on label 1"),
                          ("exclude", "holds no label 1")):
        clicks = write_clicks(tmp_path / "c.json", [{"ijk": ijk, "label": kind}])
        code = main(["refine", str(scan), "--target", "lungs", "--mask", str(mask_path), "--clicks", str(clicks),
                     "--out", str(tmp_path / "o.nii.gz"), "--label", "1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err


def test_cli_refine_clicks_of_a_two_label_target_refine_the_label_they_are_on_or_near(tmp_path, capsys):
    """Lungs without --label: an include on background grows the nearest lung, an exclude
    shrinks the lung it is on; each lung keeps its own value."""
    rng = np.random.default_rng(1)
    right = ellipsoid(SHAPE, (20, 32, 18), (8, 14, 10))
    left = ellipsoid(SHAPE, (20, 32, 46), (8, 14, 10))
    hu = (np.where(right | left, -850, 40) + rng.normal(0, 10, SHAPE)).astype(np.int16)
    hu[:, :2] = -1000
    mask = np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)
    mask[:, :, 50:] = 0  # the left lung's outer part is missing ...
    blob = ellipsoid(SHAPE, (20, 32, 4), (3, 4, 4)) & ~right
    mask[blob] = 1  # ... and the right has an extra blob of soft tissue
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    include, exclude = (20, 32, 53), (20, 32, 4)  # include: background, 3 mm from the left lung
    clicks = write_clicks(tmp_path / "c.json", [
        {"ijk": list(geo.display_to_source_index(include)), "label": "include"},
        {"ijk": list(geo.display_to_source_index(exclude)), "label": "exclude"}])
    out = tmp_path / "fixed.nii.gz"
    assert main(["refine", str(scan), "--target", "lungs", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["refines"] for c in report["clicks"]] == [2, 1] and report["label"] == [1, 2]
    written = geo.to_display(np.asarray(nib.load(out).dataobj))
    assert written[include] == 2 and written[exclude] == 0
    assert dice(written == 2, left) > 0.97 > dice(mask == 2, left)
    assert np.count_nonzero((written == 1) & blob) < 0.1 * np.count_nonzero(blob)
    assert not np.any((written == 1) & (mask != 1))  # the right lung only lost voxels ...
    far = ~ellipsoid(SHAPE, (20, 32, 4), (6, 12, 12))
    assert np.array_equal((written == 1) & far, (mask == 1) & far)  # ... near the blob only
    # nothing to choose: an exclude on background
    for zyx, kind, message in (((20, 4, 32), "exclude", "is on background"),):
        c = write_clicks(tmp_path / "bad.json", [{"ijk": list(geo.display_to_source_index(zyx)), "label": kind}])
        code = main(["refine", str(scan), "--target", "lungs", "--mask", str(mask_path), "--clicks", str(c),
                     "--out", str(tmp_path / "o.nii.gz")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err


def test_cli_refine_mask_off_the_scan_grid_one_line(tmp_path, capsys):
    hu, organ = phantom()
    _, scan, _ = write_case(tmp_path, organ.astype(np.uint8), hu)
    clicks = write_clicks(tmp_path / "c.json", [{"ijk": [1, 2, 3], "label": "include"}])
    small = write_nifti(tmp_path / "small.nii.gz", np.zeros((64, 40, 63), np.uint8), CLI_AFFINE)
    moved_affine = CLI_AFFINE.copy()
    moved_affine[0, 3] += 5
    moved = write_nifti(tmp_path / "moved.nii.gz", np.zeros((64, 40, 64), np.uint8), moved_affine)
    for path, message in ((small, "differs from the scan's 64x40x64"), (moved, "affine differs")):
        code = main(["refine", str(scan), "--target", "liver", "--mask", str(path), "--clicks", str(clicks),
                     "--out", str(tmp_path / "o.nii.gz")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err and "scan's grid" in err


@pytest.mark.parametrize("room", ["shared memory", "no room in shared memory"])
def test_a_click_in_the_child_process_gives_the_whole_scans_edit(room, monkeypatch):
    """refine_process sends the child only the crop a click can see: the edit is the same, voxel
    for voxel, as on the whole scan, for an include and an exclude click, cropped on every axis;
    the crop goes in shared memory, or pickled where /dev/shm has no room, and none is left behind."""
    from pathlib import Path

    from napari_ctseg import jobs

    if room != "shared memory":
        monkeypatch.setattr(jobs, "shared_memory_free", lambda: 1000)
    before = {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()
    from napari_ctseg.editing.refine import Click, refine_click
    from napari_ctseg.editing.refine_process import RefineProcess, click_crop, refine_click_cropped

    shape, spacing = (90, 240, 240), (2.0, 1.0, 1.0)
    z, y, x = np.indices(shape)
    organ = (((z - 55) * 2.0 / 40) ** 2 + ((y - 140) / 60) ** 2 + ((x - 150) / 70) ** 2) <= 1
    hu = (np.where(organ, 60.0, -100.0) + np.random.default_rng(1).normal(0, 10, shape)).astype(np.float32)
    mask = organ.astype(np.uint8)
    mask[68:] = 0                       # the cap missing
    mask[40:46, 60:70, 200:215] = 1     # extra, in fat
    clicks = [Click((72, 140, 150), True), Click((43, 65, 207), False)]
    process = RefineProcess()
    try:
        for click in clicks:
            crop = click_crop(shape, click, spacing)
            assert any(s.start > 0 or s.stop < n for s, n in zip(crop, shape))  # a real crop
            whole = refine_click(hu, mask, 1, click, spacing)
            assert not whole.is_empty
            for edit in (refine_click_cropped(hu, mask, 1, click, spacing),
                         process.submit(hu, mask, 1, click, spacing).result(timeout=120)):
                assert edit.box == whole.box
                assert np.array_equal(edit.values, whole.values)
    finally:
        process.close()
    after = {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()
    assert after == before


def test_an_include_takes_the_partial_volume_layer_that_an_outline_includes(monkeypatch):
    """An organ (140 HU) in fat (-100 HU) with a one-voxel partial-volume shell (60 HU, mostly
    organ): the mask lacks the shell and a cap; an include click on the cap's gap adds the cap
    and, near the click, the shell; never the fat. Without the rim step the shell stays out."""
    from napari_ctseg.editing import refine as refine_mod

    shape, spacing = (60, 120, 120), (1.0, 1.0, 1.0)
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 30.0) ** 2 + (y - 60.0) ** 2 + (x - 60.0) ** 2)
    organ = r <= 22
    shell = organ & (r > 21)
    hu = np.where(organ, 140.0, -100.0)
    hu[shell] = 60.0
    hu = (hu + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)
    mask = (organ & ~shell).astype(np.uint8)
    mask[:16] = 0  # the cap missing
    click = Click((12, 60, 60), True)
    added = {}
    for rim in (True, False):
        monkeypatch.setattr(refine_mod, "RIM", rim)
        new, _ = refine(hu, mask, 1, [click], spacing)
        added[rim] = (new == 1) & (mask == 0)
    near = shell & (np.sqrt((z - 12.0) ** 2 + (y - 60.0) ** 2 + (x - 60.0) ** 2) <= 15)
    assert near.sum() > 100
    assert np.mean(added[True][near]) > 0.8          # the shell beside the click joins (its face neighbours)
    assert np.mean(added[False][near]) < 0.1         # which the walker alone leaves out
    assert not np.any(added[True] & ~organ)           # never the fat


def test_an_exclude_peels_the_same_mistake_beyond_its_reach(monkeypatch):
    """An organ (60 HU) in fat (-100 HU), the mask 6 mm too large all round: one exclude click in
    the fat layer removes the layer near the click, and with the peel the layer farther than the
    exclude's reach too (it looks like the click, not like the organ); never the organ."""
    from napari_ctseg.editing import refine as refine_mod

    shape, spacing = (64, 128, 128), (1.0, 1.0, 1.0)
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 32.0) ** 2 + (y - 64.0) ** 2 + (x - 64.0) ** 2)
    organ = r <= 24
    hu = (np.where(organ, 60.0, -100.0) + np.random.default_rng(0).normal(0, 8, shape)).astype(np.float32)
    mask = (r <= 30).astype(np.uint8)
    click = Click((32, 64, 64 + 27), include=False)  # in the middle of the 6 mm fat layer
    far = (mask == 1) & ~organ & (np.sqrt((z - 32.0) ** 2 + (y - 64.0) ** 2 + (x - 91.0) ** 2) > 2 * 3 + 10 + 2)
    far &= np.sqrt((z - 32.0) ** 2 + (y - 64.0) ** 2 + (x - 91.0) ** 2) < 40  # within the box
    assert far.sum() > 2000
    removed = {}
    for peel in (True, False):
        monkeypatch.setattr(refine_mod, "PEEL", peel)
        new, _ = refine(hu, mask, 1, [click], spacing)
        removed[peel] = (mask == 1) & (new == 0)
        assert not np.any(removed[peel] & organ)  # never the organ
    assert np.mean(removed[True][far]) > 0.8   # the layer beyond the reach goes with the peel
    assert np.mean(removed[False][far]) < 0.05  # and stays without it (the reach alone)


def test_cli_refine_takes_a_stroke_too(tmp_path, capsys):
    """{"stroke": [[i, j, k], ...], "label": ...}: a scribble, as the viewer's, one entry."""
    hu, organ = phantom()
    mask = organ.astype(np.uint8)
    mask[:, :, 42:] = 0  # the organ's right side is missing
    geo, scan, mask_path = write_case(tmp_path, mask, hu)
    stroke = [list(geo.display_to_source_index((20, y, 46))) for y in range(24, 41)]
    clicks = write_clicks(tmp_path / "s.json", [{"stroke": stroke, "label": "include"}])
    out = tmp_path / "fixed.nii.gz"
    assert main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(clicks),
                 "--out", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["clicks"][0]
    assert row["stroke_voxels"] == 17 and row["added_voxels"] > 500 and row["ijk"] == stroke[0]
    written = geo.to_display(np.asarray(nib.load(out).dataobj))
    assert all(written[20, y, 46] == 1 for y in range(24, 41))
    assert dice(written, organ) > 0.99 > dice(mask, organ)
    bad = write_clicks(tmp_path / "b.json", [{"stroke": [], "label": "include"}])
    code = main(["refine", str(scan), "--target", "liver", "--mask", str(mask_path), "--clicks", str(bad),
                 "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and '"stroke" must be a list' in err
