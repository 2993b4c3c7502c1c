"""Segmentation agreement: Dice, IoU, HD95, average surface distance, volume in mL.

Masks are boolean (or label == value) arrays of the same shape, on axes (z, y, x) for
volumes or (y, x) for slices; ``spacing`` is the voxel size along those axes in mm, so
distances respect anisotropic voxels.

Empty masks, by definition here:

* both empty: Dice 1, IoU 1, HD95 0 mm, ASD 0 mm (the two agree perfectly);
* one empty, the other not: Dice 0, IoU 0, HD95 ``nan``, ASD ``nan`` (no surface to
  measure a distance to). Use ``numpy.nanmean`` when averaging over cases, and count
  the ``nan`` cases separately.

Surfaces are the mask voxels with at least one face-neighbour outside the mask (the
array's border counts as outside). Surface distances are from the centre of each
surface voxel of one mask to the nearest surface voxel centre of the other.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))
    if any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return spacing


def dice(a, b) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    a, b = _pair(a, b)
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


def iou(a, b) -> float:
    """Intersection over union (Jaccard) |A∩B| / |A∪B|; 1.0 when both masks are empty."""
    a, b = _pair(a, b)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def volume_ml(mask, spacing) -> float:
    """Volume of a mask in mL (1 mL = 1000 mm³), ``spacing`` in mm per axis."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.sum()) * float(np.prod(_spacing(spacing, mask.ndim))) / 1000.0


def surface(mask) -> np.ndarray:
    """Mask voxels with at least one face-neighbour outside the mask (or on the array border)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a, b, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``a`` to the surface of ``b``, and back.

    Returns ``(a_to_b, b_to_a)``; both empty arrays when either mask is empty.
    """
    a, b = _pair(a, b)
    spacing = _spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    # Work inside the bounding box of both masks plus one voxel: every surface voxel lies
    # inside it, so the distances are exact and a small box is much faster. The masks
    # never touch the box's edge except at the array's own border, where the border
    # counts as outside either way, so surfaces found in the box are the true ones.
    both = a | b
    box = []
    for axis in range(a.ndim):
        other = tuple(i for i in range(a.ndim) if i != axis)
        idx = np.nonzero(both.any(axis=other))[0]
        box.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    box = tuple(box)
    sa, sb = surface(a[box]), surface(b[box])
    dist_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return dist_to_b[sa], dist_to_a[sb]


def _pooled_distances(a, b, spacing):
    """Both directions' surface distances pooled, or 0.0 (both empty) / nan (one empty)."""
    a, b = _pair(a, b)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float("nan")
    return np.concatenate(surface_distances(a, b, spacing))


def hd95(a, b, spacing=None) -> float:
    """95th percentile Hausdorff distance in mm (symmetric: both directions pooled).

    0.0 when both masks are empty, ``nan`` when exactly one is.
    """
    d = _pooled_distances(a, b, spacing)
    return d if isinstance(d, float) else float(np.percentile(d, 95))


def asd(a, b, spacing=None) -> float:
    """Average symmetric surface distance in mm (mean over both directions' distances, pooled).

    0.0 when both masks are empty, ``nan`` when exactly one is.
    """
    d = _pooled_distances(a, b, spacing)
    return d if isinstance(d, float) else float(d.mean())


def compare(pred, ref, spacing=None, labels: dict[str, int] | None = None,
            distances: bool = True) -> dict[str, dict[str, float]]:
    """Per-label figures for a predicted label map against a reference one.

    ``labels`` maps names to label values (default: every non-zero value in either map,
    named by its value). For each label: dice, iou, and, with ``distances``, hd95_mm and
    asd_mm, plus volume_ml of the prediction and of the reference.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference differ in shape: {pred.shape} vs {ref.shape}")
    if labels is None:
        values = sorted(set(np.unique(pred).tolist()) | set(np.unique(ref).tolist()) - {0})
        labels = {str(v): int(v) for v in values}
    out: dict[str, dict[str, float]] = {}
    for name, value in labels.items():
        p, r = pred == value, ref == value
        row = {"dice": dice(p, r), "iou": iou(p, r)}
        if distances:
            row["hd95_mm"] = hd95(p, r, spacing)
            row["asd_mm"] = asd(p, r, spacing)
        row["volume_ml"] = volume_ml(p, spacing if spacing is not None else 1.0)
        row["reference_volume_ml"] = volume_ml(r, spacing if spacing is not None else 1.0)
        out[name] = row
    return out


def mean_ignoring_nan(values: Sequence[float]) -> float:
    """Mean of the finite values (nan when there are none)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
