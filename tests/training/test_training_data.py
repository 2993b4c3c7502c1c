"""The training slice cache: group shares and ignored pixels (``build_cache``; Qt-free,
tiny synthetic 8-bit slices only)."""
import numpy as np
import pytest
import torch

from napari_ctseg.training.engine import IGNORE_LABEL, dice_ce_loss
from napari_ctseg.models.preprocess import Preprocessing
from napari_ctseg.training import default_config
from napari_ctseg.training.cases import Case
from napari_ctseg.training.sampling import build_cache, sample_batch

N = 64


def _prep():
    d = dict(default_config("infection").preprocessing)
    d["size"] = [32, 32]
    return Preprocessing.from_dict(d)


def _slice(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N, N), dtype=np.uint8)


def _labels(y0, y1, x0, x1):
    lab = np.zeros((N, N), np.uint8)
    lab[y0:y1, x0:x1] = 1
    return lab


def _cases():
    return [
        Case(name="expert/a", labels=_labels(10, 30, 10, 30), image8=_slice(0), group="expert"),
        Case(name="silver/b_1", labels=_labels(30, 50, 30, 50), image8=_slice(1), group="silver_slices"),
        Case(name="silver/b_2", labels=_labels(5, 20, 40, 60), image8=_slice(2), group="silver_slices"),
    ]


def test_group_shares_split_the_draws_whatever_the_group_sizes():
    prep = _prep()
    cache = build_cache(_cases(), prep, 2, 1.0, {"expert": 0.5, "silver_slices": 0.5})
    assert cache.index.tolist() == [[0, 0], [1, 0], [2, 0]]
    assert np.allclose(cache.weights, [0.5, 0.25, 0.25])
    for img, tgt in zip(cache.images, cache.targets):
        assert tuple(img.shape) == (1, 32, 32) and tuple(tgt.shape) == (1, 32, 32)
        assert tgt.dtype == torch.int64 and set(tgt.unique().tolist()) == {0, 1}
    # other shares, and within a group the foreground weight still counts
    cases = _cases()
    cases[2] = Case(name="silver/b_2", labels=np.zeros((N, N), np.uint8), image8=_slice(2), group="silver_slices")
    cache = build_cache(cases, prep, 2, 3.0, {"expert": 0.2, "silver_slices": 0.8})
    assert np.allclose(cache.weights, [0.2, 0.8 * 3 / 4, 0.8 * 1 / 4])
    # without shares: by foreground alone
    cache = build_cache(cases, prep, 2, 3.0)
    assert np.allclose(cache.weights, np.array([3.0, 3.0, 1.0]) / 7.0)


def test_a_group_without_a_share_is_never_drawn():
    cache = build_cache(_cases(), _prep(), 2, 1.0, {"expert": 1.0})
    assert np.allclose(cache.weights, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_shares"):
        build_cache(_cases(), _prep(), 2, 1.0, {"pseudo_hu": 1.0})


def test_ignored_pixels_become_the_ignore_label():
    prep = _prep()
    labels = _labels(10, 30, 10, 30)
    ignore = np.zeros((N, N), bool)
    ignore[40:60, 36:60] = True  # a dropped mark, away from the kept one
    case = Case(name="silver/c_1", labels=labels, image8=_slice(3), ignore=ignore, group="silver_slices")
    plain = Case(name="silver/c_2", labels=labels, image8=_slice(3), group="silver_slices")
    cache = build_cache([case, plain], prep, 2, 1.0)
    t, t_plain = cache.targets[0][0].numpy(), cache.targets[1][0].numpy()
    ign = t == IGNORE_LABEL
    assert ign.any() and not (t_plain == IGNORE_LABEL).any()
    # where the ignore mask lies, resampled: the 64 px slice is seen through a ~69 px square
    ys, xs = np.nonzero(ign)
    scale = 32 / N
    assert abs(ys.mean() - 50 * scale) < 2.5 and abs(xs.mean() - 48 * scale) < 2.5
    assert 0.5 < ign.sum() / (ignore.sum() * scale ** 2) < 1.5
    # everything else as without the ignore mask (the kept mark untouched)
    assert np.array_equal(t[~ign], t_plain[~ign])
    assert (t_plain[ign] == 0).all()
    assert (t == 1).sum() == (t_plain == 1).sum() > 0


def test_ignored_pixels_are_not_foreground_for_the_sampling_weights():
    prep = _prep()
    empty = np.zeros((N, N), np.uint8)
    ignore = np.zeros((N, N), bool)
    ignore[20:44, 20:44] = True
    cases = [
        Case(name="fg", labels=_labels(10, 30, 10, 30), image8=_slice(0), group="silver_slices"),
        Case(name="ignored_only", labels=empty, image8=_slice(1), ignore=ignore, group="silver_slices"),
        Case(name="nothing", labels=empty, image8=_slice(2), group="silver_slices"),
    ]
    cache = build_cache(cases, prep, 2, 5.0)
    assert (cache.targets[1] == IGNORE_LABEL).any()
    assert np.allclose(cache.weights, np.array([5.0, 1.0, 1.0]) / 7.0)


def test_batches_with_ignored_pixels_give_a_finite_loss_that_skips_them():
    prep = _prep()
    ignore = np.zeros((N, N), bool)
    ignore[40:60, 36:60] = True
    case = Case(name="silver/d_1", labels=_labels(10, 30, 10, 30), image8=_slice(4), ignore=ignore,
                group="silver_slices")
    cache = build_cache([case], prep, 2, 1.0, {"silver_slices": 1.0})
    x, y = sample_batch(cache, prep, 2, np.random.default_rng(0))
    assert tuple(x.shape) == (2, prep.channels, 32, 32) and tuple(y.shape) == (2, 32, 32)
    ign = y == IGNORE_LABEL
    assert ign.any()
    logits = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = dice_ce_loss(logits, y)
    assert torch.isfinite(loss)
    logits2 = logits.clone()
    logits2[:, 1][ign] += 10.0
    assert torch.isclose(dice_ce_loss(logits2, y), loss, rtol=0, atol=1e-12)


def test_init_from_loads_a_bundled_versions_weights_and_refuses_another_network():
    import torch

    from napari_ctseg.errors import TrainingError
    from napari_ctseg.models.registry import load_model
    from napari_ctseg.models.unet import build_model
    from napari_ctseg.training.recipe import _init_weights

    base, card = load_model("infection", "v1", device="cpu")
    model = build_model(dict(card.architecture))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _init_weights(model, "infection", {"version": "v1"})
    after = model.state_dict()
    for k, v in base.state_dict().items():
        assert torch.equal(after[k].float(), v.float()), k
    assert any(not torch.equal(before[k], after[k]) for k in after if after[k].is_floating_point())
    other = build_model({**card.architecture, "base": 8})
    with pytest.raises(TrainingError, match="differs"):
        _init_weights(other, "infection", {"version": "v1"})
    with pytest.raises(TrainingError, match="init_from"):
        _init_weights(model, "infection", {"version": "v99"})
