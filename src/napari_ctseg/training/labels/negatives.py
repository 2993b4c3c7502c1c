"""Synthetic hard negatives: what normal lungs look like on real scanners (Qt-free).

The mirror image of ``napari_ctseg.training.labels.synthetic``'s lesions: there, infection is painted into
healthy lungs with its exact mask; here, healthy lungs are made to look the way ordinary
scans show them — denser, blurred, noisy — and the infection label stays **empty**. They
teach the infection model the looks that its false positives on scans without COVID-19
followed (perihilar vessels blurred by the heart's motion, the dependent lung, thick
slices, an expiratory scan whose whole lung is denser).

Each change works on one training sample on the network's grid: a stack of neighbouring
axial slices (C, H, W) already windowed to [0, 1] (``window`` says which HU 0 and 1 stand
for) and the lung mask of the same slices; rows run anterior -> posterior (display
convention), so "dependent" is large y (a supine patient). Thick slices need the host
volume's neighbouring slices and are made by ``thick_slab``.

* expiration: the aerated lung denser by +100..+300 HU, more in the dependent lung, with a
  smooth patchy variation (mosaic); vessels (already dense) change little;
* dependent atelectasis: a thin subpleural band of raised density along the posterior lung
  border, following gravity;
* cardiac motion: the lung next to the heart and hila blurred along one direction (vessels
  smeared to a haze, the heart's border doubled);
* thick slices: 5-8 mm of neighbouring slices averaged (vessels and fissures at partial
  volume);
* low-dose noise, and sharp or soft reconstruction kernels;
* a lung mass (off unless ``mass_p`` > 0): a solid, lobulated soft-tissue mass of 2-5 cm
  with a few spicules and sometimes a thin hazy rim (a lung cancer and what surrounds it,
  the look of the bundled chest sample's hilar tumour): not infection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

DEFAULT_HARD_NEGATIVES: dict[str, Any] = {
    "p": 0.6,                      # chance that a host sample gets any of the changes below
    "expiration_p": 0.35,
    "expiration_hu": [100.0, 300.0],
    "atelectasis_p": 0.3,
    "atelectasis_px": [2.0, 7.0],  # band depth on the network grid (about 2.2 mm a pixel at 160 px)
    "atelectasis_hu": [-600.0, -150.0],
    "motion_p": 0.35,
    "motion_px": [2.0, 6.0],       # half length of the motion blur
    "motion_reach_px": [6.0, 18.0],  # how far from the mediastinum the blur reaches
    "thick_p": 0.35,
    "thick_mm": [5.0, 8.0],
    "noise_p": 0.3,
    "noise_hu": [8.0, 30.0],       # SD on the network grid (512 px noise of 25-90 HU, averaged)
    "kernel_p": 0.3,
    "mass_p": 0.0,
    "mass_radius_px": [6.0, 14.0],  # about 2.6-6 cm across at 2.2 mm a pixel
    "mass_hu": [0.0, 60.0],
}

CHANGES = ("expiration", "atelectasis", "motion", "mass", "thick", "noise", "kernel")


@dataclass(frozen=True)
class HardNegativeSettings:
    p: float = 0.6
    expiration_p: float = 0.35
    expiration_hu: tuple[float, float] = (100.0, 300.0)
    atelectasis_p: float = 0.3
    atelectasis_px: tuple[float, float] = (2.0, 7.0)
    atelectasis_hu: tuple[float, float] = (-600.0, -150.0)
    motion_p: float = 0.35
    motion_px: tuple[float, float] = (2.0, 6.0)
    motion_reach_px: tuple[float, float] = (6.0, 18.0)
    thick_p: float = 0.35
    thick_mm: tuple[float, float] = (5.0, 8.0)
    noise_p: float = 0.3
    noise_hu: tuple[float, float] = (8.0, 30.0)
    kernel_p: float = 0.3
    mass_p: float = 0.0
    mass_radius_px: tuple[float, float] = (6.0, 14.0)
    mass_hu: tuple[float, float] = (0.0, 60.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> HardNegativeSettings:
        d = {**DEFAULT_HARD_NEGATIVES, **(d or {})}
        unknown = set(d) - set(DEFAULT_HARD_NEGATIVES)
        if unknown:
            raise ValueError(f"unknown hard-negative setting(s): {', '.join(sorted(unknown))}")
        return cls(**{k: (tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v))
                      for k, v in d.items()})

    def choose(self, rng: np.random.Generator, forced: str | None = None) -> list[str]:
        """The changes one sample gets: none with probability 1 - ``p``, else each by its own
        chance (at least one). ``forced``: exactly that change (for drawing them)."""
        if forced is not None:
            if forced not in CHANGES:
                raise ValueError(f"unknown change {forced!r}; choose one of {', '.join(CHANGES)}")
            return [forced]
        if rng.random() >= self.p:
            return []
        # a change whose chance is 0 draws nothing, so adding one leaves older runs' draws as they were
        on = [c for c in CHANGES if getattr(self, f"{c}_p") > 0]
        chosen = [c for c in on if rng.random() < getattr(self, f"{c}_p")]
        return chosen or [on[int(rng.integers(len(on)))]] if on else []


def thick_slab(images, z: int, indices, spacing_z_mm: float, thickness_mm: float):
    """Channels at ``indices`` of a host volume ``images`` (Z, H, W; numpy or torch) as if
    reconstructed at ``thickness_mm``: each the mean of the slices within half the
    thickness of it (at least the slice itself)."""
    half = max(0, int(round(0.5 * thickness_mm / max(float(spacing_z_mm), 1e-3) - 0.5)))
    n = images.shape[0]
    out = []
    for i in indices:
        lo, hi = max(0, int(i) - half), min(n, int(i) + half + 1)
        out.append(np.asarray(images[lo:hi]).mean(axis=0))
    return np.stack(out).astype(np.float32)


def _depth_in_lung(lung: np.ndarray) -> np.ndarray:
    """0 at the lung's most anterior row, 1 at its most posterior, per column band (H, W)."""
    rows = np.flatnonzero(lung.any(axis=1))
    t = np.zeros(lung.shape, np.float32)
    if rows.size:
        y = np.arange(lung.shape[0], dtype=np.float32)[:, None]
        t[:] = np.clip((y - rows[0]) / max(rows[-1] - rows[0], 1), 0.0, 1.0)
    return t


def expiration(x: np.ndarray, lung: np.ndarray, window, rng, s: HardNegativeSettings) -> np.ndarray:
    lo, hi = window
    width = hi - lo
    d = rng.uniform(*s.expiration_hu)
    out = x.copy()
    mosaic = ndimage.gaussian_filter(rng.standard_normal(x.shape[1:]).astype(np.float32), 8.0)
    mosaic /= mosaic.std() + 1e-6
    for ch in range(x.shape[0]):
        if not lung[ch].any():
            continue
        t = _depth_in_lung(lung[ch])
        hu = lo + x[ch] * width
        aerated = np.clip((-200.0 - hu) / 700.0, 0.0, 1.0)  # vessels (dense already) change little
        delta = d * (0.55 + 0.9 * t) * (1.0 + 0.25 * mosaic)
        soft = ndimage.gaussian_filter(lung[ch].astype(np.float32), 1.0)
        out[ch] = x[ch] + soft * aerated * delta / width
    return np.clip(out, 0.0, 1.0)


def atelectasis(x: np.ndarray, lung: np.ndarray, window, rng, s: HardNegativeSettings) -> np.ndarray:
    lo, hi = window
    width = hi - lo
    depth = rng.uniform(*s.atelectasis_px)
    target = (rng.uniform(*s.atelectasis_hu) - lo) / width
    out = x.copy()
    for ch in range(x.shape[0]):
        if lung[ch].sum() < 50:
            continue
        t = _depth_in_lung(lung[ch])
        # distance from the lung's posterior border along y: how deep below the dependent edge
        below = np.cumsum(lung[ch][::-1], axis=0)[::-1].astype(np.float32)
        band = np.clip(1.0 - (below - 1.0) / depth, 0.0, 1.0) * lung[ch] * (t > 0.45)
        band = ndimage.gaussian_filter(band, 0.8) * lung[ch]
        out[ch] = np.maximum(x[ch], x[ch] * (1.0 - band) + target * band)
    return np.clip(out, 0.0, 1.0)


def cardiac_motion(x: np.ndarray, lung: np.ndarray, window, rng, s: HardNegativeSettings) -> np.ndarray:
    half = rng.uniform(*s.motion_px)
    reach = rng.uniform(*s.motion_reach_px)
    angle = rng.uniform(0.0, np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    out = x.copy()
    for ch in range(x.shape[0]):
        lung_c = lung[ch]
        if lung_c.sum() < 50:
            continue
        cols = np.flatnonzero(lung_c.any(axis=0))
        mid = 0.5 * (cols[0] + cols[-1])
        span = max(cols[-1] - cols[0], 1)
        # the mediastinum: tissue inside the lungs' span, away from the outer chest wall
        xx = np.arange(lung_c.shape[1], dtype=np.float32)[None, :]
        medial = np.abs(xx - mid) < 0.3 * span
        tissue = ~lung_c & np.broadcast_to(medial, lung_c.shape)
        dist = ndimage.distance_transform_edt(~tissue)
        region = lung_c & (dist < reach)
        if not region.any():
            continue
        steps = np.linspace(-half, half, max(3, int(2 * half) + 1))
        blurred = np.mean([ndimage.shift(x[ch], (k * dy, k * dx), order=1, mode="nearest") for k in steps], axis=0)
        soft = ndimage.gaussian_filter(region.astype(np.float32), 1.5) * np.clip(1.0 - dist / reach, 0.0, 1.0) ** 0.5
        soft = np.clip(soft * 1.4, 0.0, 1.0)
        out[ch] = x[ch] * (1.0 - soft) + blurred * soft
    return np.clip(out, 0.0, 1.0)


def mass(x: np.ndarray, lung: np.ndarray, window, rng, s: HardNegativeSettings) -> np.ndarray:
    lo, hi = window
    width = hi - lo
    c, h, w = x.shape
    centre = c // 2
    inner = ndimage.binary_erosion(lung[centre], iterations=3)
    if inner.sum() < 200:
        return x
    cy, cx = divmod(int(rng.choice(inner.size, p=(inner / inner.sum()).ravel())), w)
    r = rng.uniform(*s.mass_radius_px)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.arctan2(yy - cy, xx - cx)
    lobes = 1.0 + sum(rng.uniform(0.03, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    dist = np.hypot(yy - cy, xx - cx) / (r * lobes)
    spicules = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(0, 6))):
        a = rng.uniform(0, 2 * np.pi)
        along = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        across = np.abs(-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a))
        spicules = np.maximum(spicules, ((along > 0) & (along < r * rng.uniform(1.3, 2.0)) & (across < 0.7))
                              .astype(np.float32))
    halo = rng.uniform(1.0, 3.0) if rng.random() < 0.5 else 0.0
    solid = rng.uniform(*s.mass_hu)
    out = x.copy()
    for ch in range(c):
        shrink = 1.0 + 0.35 * abs(ch - centre)
        core = ndimage.gaussian_filter((dist * shrink < 1.0).astype(np.float32), 0.7)
        if halo:
            rim = np.clip(1.0 - (dist * shrink - 1.0) * r / halo, 0.0, 1.0) * (dist * shrink >= 1.0)
            out[ch] = np.maximum(out[ch], out[ch] * (1 - 0.5 * rim) + 0.5 * rim * (rng.uniform(-650, -450) - lo) / width)
        line = ndimage.gaussian_filter(spicules, 0.5) * lung[ch]
        tissue = (solid + rng.normal(0.0, 10.0, (h, w)) - lo) / width
        out[ch] = np.maximum(out[ch], out[ch] * (1 - line) + line * (solid - 150.0 - lo) / width)
        keep = np.maximum(core, 0.0)
        out[ch] = out[ch] * (1 - keep) + tissue * keep
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def noise(x: np.ndarray, window, rng, s: HardNegativeSettings) -> np.ndarray:
    width = window[1] - window[0]
    sd = rng.uniform(*s.noise_hu) / width
    n = ndimage.gaussian_filter(rng.standard_normal(x.shape).astype(np.float32), (0, 0.6, 0.6))
    n *= sd / (n.std() + 1e-6)
    return np.clip(x + n, 0.0, 1.0)


def kernel(x: np.ndarray, rng) -> np.ndarray:
    if rng.random() < 0.5:  # sharp (a bone or lung kernel): unsharp masking
        smooth = ndimage.gaussian_filter(x, (0, 1.0, 1.0))
        return np.clip(x + rng.uniform(0.3, 1.0) * (x - smooth), 0.0, 1.0)
    return ndimage.gaussian_filter(x, (0, *(2 * [rng.uniform(0.5, 1.1)])))  # soft


def add_hard_negatives(x: np.ndarray, lung: np.ndarray, window, rng: np.random.Generator,
                       changes: list[str], settings: HardNegativeSettings | dict | None = None) -> np.ndarray:
    """Apply ``changes`` (names from ``CHANGES``; ``"thick"`` is made by ``thick_slab`` before,
    and skipped here) to a windowed stack ``x`` (C, H, W) with its ``lung`` (C, H, W bool).
    The infection label of the result stays what it was."""
    s = settings if isinstance(settings, HardNegativeSettings) else HardNegativeSettings.from_dict(settings)
    out = np.asarray(x, dtype=np.float32)
    lung = np.asarray(lung, dtype=bool)
    for c in changes:
        if c == "expiration":
            out = expiration(out, lung, window, rng, s)
        elif c == "atelectasis":
            out = atelectasis(out, lung, window, rng, s)
        elif c == "motion":
            out = cardiac_motion(out, lung, window, rng, s)
        elif c == "mass":
            out = mass(out, lung, window, rng, s)
        elif c == "noise":
            out = noise(out, window, rng, s)
        elif c == "kernel":
            out = kernel(out, rng)
    return out.astype(np.float32)
