"""Preprocessing: windowing, 2.5D context, body crop, and the way back to the slice grid."""
import numpy as np
import pytest
import torch

from napari_ctseg.errors import ModelError
from napari_ctseg.models.preprocess import (
    Preprocessing,
    SliceCrop,
    context_indices,
    find_crop,
    image8_to_input,
    image_crop,
    labels_from_probs,
    labels_to_target,
    probs_to_grid,
    slices_to_input,
    window_and_resize,
)

PREP = {"window": [-1000, 1000], "context": 1, "size": [32, 32], "crop": "none"}


def body_volume(z=6, size=64, radius=20):
    """Air with a water disc (the body) and a thin table line under it."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 30) ** 2 + (xx - 32) ** 2 <= radius ** 2
    hu = np.full((z, size, size), -1000, np.int16)
    hu[:, disc] = 0
    hu[:, 58, 4:60] = 200  # the table: one pixel thick
    return hu, disc


def test_parse_defaults_and_round_trip():
    p = Preprocessing.from_dict({})
    assert p.channels == 3 and p.window == (-1024.0, 600.0) and p.crop == "body"
    assert Preprocessing.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("bad", [{"window": [600, -1024]}, {"size": [0, 4]}, {"crop": "lungs"},
                                 {"context": -1}, {"input": "rgb"}, {"colour": 1}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ModelError):
        Preprocessing.from_dict(bad)


def test_window_clips_and_scales():
    p = Preprocessing.from_dict({"window": [-1024, 600]})
    out = p.apply_window(np.array([-3000, -1024, -212, 600, 3000], np.int16))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)
    assert p.pad_value == 0.0


def test_context_channels_replicate_the_edges():
    assert context_indices([0, 2, 4], 5, 1).tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]
    hu = np.zeros((5, 32, 32), np.float32) + np.arange(5, dtype=np.float32)[:, None, None] * 100
    x = slices_to_input(hu, [0, 4], PREP)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    expected = (np.array([[0, 0, 100], [300, 400, 400]]) + 1000) / 2000
    np.testing.assert_allclose(x[:, :, 5, 5].numpy(), expected, atol=1e-6)


def test_context_zero_gives_one_channel():
    hu = np.zeros((3, 16, 16), np.int16)
    assert slices_to_input(hu, [1], {**PREP, "context": 0}).shape == (1, 1, 32, 32)


def test_body_crop_finds_the_body_not_the_table():
    hu, disc = body_volume()
    crop = find_crop(hu, {"crop": "body", "crop_margin": 0.0, "size": [32, 32]})
    ys, xs = np.nonzero(disc)
    assert crop.side == pytest.approx(ys.max() - ys.min() + 1, abs=2)
    assert abs(crop.y0 - ys.min()) <= 2 and abs(crop.x0 - xs.min()) <= 2
    assert crop.y0 + crop.side < 58  # the table line is left out
    with_margin = find_crop(hu, {"crop": "body", "crop_margin": 0.1})
    assert with_margin.side > crop.side


def test_no_body_means_the_whole_slice():
    hu = np.full((2, 40, 30), -1000, np.int16)
    crop = find_crop(hu, {"crop": "body"})
    assert crop == SliceCrop(y0=0, x0=-5, side=40, height=40, width=30)


def test_crop_outside_the_slice_is_padded_with_air():
    hu = np.zeros((1, 10, 20), np.int16)  # all water: the square reaches past the top and bottom
    prep = {**PREP, "size": [20, 20], "pad_hu": -1000}
    crop = find_crop(hu, prep)
    assert crop.side == 20 and crop.y0 == -5
    x = window_and_resize(hu, prep, crop)
    assert x.shape == (1, 20, 20)
    assert float(x[0, 0, 10]) == pytest.approx(0.0)  # pad: -1000 HU
    assert float(x[0, 10, 10]) == pytest.approx(0.5)  # water


def test_labels_survive_the_round_trip():
    hu, disc = body_volume(z=3)
    labels = np.zeros(hu.shape, np.uint8)
    labels[:, 20:40, 15:30] = 1
    labels[:, 20:40, 34:48] = 2
    prep = {"crop": "body", "size": [32, 32]}
    crop = find_crop(hu, prep)
    target = labels_to_target(labels, crop, prep, n_classes=3)
    assert target.shape == (3, 32, 32) and set(target.unique().tolist()) == {0, 1, 2}
    probs = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    back = labels_from_probs(probs, crop)
    assert back.shape == hu.shape and back.dtype == np.uint8
    for v in (1, 2):
        inter = np.logical_and(back == v, labels == v).sum()
        assert 2 * inter / ((back == v).sum() + (labels == v).sum()) > 0.9
    grid = probs_to_grid(probs, SliceCrop(10, 10, 20, 64, 64))
    assert grid.shape == (3, 3, 64, 64)
    assert torch.all(grid[:, 0, :10] == 1) and torch.all(grid[:, 1:, :10] == 0)  # outside: background


def test_8bit_slice_matches_hu_in_the_same_window():
    """An 8-bit slice in the model's window and the HU it stands for give the same input."""
    prep = Preprocessing.from_dict({"window": [-1100, 250], "context": 0, "size": [32, 32]})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 40)).astype(np.uint8)
    hu = (-1100 + image.astype(np.float32) / 255 * 1350)[np.newaxis]
    crop = image_crop(image.shape, prep)
    x8, crop8 = image8_to_input(image, prep)
    assert crop8 == crop
    xhu = window_and_resize(hu, prep, crop)
    assert x8.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(x8[0, 0].numpy(), xhu[0].numpy(), atol=1e-5)
    assert prep.pad_value == pytest.approx((-1024 + 1100) / 1350)


def test_8bit_input_repeats_the_slice_as_context():
    x, _ = image8_to_input(np.full((8, 8), 255, np.uint8), {"context": 1, "size": [16, 16]})
    assert x.shape == (1, 3, 16, 16) and torch.equal(x[:, 0], x[:, 2])
