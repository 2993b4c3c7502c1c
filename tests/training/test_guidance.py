"""Guidance-aware (click-to-correct) versions: the maps, the network, the refiner, the training."""
import json

import numpy as np
import pytest
import torch

from napari_ctseg.editing.refine import Click, refine
from napari_ctseg.editing.refine_model import GuidedRefiner
from napari_ctseg.errors import ModelError, RefineError
from napari_ctseg.models.guidance import GuidanceSpec, gaussian_maps, guidance_for_slices
from napari_ctseg.models.preprocess import SliceCrop
from napari_ctseg.models.unet import UNet2D, build_model
from training.test_training import SPLIT, TINY, data  # noqa: F401  (the fixture)


def test_gaussian_maps_are_3d_gaussians_in_mm():
    rows = cols = np.arange(21) * 2.0  # 2 mm pixels
    pts = np.array([[10.0, 20.0, 20.0], [10.0, 0.0, 0.0]])
    maps = gaussian_maps(pts, [True, False], [10.0, 20.0], rows, cols, sigma_mm=10.0)
    assert maps.shape == (2, 2, 21, 21)
    assert maps[0, 0, 10, 10] == pytest.approx(1.0)
    assert maps[0, 1, 0, 0] == pytest.approx(1.0)  # the exclude click in its own channel
    assert maps[0, 0, 0, 0] < 0.02
    assert maps[1, 0, 10, 10] == pytest.approx(np.exp(-0.5), rel=1e-4)  # 10 mm away in z
    assert maps[0, 0, 10, 15] == pytest.approx(np.exp(-0.5), rel=1e-4)  # 10 mm away in x


def test_maps_follow_the_crop_and_the_spacing():
    crop = SliceCrop(y0=-10, x0=20, side=80, height=64, width=100)
    mask = np.zeros((5, 64, 100), np.uint8)
    mask[2, 10:30, 40:60] = 1
    g = guidance_for_slices(mask, 1, [2], [Click((2, 30, 60))], crop, (16, 16), (3.0, 0.5, 0.5),
                            GuidanceSpec(sigma_mm=4.0))
    assert g.shape == (1, 3, 16, 16)
    # the click's voxel (30, 60) lies in network pixel ((30 + 10) / 5, (60 - 20) / 5) = (8, 8)
    peak = np.unravel_index(int(torch.argmax(g[0, 1])), (16, 16))
    assert peak == (8, 8)
    assert float(g[0, 2].max()) == 0.0  # no exclude click
    assert float(g[0, 0].max()) == pytest.approx(1.0)  # the mask channel
    assert float(g[0, 0, 0].max()) == 0.0


def test_a_guidance_aware_network_runs_with_or_without_maps():
    net = build_model({"name": "unet2d", "in_channels": 3, "n_classes": 2, "base": 4, "depth": 2,
                       "guidance_channels": 3}).eval()
    x = torch.rand(2, 3, 16, 16)
    g = torch.zeros(2, 3, 16, 16)
    assert torch.allclose(net(x), net(x, g))
    assert torch.allclose(net(torch.cat([x, g], 1)), net(x, g))
    with pytest.raises(ModelError, match="guidance maps"):
        net(x, torch.zeros(2, 2, 16, 16))
    plain = build_model({"name": "unet2d", "in_channels": 3, "n_classes": 2, "base": 4, "depth": 2}).eval()
    with pytest.raises(ModelError, match="takes no clicks"):
        plain(x, g)


def _follower():
    from synthetic import follower_network

    return follower_network()


class _Card:
    target, version, labels = "organ", "g1", {"organ": 1}
    preprocessing = {"window": [-200.0, 300.0], "context": 0, "size": [64, 64], "crop": "none"}
    takes_clicks = True

    def __init__(self, sigma):
        self.guidance = {"sigma_mm": sigma, "reach_mm": 25.0}


def test_the_refiner_edits_in_3d_in_mm_around_the_click():
    sigma = 6.0
    ref = GuidedRefiner(_follower(), _Card(sigma))
    shape, sp = (30, 64, 64), (2.0, 1.0, 1.0)
    hu = np.zeros(shape, np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[:, 40:, :] = 2  # another label: an include never takes it
    click = Click((15, 32, 32), include=True)
    new, edits = refine(hu, mask, 1, [click], sp, refiner=ref)
    zz, yy, xx = np.mgrid[:30, :64, :64]
    d = np.sqrt(((zz - 15) * 2.0) ** 2 + (yy - 32) ** 2 + (xx - 32) ** 2)
    radius = sigma * np.sqrt(2 * np.log(2))  # where the Gaussian is 0.5
    assert np.all(new[(d < radius - 1.5) & (mask == 0)] == 1)
    assert not np.any(new[d > radius + 1.5] == 1)
    assert np.all(new[mask == 2] == 2)
    assert len(edits) == 1 and edits[0].box[0].start >= 15 - 13  # reach 25 mm at 2 mm slices
    # the exclude click removes the same ball from the label (the earlier include is history)
    new2, _ = refine(hu, new, 1, [Click((15, 32, 32), include=False)], sp, refiner=ref, history=[click])
    assert new2[15, 32, 32] == 0
    assert np.all(new2[mask == 2] == 2)


def test_the_refiner_says_what_it_cannot_do():
    class Plain(_Card):
        takes_clicks = False
    with pytest.raises(RefineError, match="takes no clicks"):
        GuidedRefiner(_follower(), Plain(5.0))
    ref = GuidedRefiner(_follower(), _Card(5.0))
    with pytest.raises(RefineError, match="labels"):
        ref.click(np.zeros((4, 64, 64), np.int16), np.zeros((4, 64, 64), np.uint8), 3, Click((1, 2, 3)), (1, 1, 1))


GUIDED = {**TINY, "architecture": {**TINY["architecture"], "guidance_channels": 3},
          "guidance": {"pool_per_case": 3, "max_clicks": 2, "sigma_mm": 6.0, "reach_mm": 15.0,
                       "p_iterate": 1.0}}


def test_ctseg_train_makes_a_version_that_takes_clicks(data, tmp_path, capsys):  # noqa: F811
    from napari_ctseg.cli import main
    from napari_ctseg.models.registry import ModelRegistry

    from napari_ctseg.training import default_config

    whole = default_config("liver").to_dict()  # a config file holds the whole recipe
    for k, v in GUIDED.items():
        whole[k] = {**whole[k], **v} if isinstance(v, dict) and isinstance(whole.get(k), dict) else v
    cfg = tmp_path / "guided.json"
    cfg.write_text(json.dumps(whole))
    split = tmp_path / "split.json"
    split.write_text(json.dumps(SPLIT))
    out = tmp_path / "w" / "liver" / "g1"
    torch.set_num_threads(1)
    assert main(["train", "--target", "liver", "--data", str(data), "--out", str(out), "--epochs", "2",
                 "--config", str(cfg), "--split", str(split)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["guidance"]["channels"] == ["mask", "include", "exclude"]
    assert card["guidance"]["sigma_mm"] == 6.0
    assert "after 3 clicks" in card["training"]["selection"]
    assert all("val_dice_3_clicks" in h for h in card["training"]["history"])
    assert card["training"]["guidance"]["current_masks"]["empty"] == 1
    registry = ModelRegistry([tmp_path / "w"])
    loaded = registry.get_card("liver", "g1")
    assert loaded.takes_clicks
    ref = GuidedRefiner.load("liver", "g1", registry)
    assert ref.model.guidance_channels == 3
    # the version segments without clicks too (Segment volume), and ctseg refine uses its network
    from napari_ctseg.io import read_scan

    vol = read_scan(data / "case_b" / "ct.nii.gz")
    from napari_ctseg.models.predict import predict_volume

    assert predict_volume(ref.model, vol.hu, loaded.preprocessing).shape == vol.hu.shape
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps([{"ijk": [12, 18, 3], "label": "include"}]))
    capsys.readouterr()
    assert main(["refine", str(data / "case_b" / "ct.nii.gz"), "--target", "liver", "--mask",
                 str(data / "case_b" / "liver.nii.gz"), "--clicks", str(clicks), "--out",
                 str(tmp_path / "fixed.nii.gz"), "--weights", str(tmp_path / "w"), "--version", "g1",
                 "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["method"] == "liver g1 (guidance-aware)"
    assert (tmp_path / "fixed.nii.gz").exists()


class _Background(torch.nn.Module):
    """A network that labels everything background (its errors are the whole truth)."""

    def forward(self, x):
        out = torch.zeros((x.shape[0], 3, *x.shape[2:]))
        out[:, 0] = 1.0
        return out


def test_a_target_of_two_labels_trains_clicks_on_each_label():
    """Lungs (right 1, left 2): a pool unit per label of each case, its mask and clicks of that
    label only, and DeepEdit's iteration clicks on the sample's own label."""
    from types import SimpleNamespace

    from napari_ctseg.models.preprocess import Preprocessing
    from napari_ctseg.training.guidance import build_pool, iterate, sample_guided

    z, h, w = 6, 32, 32
    target = np.zeros((z, h, w), np.int64)
    target[1:5, 8:24, 3:13] = 1  # right: the image's left half
    target[1:5, 8:24, 19:29] = 2  # left: the image's right half
    hu = np.full((z, h, w), 40.0, np.float32)
    case = SimpleNamespace(hu=hu, spacing=(2.0, 1.0, 1.0), group="expert", image8=None)
    cache = SimpleNamespace(images=[torch.from_numpy(hu / 1000)], targets=[torch.from_numpy(target)])
    prep = Preprocessing(size=(h, w), crop="none", context=0)
    pool = build_pool(cache, [case], prep, [1, 2], {"pool_per_case": 3, "max_clicks": 2, "p_iterate": 1.0},
                      np.random.default_rng(0))
    assert pool.labels == [1, 2]
    for label, truth, priors in zip(pool.labels, pool.truths, pool.priors):
        assert np.array_equal(truth, target == label)
        for prior in priors:
            assert not (prior.mask & (target != label) & (target > 0)).any()  # never the other lung
            for cz, cy, cx, include in prior.clicks:
                # a click of this label's errors: an include on it, an exclude off it
                assert (target[cz, cy, cx] == label) == include
    # the batch carries each sample's label; the iteration's include lands on that label
    x, y, labels = sample_guided(pool, prep, 16, np.random.default_rng(1))
    assert set(labels) == {1, 2}
    x[:, prep.channels:] = 0.0
    x = iterate(_Background(), x, y, pool, prep.channels, np.random.default_rng(2), labels=labels)
    clicked = set()
    for b, label in enumerate(labels):
        include = x[b, prep.channels + 1].numpy()
        if include.max() == 0:
            continue  # a slice without the label: no error to click
        cy, cx = np.unravel_index(int(np.argmax(include)), include.shape)
        assert y[b, cy, cx] == label
        clicked.add(label)
    assert clicked == {1, 2}


class _Bright(torch.nn.Module):
    """A plain network (no clicks) that labels bright pixels of its middle input channel."""

    def forward(self, x):
        v = x[:, x.shape[1] // 2] - 0.5
        return torch.stack([-20 * v, 20 * v], 1)


def test_the_plain_network_rerun_brings_back_only_what_it_labels():
    """The benchmark's baseline: the plain network re-run at a click adds its label in the
    piece at the click (a piece the mask lost) and nothing elsewhere; where it labels nothing,
    only the click's own sphere changes."""
    from napari_ctseg.editing.refine_model import NetworkRerun

    class Card(_Card):
        takes_clicks, stages = False, []

    rerun = NetworkRerun(_Bright(), Card(5.0), reach_mm=20.0)
    shape, sp = (30, 64, 64), (2.0, 1.0, 1.0)
    hu = np.full(shape, -200, np.int16)
    hu[5:25, 10:30, 10:30] = 300  # piece A, in the mask
    hu[5:25, 36:56, 36:56] = 300  # piece B, lost from the mask
    hu[5:25, 36:56, 58:63] = 300  # piece C, within reach of the click but not connected to B
    mask = np.zeros(shape, np.uint8)
    mask[5:25, 10:30, 10:30] = 1
    new, _ = refine(hu, mask, 1, [Click((15, 46, 46))], sp, refiner=rerun)
    b = np.zeros(shape, bool)
    b[5:25, 36:56, 36:56] = True
    zz, yy, xx = np.mgrid[:30, :64, :64]
    within = np.sqrt(((zz - 15) * 2.0) ** 2 + (yy - 46) ** 2 + (xx - 46) ** 2) <= 20.0
    assert np.all(new[b & within] == 1)  # the piece at the click, within its reach
    assert not np.any(new[~b & (mask == 0)])  # nothing else: not piece C, not the background
    assert np.array_equal(new[mask == 1], mask[mask == 1])
    # a click where the network labels nothing: the click's own sphere only
    new2, _ = refine(hu, mask, 1, [Click((15, 5, 60))], sp, refiner=rerun)
    added = (new2 == 1) & (mask == 0)
    assert 0 < added.sum() <= 40 and added[15, 5, 60]
    with pytest.raises(RefineError, match="stages"):
        NetworkRerun(_Bright(), type("Staged", (Card,), {"stages": [{"name": "locate"}]})(5.0))
