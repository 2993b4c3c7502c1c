"""Synthetic COVID-19 lesions on real lungs in HU, with their exact masks (Qt-free).

The idea of Yao et al., *Label-free segmentation of COVID-19 lesions in lung CT*
(IEEE TMI 2021): lesions are painted into healthy lungs, so a model learns what
infection looks like against real parenchyma, vessels, fissures and diaphragm domes.

``add_lesions`` works on one training sample on the network's grid: a stack of
neighbouring axial slices (C, H, W) already windowed to [0, 1] and the lung mask of the
same slices. A lesion is a smooth random blob (an irregular outline from smoothed noise
under a Gaussian envelope), placed preferably in the periphery and posteriorly (where
COVID-19 ground glass usually lies), slightly smaller on the neighbouring slices (a 3D
shape), kept inside the lung, with HU drawn from ground glass (-750..-350) or
consolidation (-150..+40), its own fine texture, and blended over the lung so that
vessels brighter than the lesion stay visible. The mask of the centre slice is returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

DEFAULT_SYNTHETIC: dict[str, Any] = {
    "p_lesion": 0.5,            # chance that a host slice with lung gets lesions
    "host_fraction": 0.7,       # share of each batch drawn from the host volumes
    "n_lesions": [1, 4],        # lesions per sample (inclusive)
    "radius_px": [3.0, 22.0],   # envelope radius on the network grid (log-uniform)
    "ggo_hu": [-750.0, -350.0],
    "consolidation_hu": [-150.0, 40.0],
    "p_consolidation": 0.3,
    "texture_hu": 40.0,         # SD of the lesion's own fine texture
    "hard_negative_weight": 3.0,  # sampling weight of host slices where the reference model errs
}


@dataclass(frozen=True)
class LesionSettings:
    p_lesion: float = 0.5
    host_fraction: float = 0.7
    n_lesions: tuple[int, int] = (1, 4)
    radius_px: tuple[float, float] = (3.0, 22.0)
    ggo_hu: tuple[float, float] = (-750.0, -350.0)
    consolidation_hu: tuple[float, float] = (-150.0, 40.0)
    p_consolidation: float = 0.3
    texture_hu: float = 40.0
    hard_negative_weight: float = 3.0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LesionSettings:
        d = {**DEFAULT_SYNTHETIC, **(d or {})}
        return cls(p_lesion=float(d["p_lesion"]), host_fraction=float(d["host_fraction"]),
                   n_lesions=tuple(int(v) for v in d["n_lesions"]),
                   radius_px=tuple(float(v) for v in d["radius_px"]),
                   ggo_hu=tuple(float(v) for v in d["ggo_hu"]),
                   consolidation_hu=tuple(float(v) for v in d["consolidation_hu"]),
                   p_consolidation=float(d["p_consolidation"]), texture_hu=float(d["texture_hu"]),
                   hard_negative_weight=float(d["hard_negative_weight"]))


def _placement_weights(lung: np.ndarray) -> np.ndarray:
    """Where a lesion's centre goes: inside the lung, more in the periphery and posteriorly."""
    dist = ndimage.distance_transform_edt(lung)
    peripheral = np.exp(-dist / 6.0)
    posterior = np.linspace(0.4, 1.0, lung.shape[0])[:, None]  # y runs anterior -> posterior
    w = lung * (0.25 + peripheral) * posterior
    return w / w.sum()


def _blob_slices(host: np.ndarray, yy, xx, cy: float, cx: float, r: float, rough: float,
                 noise: np.ndarray, shrink: float):
    """A lesion's mask on each slice of a stack: a disc of radius ``r`` around (cy, cx) with an
    outline made irregular by ``noise`` (``rough``), ``shrink`` smaller per slice away from the
    centre slice, kept inside ``host`` (C, H, W bool). Yields (slice index, mask) where not empty."""
    centre = host.shape[0] // 2
    for ch in range(host.shape[0]):
        rc = r * max(0.2, 1.0 - shrink * abs(ch - centre))
        env = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * rc * rc))
        m = ((env + rough * noise * env ** 0.5) > 0.5) & host[ch]
        if m.any():
            yield ch, m


def add_lesions(x: np.ndarray, lung: np.ndarray, window: tuple[float, float], rng: np.random.Generator,
                settings: LesionSettings | dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paint lesions into a windowed stack ``x`` (C, H, W) inside ``lung`` (C, H, W bool).

    Returns the new stack and the lesion mask (H, W, bool) of the centre slice (all False
    when the centre slice has too little lung to host one).
    """
    s = settings if isinstance(settings, LesionSettings) else LesionSettings.from_dict(settings)
    x = np.asarray(x, dtype=np.float32)
    lung = np.asarray(lung, dtype=bool)
    c, h, w = x.shape
    centre = c // 2
    mask_c = np.zeros((h, w), bool)
    if lung[centre].sum() < 150:
        return x, mask_c
    lo, hi = window
    width = hi - lo
    out = x.copy()
    probs = _placement_weights(lung[centre]).ravel()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(rng.integers(s.n_lesions[0], s.n_lesions[1] + 1))
    for _ in range(n):
        k = int(rng.choice(probs.size, p=probs))
        cy, cx = divmod(k, w)
        r = float(np.exp(rng.uniform(np.log(s.radius_px[0]), np.log(s.radius_px[1]))))
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(1.0, r / 3.0))
        noise /= noise.std() + 1e-6
        rough = rng.uniform(0.2, 0.45)
        if rng.random() < s.p_consolidation:
            t_hu = rng.uniform(*s.consolidation_hu)
        else:
            t_hu = rng.uniform(*s.ggo_hu)
        alpha = rng.uniform(0.75, 1.0)
        texture = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.8)
        texture *= s.texture_hu / (texture.std() + 1e-6)
        target = (t_hu + texture - lo) / width
        blur = rng.uniform(0.6, 1.4)
        shrink = rng.uniform(0.0, 0.35)  # how much smaller the lesion is one slice away
        for ch, m in _blob_slices(lung, yy, xx, cy, cx, r, rough, noise, shrink):
            soft = ndimage.gaussian_filter(m.astype(np.float32), blur) * lung[ch]
            blended = out[ch] * (1.0 - alpha * soft) + target * alpha * soft
            out[ch] = np.clip(np.maximum(blended, out[ch]), 0.0, 1.0)  # brighter vessels stay
            if ch == centre:
                mask_c |= m
    return out, mask_c


# --- lesions inside an organ, the organ's mask unchanged ---------------------------------
# Hu et al., *Label-free liver tumor segmentation* (CVPR 2023): tumours painted into healthy
# livers. Here they teach the liver model that a liver with tumours is still liver: the
# expert liver masks include the tumours, so a lesion changes the image, never the label.

DEFAULT_ORGAN_LESIONS: dict[str, Any] = {
    "p_lesion": 0.4,             # chance that a sample whose centre slice holds the organ gets lesions
    "n_lesions": [1, 3],
    "radius_px": [3.0, 18.0],    # on the network grid (log-uniform)
    "hypo_delta_hu": [-110.0, -30.0],  # relative to the organ's median (metastases, cysts)
    "hyper_delta_hu": [20.0, 60.0],    # (hypervascular lesions in an arterial phase)
    "p_hyper": 0.25,
    "texture_hu": 12.0,
    "rim_p": 0.3,                # chance of a brighter enhancing rim
}


def add_organ_lesions(x: np.ndarray, organ: np.ndarray, window: tuple[float, float],
                      rng: np.random.Generator, settings: dict[str, Any] | None = None) -> np.ndarray:
    """Paint tumour-like blobs into a windowed stack ``x`` (C, H, W) inside ``organ`` (C, H, W bool).

    A lesion's HU is the organ's median on the centre slice plus a hypo- or hyperdense
    offset, with a fine texture, a soft edge and sometimes a brighter rim; it is kept
    inside the organ and smaller on the neighbouring slices. Returns the new stack (the
    organ's mask does not change).
    """
    s = {**DEFAULT_ORGAN_LESIONS, **(settings or {})}
    x = np.asarray(x, dtype=np.float32)
    organ = np.asarray(organ, dtype=bool)
    c, h, w = x.shape
    centre = c // 2
    inner = ndimage.binary_erosion(organ[centre], iterations=2)
    if inner.sum() < 100:
        return x
    lo, hi = window
    width = hi - lo
    median_hu = float(np.median(x[centre][inner])) * width + lo
    out = x.copy()
    cand = np.flatnonzero(inner.ravel())
    dist = ndimage.distance_transform_edt(organ[centre])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(rng.integers(int(s["n_lesions"][0]), int(s["n_lesions"][1]) + 1))
    for _ in range(n):
        k = int(cand[rng.integers(cand.size)])
        cy, cx = divmod(k, w)
        r_max = max(float(s["radius_px"][0]), float(dist[cy, cx]) * 1.3)  # mostly inside the organ
        r = float(np.exp(rng.uniform(np.log(s["radius_px"][0]), np.log(min(s["radius_px"][1], r_max)))))
        hyper = rng.random() < float(s["p_hyper"])
        delta = rng.uniform(*(s["hyper_delta_hu"] if hyper else s["hypo_delta_hu"]))
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(1.0, r / 3.0))
        noise /= noise.std() + 1e-6
        rough = rng.uniform(0.1, 0.35)
        texture = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 0.8)
        texture *= float(s["texture_hu"]) / (texture.std() + 1e-6)
        target = (median_hu + delta + texture - lo) / width
        rim = rng.random() < float(s["rim_p"])
        blur = rng.uniform(0.5, 1.5)
        shrink = rng.uniform(0.05, 0.4)
        for ch, m in _blob_slices(organ, yy, xx, cy, cx, r, rough, noise, shrink):
            soft = ndimage.gaussian_filter(m.astype(np.float32), blur) * organ[ch]
            out[ch] = out[ch] * (1.0 - soft) + target * soft
            if rim:
                ring = ndimage.binary_dilation(m, iterations=2) & ~m & organ[ch]
                out[ch][ring] += 25.0 / width
        out[:] = np.clip(out, 0.0, 1.0)
    return out


# --- the organ's contrast changed, its mask unchanged ------------------------------------
# Our training livers are contrast-enhanced (112-120 HU); a plain CT's liver is 40-65 HU, an
# arterial phase's 70-90 HU, a late portal phase's up to 150 HU, while the tissue around it
# (muscle, heart, spleen, bowel) changes by other amounts. Shifting only the organ's HU (and
# scaling its inner contrast) makes the organ's brightness relative to its neighbours a
# random variable, so the network must find the organ by its shape and context (the idea of
# label-conditioned intensity randomisation, as in SynthSeg, Billot et al., MedIA 2023).

DEFAULT_ORGAN_CONTRAST: dict[str, Any] = {
    "p": 0.5,                      # chance that a sample holding the organ gets a new contrast
    "median_hu": [30.0, 170.0],    # the organ's new median HU (uniform)
    "scale": [0.6, 1.2],           # the organ's inner contrast around its median (uniform)
    "edge_px": 1.0,                # Gaussian blend at the mask's edge (network pixels), so the
                                   # change has no step at the expert's line
}


def shift_organ_contrast(x: np.ndarray, organ: np.ndarray, window: tuple[float, float],
                         rng: np.random.Generator, settings: dict[str, Any] | None = None) -> np.ndarray:
    """Give the organ in a windowed stack ``x`` (C, H, W) a new median HU and inner contrast.

    ``organ`` (C, H, W bool) is its mask on each slice. The organ's median (over the whole
    stack) moves to a random HU of ``median_hu`` and its voxels' spread around it is scaled
    by a random factor of ``scale``; a Gaussian blend of ``edge_px`` carries the change across
    the mask's edge (partial-volume voxels move with the organ). Returns a new stack; the
    mask does not change. A stack without the organ comes back as it is.
    """
    s = {**DEFAULT_ORGAN_CONTRAST, **(settings or {})}
    x = np.asarray(x, dtype=np.float32)
    organ = np.asarray(organ, dtype=bool)
    if not organ.any():
        return x
    lo, hi = window
    width = hi - lo
    median = float(np.median(x[organ]))
    target = (rng.uniform(*s["median_hu"]) - lo) / width
    k = rng.uniform(*s["scale"])
    edge = float(s["edge_px"])
    soft = ndimage.gaussian_filter(organ.astype(np.float32), (0.0, edge, edge)) if edge > 0 else organ.astype(np.float32)
    soft = np.maximum(soft, organ)  # the whole organ moves, not only its blended edge
    changed = target + (x - median) * k
    return np.clip(x + soft * (changed - x), 0.0, 1.0)
