"""Semi-Inf-Net pseudo-labels on 8-bit slices: reading, orientation and cleaning
(``napari_ctseg.training.labels.silver_slices``; Qt-free, synthetic slices only)."""
import numpy as np
import pytest
from scipy import ndimage

from napari_ctseg.errors import TrainingError
from napari_ctseg.training.labels.silver_slices import (
    clean_pseudo_label,
    load_silver_slices,
    lung_region_8bit,
    pseudo_volumes,
    read_pseudo_slice,
)

H = W = 128
_Y, _X = np.mgrid[0:H, 0:W]


def _disc(cy, cx, r):
    return (_Y - cy) ** 2 + (_X - cx) ** 2 <= r * r


LUNGS = [((_Y - 58) / 34.0) ** 2 + ((_X - cx) / 17.0) ** 2 < 1 for cx in (36, 92)]
SPINE = _disc(104, 64, 9)
# consolidation against the right lung's lateral chest wall: tissue-dense, it replaces the
# lung's edge, so the hull of the air that is left does not reach most of it
CONSOLIDATION = _disc(62, 16, 8)

MARKS = {
    "in_lung": _disc(50, 40, 4),                                   # kept
    "consolidation": CONSOLIDATION,                                # kept
    "spine": _disc(104, 64, 5),                                    # dropped: bone, outside the lungs
    "top_edge": (_X >= 88) & (_X < 90) & (_Y < 40),                 # dropped: touches the image's edge
    "speck": (_Y == 70) & (_X >= 90) & (_X < 95),                   # dropped: 5 px
}
KEPT = ("in_lung", "consolidation")


def _slice():
    """An 8-bit lung-window slice in the experts' orientation (spine at the bottom, i.e.
    posterior): air (5) in the corners outside an elliptic body (200) cropped tightly at the
    top and bottom, two lungs (40), a spine (255) between them, a consolidation (200)."""
    img = np.full((H, W), 5, np.uint8)
    img[((_Y - 64) / 70.0) ** 2 + ((_X - 64) / 60.0) ** 2 < 1] = 200
    for lung in LUNGS:
        img[lung] = 40
    img[SPINE] = 255
    img[CONSOLIDATION] = 200
    return img


def _all_marks(names=None):
    out = np.zeros((H, W), bool)
    for name in names or MARKS:
        out |= MARKS[name]
    return out


def test_the_slice_is_what_the_tests_assume():
    img = _slice()
    assert img[0, 0] == img[0, -1] == img[-1, 0] == img[-1, -1] == 5  # air in the corners
    assert img[0, 64] == 200 and img[-1, 64] == 200  # the body touches the top and bottom edges
    assert MARKS["top_edge"][0].any() and MARKS["speck"].sum() == 5
    assert (MARKS["consolidation"] & LUNGS[0]).any() and (MARKS["consolidation"] & ~LUNGS[0]).any()
    assert (img[MARKS["spine"]] == 255).all()


def test_lung_region_covers_both_lungs_and_not_the_spine():
    img = _slice()
    region = lung_region_8bit(img)
    assert region.dtype == bool and region.shape == img.shape
    for lung in LUNGS:
        air = lung & (img == 40)
        assert region[air].mean() > 0.98
    assert not region[SPINE].any()
    assert not region[img == 5].any()  # not the air around the body
    assert not region[:, 60:68].any()  # the mediastinum between the lungs
    lab, n = ndimage.label(region)
    assert n == 2


def test_clean_pseudo_label_keeps_lung_marks_and_drops_the_others():
    img = _slice()
    kept = clean_pseudo_label(img, _all_marks())
    assert kept.dtype == bool and kept.shape == img.shape
    for name, mark in MARKS.items():
        if name in KEPT:
            assert kept[mark].all(), name
        else:
            assert not kept[mark].any(), name
    assert not kept[~_all_marks(KEPT)].any()  # nothing added


def test_each_rule_on_its_own():
    img = _slice()
    # consolidation: kept only because its outline borders the lung's air
    cons = MARKS["consolidation"]
    assert clean_pseudo_label(img, cons)[cons].all()
    assert not clean_pseudo_label(img, cons, min_contact=1.01).any()
    # the skin-line mark would pass on its lung contact; the image's edge drops it
    shifted = np.roll(MARKS["top_edge"], 2, axis=0)
    assert not shifted[0].any()
    assert clean_pseudo_label(img, shifted)[shifted].all()
    assert not clean_pseudo_label(img, MARKS["top_edge"]).any()
    # the speck is in the lung: only its size drops it
    speck = MARKS["speck"]
    assert clean_pseudo_label(img, speck, min_pixels=5)[speck].all()
    assert not clean_pseudo_label(img, speck).any()
    # the spine mark: bone, and not in the lungs even with a generous dilation
    assert not clean_pseudo_label(img, MARKS["spine"], dilate_px=1).any()
    # a lung mark that is mostly bone (a rib): dropped
    rib = img.copy()
    rib[MARKS["in_lung"]] = 255
    assert not clean_pseudo_label(rib, MARKS["in_lung"]).any()
    # an empty label stays empty
    assert not clean_pseudo_label(img, np.zeros((H, W), bool)).any()


# ---- a tiny pseudo-labelled folder ---------------------------------------------------------

FOLDER = "covid_semiseg_pseudo"


def _write(root, stem, image, mask):
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}.jpg", quality=100)
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{stem}.png")


@pytest.fixture
def pseudo(tmp_path):
    """``images/`` and ``masks/`` of two volumes: Coronacases slices stored turned 180
    degrees (as in the data set), a Radiopaedia slice as the experts see it."""
    from PIL import Image

    root = tmp_path / FOLDER
    img = _slice()
    marks = _all_marks(["in_lung", "spine"])
    for k in (10, 1, 2):
        _write(root, f"coronacases_org_001_{k}", np.rot90(img, 2), np.rot90(marks, 2))
    _write(root, "radiopaedia_x_1", img, marks)
    Image.fromarray(img).save(root / "images" / "not_a_slice.jpg", quality=100)  # no _<k>: ignored
    return root


def test_pseudo_volumes_lists_slices_in_order(pseudo):
    found = pseudo_volumes(pseudo)
    assert found == {"coronacases_org_001": [1, 2, 10], "radiopaedia_x": [1]}
    assert list(found) == ["coronacases_org_001", "radiopaedia_x"]
    assert pseudo_volumes(pseudo.parent / "nothing_here") == {}


def test_read_pseudo_slice_turns_coronacases_only(pseudo):
    from PIL import Image

    img, marks = _slice(), _all_marks(["in_lung", "spine"])
    for volume, turned in (("coronacases_org_001", True), ("radiopaedia_x", False)):
        image, label = read_pseudo_slice(pseudo, volume, 1)
        assert image.dtype == np.uint8 and label.dtype == bool and image.shape == label.shape == (H, W)
        stored = np.asarray(Image.open(pseudo / "images" / f"{volume}_1.jpg").convert("L"))
        stored_mask = np.asarray(Image.open(pseudo / "masks" / f"{volume}_1.png")) > 127
        assert np.array_equal(image, np.rot90(stored, 2) if turned else stored)
        assert np.array_equal(label, np.rot90(stored_mask, 2) if turned else stored_mask)
        # in the experts' orientation either way: what was written, turned back where it was turned
        written = np.rot90(img, 2) if turned else img  # the array saved to the file
        expected = np.rot90(written, 2) if turned else written
        assert np.abs(image.astype(int) - expected.astype(int)).mean() < 1.0  # JPEG at quality 100
        assert np.abs(image.astype(int) - written.astype(int)).mean() > 20.0 or not turned
        assert np.array_equal(label, marks)
        assert image[104, 64] > 230  # the spine at the bottom (posterior)


def test_read_pseudo_slice_checks_the_mask_size(tmp_path):
    root = tmp_path / FOLDER
    _write(root, "radiopaedia_y_1", _slice(), np.zeros((H, W // 2), bool))
    with pytest.raises(ValueError, match="does not match"):
        read_pseudo_slice(root, "radiopaedia_y", 1)
    with pytest.raises(TrainingError, match="cannot be read"):
        load_silver_slices(tmp_path, FOLDER)


def test_load_silver_slices(pseudo):
    from napari_ctseg.training.cases import Case

    cases = load_silver_slices(pseudo.parent, FOLDER)
    assert [c.name for c in cases] == [f"{FOLDER}/coronacases_org_001_{k}" for k in (1, 2, 10)] + [
        f"{FOLDER}/radiopaedia_x_1"]
    lung_mark, spine_mark = MARKS["in_lung"], MARKS["spine"]
    for case in cases:
        assert isinstance(case, Case) and case.group == "silver_slices"
        assert case.hu is None and case.image8.dtype == np.uint8 and case.image8.shape == (H, W)
        assert case.labels.dtype == np.uint8 and set(np.unique(case.labels)) == {0, 1}
        assert np.array_equal(case.labels.astype(bool), lung_mark)  # the cleaned mark only
        assert case.ignore is not None and case.ignore.dtype == bool
        assert case.ignore[spine_mark].all()  # the dropped mark: ignored, not background
        assert ndimage.binary_dilation(spine_mark, iterations=2)[case.ignore].all()  # not more
        assert case.ignore.sum() > spine_mark.sum()  # dilated by ignore_px
        assert not case.ignore[lung_mark].any()  # the kept mark is taught
    only = load_silver_slices(pseudo.parent, FOLDER, volumes=["radiopaedia_x"], ignore_px=0)
    assert [c.name for c in only] == [f"{FOLDER}/radiopaedia_x_1"]
    assert np.array_equal(only[0].ignore, spine_mark)
    # cleaning settings reach clean_pseudo_label: a huge min_pixels drops the lung mark too
    strict = load_silver_slices(pseudo.parent, FOLDER, volumes=["radiopaedia_x"], cleaning={"min_pixels": 10_000})
    assert not strict[0].labels.any() and strict[0].ignore[lung_mark].all()


def test_load_silver_slices_without_dropped_marks_has_no_ignore(tmp_path):
    root = tmp_path / FOLDER
    _write(root, "radiopaedia_z_3", _slice(), MARKS["in_lung"])
    (case,) = load_silver_slices(tmp_path, FOLDER)
    assert case.ignore is None and case.labels.sum() == MARKS["in_lung"].sum()


def test_load_silver_slices_errors(pseudo, tmp_path):
    with pytest.raises(TrainingError, match="coronacases_org_999"):
        load_silver_slices(pseudo.parent, FOLDER, volumes=["radiopaedia_x", "coronacases_org_999"])
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(TrainingError, match="no images"):
        load_silver_slices(tmp_path, "empty")
