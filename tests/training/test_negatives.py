"""Synthetic hard negatives (``napari_ctseg.training.labels.negatives``) on a windowed phantom slice, and the
loss's ignore label (Qt-free, synthetic data only)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_ctseg.training.labels import negatives as neg
from napari_ctseg.training.engine import IGNORE_LABEL, dice_ce_loss

WINDOW = (-1100.0, 250.0)
WIDTH = WINDOW[1] - WINDOW[0]
SIZE = 96
LUNG_CX = (26, 70)  # right lung at small x, left lung at large x
MID = 48  # the mediastinum's centre column


def _phantom():
    """A windowed (1, 96, 96) slice: air outside an elliptic body (40 HU), two elliptic lungs
    (-860 HU) with a few small vessels (40 HU) and the mediastinum between them. Returns the
    slice, the lung mask (1, 96, 96) and the slice in HU (96, 96)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[((y - 48) / 44.0) ** 2 + ((x - 48) / 46.0) ** 2 < 1] = 40.0
    lung = np.zeros((SIZE, SIZE), bool)
    for cx in LUNG_CX:
        lung |= ((y - 48) / 30.0) ** 2 + ((x - cx) / 14.0) ** 2 < 1
    hu[lung] = -860.0
    for cy, cx in [(40, 24), (56, 30), (45, 72), (60, 66)]:
        hu[(y - cy) ** 2 + (x - cx) ** 2 <= 2] = 40.0
    x01 = ((hu + 1100.0) / WIDTH).astype(np.float32)[None]
    return x01, lung[None], hu


def _hu(x01):
    return WINDOW[0] + np.asarray(x01, dtype=np.float64) * WIDTH


def _rows():
    return np.broadcast_to(np.arange(SIZE)[:, None], (SIZE, SIZE))


def _cols():
    return np.broadcast_to(np.arange(SIZE)[None, :], (SIZE, SIZE))


def test_phantom_is_what_the_tests_assume():
    x, lung, hu = _phantom()
    assert x.min() >= 0 and x.max() <= 1
    assert lung[0, 48, 26] and lung[0, 48, 70] and not lung[0, 48, MID]
    rows = np.flatnonzero(lung[0].any(axis=1))
    assert rows[0] < 25 and rows[-1] > 70  # rows run anterior (small y) -> posterior
    assert np.isclose(hu[lung[0]].mean(), -860.0, atol=20)


@pytest.mark.parametrize("seed", range(4))
def test_expiration_raises_lung_density_more_in_the_dependent_lung(seed):
    x, lung, hu = _phantom()
    s = neg.HardNegativeSettings.from_dict({"expiration_hu": [200.0, 200.0]})
    out = neg.expiration(x, lung, WINDOW, np.random.default_rng(seed), s)
    assert out.shape == x.shape
    d = _hu(out[0]) - _hu(x[0])
    L = lung[0]
    parenchyma = L & (hu > -900) & (hu < -800)
    # +200 HU nominal: mean within the range, allowing for the mosaic and the soft lung edge
    assert 120.0 < d[parenchyma].mean() < 260.0
    anterior = parenchyma & (_rows() < 48)
    posterior = parenchyma & (_rows() >= 48)
    assert d[posterior].mean() > d[anterior].mean() + 20.0
    assert (d[L] >= -1e-3).all()  # never less dense
    # outside the lung (beyond a few pixels of it): body and the air around it untouched
    far = ndimage.distance_transform_edt(~L) > 4
    assert np.array_equal(out[0][far], x[0][far])
    near = (ndimage.distance_transform_edt(~L) > 3) & ~far
    assert np.abs(d[near]).max() < 5.0


def test_expiration_within_the_default_range():
    x, lung, hu = _phantom()
    s = neg.HardNegativeSettings.from_dict(None)
    lo, hi = s.expiration_hu
    parenchyma = lung[0] & (hu > -900) & (hu < -800)
    means = []
    for seed in range(6):
        out = neg.expiration(x, lung, WINDOW, np.random.default_rng(seed), s)
        means.append((_hu(out[0]) - _hu(x[0]))[parenchyma].mean())
    assert min(means) > 0.6 * lo and max(means) < 1.3 * hi
    assert np.ptp(means) > 10.0  # the amount is drawn, not fixed


def test_expiration_changes_vessels_little():
    x, lung, hu = _phantom()
    s = neg.HardNegativeSettings.from_dict({"expiration_hu": [300.0, 300.0]})
    out = neg.expiration(x, lung, WINDOW, np.random.default_rng(0), s)
    d = _hu(out[0]) - _hu(x[0])
    vessel = lung[0] & (hu > 0)
    assert vessel.any()
    assert np.abs(d[vessel]).max() < 1.0  # 40 HU is dense already


def test_expiration_skips_channels_without_lung():
    x, lung, _ = _phantom()
    x2 = np.concatenate([x, x])
    lung2 = np.concatenate([lung, np.zeros_like(lung)])
    out = neg.expiration(x2, lung2, WINDOW, np.random.default_rng(0), neg.HardNegativeSettings())
    assert not np.array_equal(out[0], x2[0])
    assert np.array_equal(out[1], x2[1])


@pytest.mark.parametrize("seed", range(3))
def test_atelectasis_is_a_band_along_the_posterior_lung_border(seed):
    x, lung, hu = _phantom()
    s = neg.HardNegativeSettings.from_dict({"atelectasis_px": [4.0, 4.0], "atelectasis_hu": [-300.0, -300.0]})
    out = neg.atelectasis(x, lung, WINDOW, np.random.default_rng(seed), s)
    d = _hu(out[0]) - _hu(x[0])
    L = lung[0]
    changed = np.abs(d) > 0.5
    assert changed.any()
    assert not changed[~L].any()  # outside the lung: untouched
    assert np.array_equal(out[0][~L], x[0][~L])
    assert (d >= -1e-3).all()  # only denser
    rows = np.flatnonzero(L.any(axis=1))
    middle = 0.5 * (rows[0] + rows[-1])
    assert not changed[L & (_rows() < middle)].any()  # the anterior half of the lung
    # near the lung's border (a band), never deep inside it
    assert ndimage.distance_transform_edt(L)[changed].max() <= 4.0 + 4.0
    # the posterior-most lung pixel of each lung's central columns is much denser
    for cx in LUNG_CX:
        for col in range(cx - 4, cx + 5):
            y_last = np.flatnonzero(L[:, col])[-1]
            assert d[y_last, col] > 150.0
            assert d[y_last - 10, col] == 0.0  # 10 px up into the lung: untouched
    # the band's target: denser than the lung, not denser than -300 HU
    assert _hu(out[0])[L & (hu < -800)].max() <= -300.0 + 1.0


def test_atelectasis_never_lowers_a_vessel():
    x, lung, hu = _phantom()
    y, xx = np.mgrid[0:SIZE, 0:SIZE]
    vessel = (y - 76) ** 2 + (xx - 26) ** 2 <= 1  # right at the dependent border
    x = x.copy()
    x[0][vessel & lung[0]] = (40.0 + 1100.0) / WIDTH
    s = neg.HardNegativeSettings.from_dict({"atelectasis_px": [6.0, 6.0], "atelectasis_hu": [-600.0, -600.0]})
    out = neg.atelectasis(x, lung, WINDOW, np.random.default_rng(0), s)
    assert (out >= x - 1e-6).all()


def test_atelectasis_only_in_the_dependent_half():
    """A lung whose medial columns end in the anterior half (above the heart): no band there."""
    x, lung, hu = _phantom()
    x, lung = x.copy(), lung.copy()
    notch = (_rows() >= 42) & (_cols() >= 54) & (_cols() <= 66)
    lung[0] &= ~notch
    x[0][notch & (hu < -800)] = (40.0 + 1100.0) / WIDTH
    s = neg.HardNegativeSettings.from_dict({"atelectasis_px": [5.0, 5.0], "atelectasis_hu": [-300.0, -300.0]})
    out = neg.atelectasis(x, lung, WINDOW, np.random.default_rng(0), s)
    d = _hu(out[0]) - _hu(x[0])
    assert lung[0][41, 58:64].all() and not lung[0][42, 58:64].any()
    assert np.abs(d[:48]).max() < 0.5  # the lung's lower border at row 41 is anterior: untouched
    assert d[lung[0] & (_rows() > 70)].max() > 150.0  # the dependent border elsewhere: a band


@pytest.mark.parametrize("seed", range(3))
def test_cardiac_motion_changes_only_the_lung_next_to_the_mediastinum(seed):
    x, lung, hu = _phantom()
    s = neg.HardNegativeSettings.from_dict({"motion_px": [3.0, 3.0], "motion_reach_px": [6.0, 6.0]})
    out = neg.cardiac_motion(x, lung, WINDOW, np.random.default_rng(seed), s)
    d = _hu(out[0]) - _hu(x[0])
    L = lung[0]
    cols = _cols()
    changed = np.abs(d) > 0.5
    # the lung just lateral to the mediastinum (the medial 3 px of each lung) is blurred
    medial_lung = L & ~ndimage.binary_erosion(L | (np.abs(cols - MID) < 8), iterations=3)
    medial_lung &= np.abs(cols - MID) < 16
    assert medial_lung.sum() > 50
    assert np.abs(d[medial_lung]).mean() > 50.0
    # the lateral lung, far from the mediastinum, and the lateral chest wall: untouched
    lateral = (cols < 20) | (cols > SIZE - 1 - 20)
    assert L[lateral].sum() > 100
    assert not changed[lateral].any()
    assert np.array_equal(out[0][lateral], x[0][lateral])
    assert not changed[~ndimage.binary_dilation(L, iterations=8)].any()  # far from any lung


def test_cardiac_motion_without_enough_lung_does_nothing():
    x, lung, _ = _phantom()
    small = np.zeros_like(lung)
    small[0, 40:45, 20:25] = True  # 25 px
    out = neg.cardiac_motion(x, small, WINDOW, np.random.default_rng(0), neg.HardNegativeSettings())
    assert np.array_equal(out, x)


def test_thick_slab_averages_the_slices_within_half_the_thickness():
    images = np.zeros((21, 8, 8), np.float32)
    images[10] = 1.0
    out = neg.thick_slab(images, 10, [9, 10, 11], spacing_z_mm=1.0, thickness_mm=5.0)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    assert np.allclose(out[1], 0.2)  # the mean of slices 8..12
    assert np.allclose(out[0], 0.2) and np.allclose(out[2], 0.2)  # 10 lies within 2 of them
    seven = neg.thick_slab(images, 10, [10, 13, 14], spacing_z_mm=1.0, thickness_mm=7.0)
    assert np.allclose(seven[0], 1.0 / 7.0) and np.allclose(seven[1], 1.0 / 7.0)  # slices 7..13, 10..16
    assert np.allclose(seven[2], 0.0)  # slices 11..17
    two = neg.thick_slab(images, 10, [10, 11], spacing_z_mm=2.0, thickness_mm=6.0)
    assert np.allclose(two, 1.0 / 3.0)  # 3 slices of 2 mm
    far = neg.thick_slab(images, 13, [13], spacing_z_mm=1.0, thickness_mm=5.0)
    assert np.allclose(far, 0.0)  # slices 11..15: the bright one is out of reach
    thin = neg.thick_slab(images, 10, [9, 10, 11], spacing_z_mm=5.0, thickness_mm=5.0)
    assert np.array_equal(thin, images[9:12])  # already 5 mm: the slices themselves
    # a torch volume (the hosts' cache) and the volume's ends
    t = neg.thick_slab(torch.from_numpy(images), 0, [0], spacing_z_mm=1.0, thickness_mm=8.0)
    assert t.shape == (1, 8, 8) and np.allclose(t, 0.0)  # slices 0..3 (clipped at the start)
    images[0] = 1.0
    t = neg.thick_slab(torch.from_numpy(images), 0, [0], spacing_z_mm=1.0, thickness_mm=5.0)
    assert np.allclose(t, 1.0 / 3.0)  # slices 0..2


@pytest.mark.parametrize("seed", range(6))
def test_noise_and_kernel_stay_in_the_unit_range(seed):
    x, lung, _ = _phantom()
    x = x.copy()
    x[0, :4, :4] = 0.0
    x[0, -4:, -4:] = 1.0
    s = neg.HardNegativeSettings.from_dict({"noise_hu": [30.0, 30.0]})
    n = neg.noise(x, WINDOW, np.random.default_rng(seed), s)
    assert n.shape == x.shape and n.min() >= 0.0 and n.max() <= 1.0
    assert np.isclose((n - x)[0, 20:76, 20:76].std() * WIDTH, 30.0, rtol=0.3)
    k = neg.kernel(x, np.random.default_rng(seed))
    assert k.shape == x.shape and k.min() >= 0.0 and k.max() <= 1.0
    assert not np.array_equal(k, x)


def test_settings_from_dict():
    s = neg.HardNegativeSettings.from_dict({"p": 0.2, "thick_mm": [6, 7]})
    assert s.p == 0.2 and s.thick_mm == (6.0, 7.0)
    assert s.expiration_hu == tuple(neg.DEFAULT_HARD_NEGATIVES["expiration_hu"])
    assert neg.HardNegativeSettings.from_dict(None) == neg.HardNegativeSettings()
    with pytest.raises(ValueError, match="expiratoin_p"):
        neg.HardNegativeSettings.from_dict({"expiratoin_p": 0.5})


def test_choose():
    never = neg.HardNegativeSettings.from_dict({"p": 0.0})
    always = neg.HardNegativeSettings.from_dict({"p": 1.0, "mass_p": 0.25})
    rng = np.random.default_rng(0)
    assert all(never.choose(rng) == [] for _ in range(50))
    seen = set()
    for _ in range(200):
        got = always.choose(rng)
        assert got and set(got) <= set(neg.CHANGES) and len(set(got)) == len(got)
        seen.update(got)
    assert seen == set(neg.CHANGES)
    # a change whose own chance is 0 is never chosen (masses are off by default)
    default = neg.HardNegativeSettings.from_dict({"p": 1.0})
    assert all("mass" not in default.choose(rng) for _ in range(200))
    # only one change on: exactly that one, even where its own draw fails
    only = neg.HardNegativeSettings.from_dict({"p": 1.0, **{f"{c}_p": 0.0 for c in neg.CHANGES}, "noise_p": 0.01})
    assert all(only.choose(rng) == ["noise"] for _ in range(20))
    none_each = neg.HardNegativeSettings.from_dict({"p": 1.0, **{f"{c}_p": 0.0 for c in neg.CHANGES}})
    assert all(none_each.choose(rng) == [] for _ in range(20))
    for name in neg.CHANGES:
        assert never.choose(rng, forced=name) == [name]
    with pytest.raises(ValueError):
        always.choose(rng, forced="sneeze")


def test_mass_is_solid_tissue_inside_the_lung():
    x, lung, hu = _phantom()
    s = neg.HardNegativeSettings.from_dict({"mass_hu": [30.0, 30.0], "mass_radius_px": [6.0, 6.0]})
    for seed in range(3):
        out = neg.mass(x, lung, WINDOW, np.random.default_rng(seed), s)
        d = (out - x)[0] * (WINDOW[1] - WINDOW[0])
        raised = d > 300.0  # lung (-860 HU) turned into soft tissue
        assert raised.sum() > 60  # a mass of several cm2, not a speck
        assert raised[~lung[0]].sum() == 0  # never outside the lung
        assert (out >= 0).all() and (out <= 1).all()
        solid = (WINDOW[0] + out[0] * (WINDOW[1] - WINDOW[0]))[raised]
        assert abs(np.median(solid) - 30.0) < 40.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_hard_negatives_keeps_shape_dtype_and_its_input(dtype):
    x, lung, _ = _phantom()
    x3 = np.concatenate([x, x, x]).astype(dtype)
    lung3 = np.concatenate([lung, lung, lung])
    before = x3.copy()
    out = neg.add_hard_negatives(x3, lung3, WINDOW, np.random.default_rng(0), list(neg.CHANGES), None)
    assert out.shape == x3.shape and out.dtype == np.float32
    assert np.array_equal(x3, before)  # not changed in place
    assert not np.allclose(out, x3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # "thick" alone is made by thick_slab beforehand: nothing happens here
    same = neg.add_hard_negatives(x3, lung3, WINDOW, np.random.default_rng(0), ["thick"], {"p": 1.0})
    assert np.array_equal(same, x3.astype(np.float32))
    # the same seed, the same result; settings as a dataclass or a dict alike
    s = neg.HardNegativeSettings.from_dict({"p": 1.0})
    a = neg.add_hard_negatives(x3, lung3, WINDOW, np.random.default_rng(3), ["expiration", "noise"], s)
    b = neg.add_hard_negatives(x3, lung3, WINDOW, np.random.default_rng(3), ["expiration", "noise"], {"p": 1.0})
    assert np.array_equal(a, b)


# ---- the loss's ignore label ------------------------------------------------------------


def _reference_loss(logits, target):
    """Cross-entropy + 1 - soft Dice of the foreground class (over the batch), by hand."""
    logp = torch.log_softmax(logits, dim=1)
    ce = -logp.gather(1, target[:, None]).mean()
    p = torch.softmax(logits, dim=1)[:, 1]
    t = (target == 1).to(p.dtype)
    dice = (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    return ce + 1.0 - dice


def _logits_and_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    target = (torch.rand(2, 8, 8, generator=g) > 0.6).long()
    return logits, target


def test_loss_without_ignored_pixels_is_the_old_formula():
    logits, target = _logits_and_target()
    assert torch.isclose(dice_ce_loss(logits, target), _reference_loss(logits, target), rtol=0, atol=1e-12)


def test_ignored_pixels_count_in_neither_term():
    logits, target = _logits_and_target(1)
    ignore = torch.zeros_like(target, dtype=torch.bool)
    ignore[0, :3, :] = True
    ignore[1, 5:, 2:6] = True
    target = target.masked_fill(ignore, IGNORE_LABEL)
    base = dice_ce_loss(logits, target)
    assert torch.isfinite(base)
    changed = logits.clone()
    changed[:, 0][ignore] = 25.0
    changed[:, 1][ignore] = -40.0
    assert torch.isclose(dice_ce_loss(changed, target), base, rtol=0, atol=1e-12)
    # the value is that of the valid pixels alone (by hand: CE over them, Dice over them)
    valid = ~ignore
    logp = torch.log_softmax(logits, dim=1)
    t = target.where(valid, torch.zeros_like(target))
    ce = -(logp.gather(1, t[:, None])[:, 0][valid]).mean()
    p1 = torch.softmax(logits, dim=1)[:, 1][valid]
    t1 = (target[valid] == 1).double()
    dice = (2.0 * (p1 * t1).sum() + 1.0) / (p1.sum() + t1.sum() + 1.0)
    assert torch.isclose(base, ce + 1.0 - dice, rtol=0, atol=1e-12)
    # and no gradient reaches the ignored pixels' logits
    leaf = logits.clone().requires_grad_(True)
    dice_ce_loss(leaf, target).backward()
    g = leaf.grad
    assert torch.count_nonzero(g[:, 0][ignore]) == 0 and torch.count_nonzero(g[:, 1][ignore]) == 0
    assert torch.count_nonzero(g[:, 0][valid]) > 0


def test_ignore_label_with_cross_entropy_only():
    logits, target = _logits_and_target(2)
    target[0, 0, 0] = IGNORE_LABEL
    ce_only = dice_ce_loss(logits, target, dice_weight=0.0)
    expected = F.cross_entropy(logits.flatten(2).permute(0, 2, 1).reshape(-1, 2), target.reshape(-1),
                               ignore_index=IGNORE_LABEL)
    assert torch.isclose(ce_only, expected, rtol=0, atol=1e-12)
