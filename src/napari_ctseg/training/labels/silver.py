"""Silver-standard labels made by classical methods (Qt-free): lungs without the airways.

These labels train models where no expert mask exists (full chest CTs); they are never
used for validation, and every model card says which of its labels are silver.

``silver_lung_labels`` thresholds the air inside the body, removes the central airways
(``airway_mask``: the trachea found in the upper slices and grown in 3D into the main
bronchi, with a leak check), keeps the two lungs and fills small holes (vessels).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

SILVER_LUNGS_METHOD = (
    "classical: HU < -320, per slice minus the air connected to the slice's border (outside the "
    "body); the central airways removed (trachea found as a round air tube near the midline in "
    "the upper slices, grown in 3D with the highest threshold from -975 to -800 HU that does not leak into the lung, dilated by 2 mm); the "
    "two largest 3D components (split at the middle if they touch), right/left by position, holes "
    "up to 400 mm2 filled per slice (vessels; not the domes of liver and spleen)"
)


def inside_body_air(hu_zyx: np.ndarray, threshold_hu: float = -320.0) -> np.ndarray:
    """Voxels below ``threshold_hu`` that are not connected, in their axial slice, to the slice's border."""
    air = np.asarray(hu_zyx) < threshold_hu
    inside = np.zeros_like(air)
    for z in range(air.shape[0]):
        lab, n = ndimage.label(air[z])
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        keep = np.ones(n + 1, bool)
        keep[border] = False
        keep[0] = False
        inside[z] = keep[lab]
    return inside


def find_trachea_seed(hu_zyx: np.ndarray, spacing: Sequence[float], inside: np.ndarray | None = None,
                      search_mm: float = 60.0) -> np.ndarray | None:
    """A 2D mask of the trachea's lumen in one upper slice, or None when the scan shows no trachea.

    The trachea is an air tube (below -900 HU, 50-700 mm2, round) near the body's
    left-right midline, in front of the spine, that stays in place over at least 5 slices
    (10 mm); it is looked for in the top ``search_mm`` of the slices that hold air inside the body.
    Abdominal scans (lung bases only) have none.
    """
    hu = np.asarray(hu_zyx)
    if inside is None:
        inside = inside_body_air(hu)
    sz, sy, sx = (float(s) for s in spacing)
    px = sy * sx
    z_air = np.flatnonzero(inside.reshape(inside.shape[0], -1).any(axis=1))
    if z_air.size == 0:
        return None
    z_stop = min(hu.shape[0], int(z_air[0] + max(search_mm / sz, 6)))
    body = hu[z_air[0]] > -500
    xs = np.flatnonzero(body.any(axis=0))
    if xs.size == 0:
        return None
    candidates: list[tuple[int, np.ndarray, tuple[float, float]]] = []
    for z in range(int(z_air[0]), z_stop):
        dark = inside[z] & (hu[z] < -900)
        lab, n = ndimage.label(dark)
        if n == 0:
            continue
        body_x = np.flatnonzero((hu[z] > -500).any(axis=0))
        mid_x = 0.5 * (body_x[0] + body_x[-1]) if body_x.size else hu.shape[2] / 2
        width = (body_x[-1] - body_x[0]) if body_x.size else hu.shape[2]
        sizes = np.bincount(lab.ravel())
        air_lab, _ = ndimage.label(inside[z])
        air_sizes = np.bincount(air_lab.ravel())
        for k in range(1, n + 1):
            area = sizes[k] * px
            if not 50.0 <= area <= 700.0:
                continue
            comp = lab == k
            # A tube of its own in this slice, not a dark patch of a lung.
            if air_sizes[np.unique(air_lab[comp])].max() * px > 1000.0:
                continue
            cy, cx = ndimage.center_of_mass(comp)
            if abs(cx - mid_x) > 0.15 * width:
                continue
            ys, xs_ = np.nonzero(comp)
            h, w = (ys.max() - ys.min() + 1) * sy, (xs_.max() - xs_.min() + 1) * sx
            if max(h, w) > 3.0 * min(h, w):  # round or oval, not a sliver
                continue
            candidates.append((z, comp, (cy, cx)))
    # A tube: candidates in >= 5 consecutive slices within 10 mm of each other in-plane.
    by_z: dict[int, list[tuple[np.ndarray, tuple[float, float]]]] = {}
    for z, comp, c in candidates:
        by_z.setdefault(z, []).append((comp, c))
    for z0 in sorted(by_z):
        for comp, c in by_z[z0]:
            run, last = 1, c
            for z in range(z0 + 1, z0 + 5):
                nxt = [cc for _, cc in by_z.get(z, []) if np.hypot((cc[0] - last[0]) * sy, (cc[1] - last[1]) * sx) < 10]
                if not nxt:
                    break
                run, last = run + 1, nxt[0]
            if run >= 5:
                seed = np.zeros(hu.shape, bool)
                seed[z0] = comp
                return seed
    return None


def airway_mask(hu_zyx: np.ndarray, spacing: Sequence[float], inside: np.ndarray | None = None,
                max_ml: float = 250.0, min_ml: float = 8.0, min_length_mm: float = 40.0,
                dilate_mm: float = 2.0) -> np.ndarray:
    """The trachea and main bronchi (3D boolean), empty when no trachea is found.

    Region growing in 3D from the trachea seed through air below a threshold that is
    raised from -975 HU in steps of 25 HU (up to -800) until the grown volume leaks into the
    lung (more than ``max_ml``, or doubling past 100 mL); the last threshold before the leak
    is kept. An airway under ``min_ml`` or shorter than ``min_length_mm`` is no trachea.
    """
    hu = np.asarray(hu_zyx)
    if inside is None:
        inside = inside_body_air(hu)
    seed = find_trachea_seed(hu, spacing, inside)
    out = np.zeros(hu.shape, bool)
    if seed is None:
        return out
    voxel_ml = float(np.prod(spacing)) / 1000.0
    z0 = int(np.flatnonzero(seed.reshape(seed.shape[0], -1).any(axis=1))[0])
    best, prev_ml = None, 0.0
    for t in np.arange(-975.0, -774.0, 25.0):
        grown = _grow(inside & (hu < t), seed, z0)
        ml = float(grown.sum()) * voxel_ml
        if ml > max_ml or (ml > 100.0 and ml > 2.0 * prev_ml):  # leaked into the lung
            break
        best, prev_ml = grown, ml
    if best is None:
        return out
    zs = np.flatnonzero(best.reshape(best.shape[0], -1).any(axis=1))
    # Not a trachea: a short pocket of air (the oesophagus, bowel) in an abdominal scan.
    if prev_ml < min_ml or (zs[-1] - zs[0] + 1) * float(spacing[0]) < min_length_mm:
        return out
    if dilate_mm <= 0:
        return best
    # ``dilate_mm`` of wall-side partial volume go with the airway.
    r = np.maximum(np.rint(dilate_mm / np.asarray(spacing, float)), 0).astype(int)
    struct = np.zeros(tuple(2 * r + 1), bool)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    struct[((zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2) <= dilate_mm ** 2 + 1e-6] = True
    return ndimage.binary_dilation(best, structure=struct)


def _grow(allowed: np.ndarray, seed: np.ndarray, z0: int) -> np.ndarray:
    """The 6-connected component of ``allowed`` that holds the seed (slices from z0 down)."""
    lab, _ = ndimage.label(allowed[z0:])
    ids = np.unique(lab[seed[z0:] & allowed[z0:]])
    ids = ids[ids > 0]
    out = np.zeros(allowed.shape, bool)
    if ids.size:
        out[z0:] = np.isin(lab, ids)
    return out


def silver_lung_labels(hu_zyx: np.ndarray, spacing: Sequence[float], threshold_hu: float = -320.0,
                       max_hole_mm2: float = 400.0, remove_airways: bool = True) -> np.ndarray:
    """Silver-standard lung labels (0, 1 right, 2 left); see ``silver_lungs_and_airways``."""
    return silver_lungs_and_airways(hu_zyx, spacing, threshold_hu, max_hole_mm2, remove_airways)[0]


def silver_lungs_and_airways(hu_zyx: np.ndarray, spacing: Sequence[float], threshold_hu: float = -320.0,
                             max_hole_mm2: float = 400.0, remove_airways: bool = True
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Silver-standard lung labels (0, 1 right, 2 left) for a HU volume (z, y, x), by a classical method.

    Air below ``threshold_hu`` inside the body (per axial slice, air connected to the
    slice's border is outside), minus the central airways (``airway_mask``), the two
    largest 3D components (one component is split at its middle), the patient's right
    being the smaller x (the display axis x runs to the patient's left). Holes up to
    ``max_hole_mm2`` are filled slice by slice (vessels), larger ones not (the domes of
    liver and spleen under the lung bases). Good for clear lungs; it fails on dense
    disease. Never for validation. Returns the labels and the airway mask removed.
    """
    hu_zyx = np.asarray(hu_zyx)
    inside = inside_body_air(hu_zyx, threshold_hu)
    airways = airway_mask(hu_zyx, spacing, inside) if remove_airways else np.zeros(hu_zyx.shape, bool)
    if airways.any():
        inside &= ~airways
    out = np.zeros(hu_zyx.shape, np.uint8)
    lab, n = ndimage.label(inside)
    if n == 0:
        return out, airways
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    big = [int(k) for k in order[:2] if sizes[k] > 0.1 * sizes[order[0]]]
    if len(big) == 1:
        m = lab == big[0]
        xs = np.nonzero(m.any(axis=(0, 1)))[0]
        mid = (int(xs.min()) + int(xs.max())) // 2
        right = m.copy()
        right[..., mid:] = False
        parts = [right, m & ~right]
    else:
        centres = sorted((ndimage.center_of_mass(lab == k)[2], k) for k in big)
        parts = [lab == centres[0][1], lab == centres[1][1]]
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    for value, m in zip((1, 2), parts):
        for z in range(m.shape[0]):
            if not m[z].any():
                continue
            holes = ndimage.binary_fill_holes(m[z]) & ~m[z]
            hl, hn = ndimage.label(holes)
            if hn:
                small = np.bincount(hl.ravel()) * pixel_mm2 <= max_hole_mm2
                small[0] = False
                m[z] |= small[hl]
        m &= ~airways
        out[m] = value
    return out, airways
