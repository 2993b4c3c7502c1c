"""Post-processing primitives on masks (z, y, x), a slab at a time (Qt-free).

The steps a model card names (``models.definition.apply_postprocess``) are made of these:
the largest connected components, axial hole filling, and the partial-volume band where a
slice cuts a surface almost flat. Each works inside the mask's bounding box so that a
512x512x600 scan never needs a second full-size temporary.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a boolean mask's True voxels, or None when there are none."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return None
    sub = mask[z[0]:z[-1] + 1]
    y = np.flatnonzero(sub.any(axis=(0, 2)))
    x = np.flatnonzero(sub.any(axis=(0, 1)))
    return (slice(z[0], z[-1] + 1), slice(y[0], y[-1] + 1), slice(x[0], x[-1] + 1))


SLAB = 32  # slices at a time where a whole-volume temporary would cost hundreds of MB


def largest_components(mask: np.ndarray, keep: int = 1, in_place: bool = False) -> np.ndarray:
    """The ``keep`` largest 3D connected components (6-connectivity) of a boolean mask
    (``in_place``: written into ``mask`` itself, no second full-size mask).

    Only the mask's bounding box is labelled, and the component sizes and the kept
    components are computed a slab of slices at a time: a 512x512x600 mask then needs its
    int32 labels and nothing else of that size (``np.bincount`` of the whole box would
    first copy the labels to int64)."""
    box = bbox(mask)
    out = mask if in_place else np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    labels, n = ndimage.label(mask[box])
    if n == 0:
        return out
    sizes = np.zeros(n + 1, dtype=np.int64)
    for z in range(0, labels.shape[0], SLAB):
        sizes += np.bincount(labels[z:z + SLAB].ravel(), minlength=n + 1)
    sizes[0] = 0
    lut = np.zeros(n + 1, dtype=bool)
    lut[np.argsort(sizes)[::-1][:keep]] = True
    lut[0] = False
    target = out[box]  # a view: writing it writes ``out``
    for z in range(0, labels.shape[0], SLAB):
        target[z:z + SLAB] = lut[labels[z:z + SLAB]]
    return out


def fill_holes_axial(mask: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Fill holes slice by slice (axial), inside the mask's bounding box."""
    box = bbox(mask)
    if box is None:
        return mask
    out = mask if in_place else mask.copy()
    for z in range(box[0].start, box[0].stop):
        out[z, box[1], box[2]] = ndimage.binary_fill_holes(out[z, box[1], box[2]])
    return out


def partial_volume_band(inside: np.ndarray, hu: np.ndarray, spacing, mm: float = 3.0,
                        tissue_hu: float = -300.0) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxels of ``inside`` (e.g. the lungs) within ``mm`` along the slice axis of tissue outside it.

    Where an axial slice cuts a surface that runs almost parallel to it (the diaphragm's dome
    under the lung bases, the soft tissue over the apices), the slice holds part lung and part
    tissue, and the lung there looks like ground glass. Those voxels have tissue (HU above
    ``tissue_hu``, outside ``inside``) in the same column at most ``mm`` (at least one slice)
    above or below them. A lesion elsewhere in the lung has none.

    Returns ``(box, band)``: the band on ``inside``'s bounding box (so that a 512x512x600 scan
    never needs another full-size mask), or None when ``inside`` is empty.
    """
    inside = np.asarray(inside)
    inside = inside if inside.dtype == bool else inside > 0
    box = bbox(inside)
    if box is None:
        return None
    n = inside.shape[0]
    k = max(1, int(np.ceil(float(mm) / float(spacing[0]) - 1e-6)))
    z0, z1 = max(box[0].start - k, 0), min(box[0].stop + k, n)
    wide = (slice(z0, z1), box[1], box[2])  # the tissue up to k slices beyond the lungs counts too
    lung = inside[wide]
    tissue = ~lung & (np.asarray(hu[wide]) > tissue_hu)
    near = np.zeros(lung.shape, dtype=bool)
    for s in range(1, min(k, lung.shape[0] - 1) + 1):
        near[:-s] |= tissue[s:]  # tissue s slices towards the feet
        near[s:] |= tissue[:-s]  # tissue s slices towards the head
    near &= lung
    inner = slice(box[0].start - z0, box[0].stop - z0)
    return box, near[inner]


def grow_into_hu(parts: dict, hu: np.ndarray, below: float, steps: int = 1, above: float | None = None) -> dict:
    """Grow each label's mask (``parts``: value -> bool mask, changed in place) by ``steps``
    face-neighbour (6-connected) layers into background voxels whose HU is below ``below`` (and
    at least ``above``, when given).

    The partial-volume rim: an outline drawn by hand (and lungmask's) takes the last voxels
    that are still mostly lung, at -200 to -400 HU beside the pleura, the diaphragm and the
    vessels; a network trained on few cases stops a voxel short. A voxel that two labels
    reach in the same step (where the lungs touch) stays background. Works on the labels'
    bounding box, never on another full-size array.
    """
    from scipy import ndimage

    masks = [m for m in parts.values()]
    union = np.zeros(masks[0].shape, dtype=bool) if masks else None
    if union is None:
        return parts
    for m in masks:
        union |= m
    box = bbox(union)
    if box is None:
        return parts
    k = int(steps)
    box = tuple(slice(max(b.start - k, 0), min(b.stop + k, n)) for b, n in zip(box, union.shape))
    values = np.asarray(hu[box])
    low = values < float(below)
    if above is not None:
        low &= values >= float(above)
    taken = union[box]
    structure = ndimage.generate_binary_structure(3, 1)
    for _ in range(k):
        free = low & ~taken
        claims = [ndimage.binary_dilation(m[box], structure) & free for m in masks]
        count = np.zeros(taken.shape, dtype=np.uint8)
        for c in claims:
            count += c
        for m, c in zip(masks, claims):
            c &= count == 1
            m[box] |= c
            taken |= c
    return parts

