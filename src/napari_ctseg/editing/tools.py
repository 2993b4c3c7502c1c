"""Mask editing tools: pure array functions over a label mask on the (z, y, x) grid.

Units: distances and radii in mm, ``spacing`` is the voxel size (z, y, x) in mm, volumes
in mL, intensities in HU. A mask is an integer array of labels, 0 being background.

Every tool works inside the bounding box of one label (plus the margin the tool needs),
never over the whole scan, and returns a ``RegionEdit``: that box and the new label
values inside it. A caller applies it to the box only (the napari widget records it for
undo), so a 512x512x600 mask stays interactive.

The tools touch one label and leave the others alone: they add the label only on
background voxels (0) and remove it by writing background. ``limit_edit_to_hu_range``
restricts any edit to the voxels whose HU lies in a range, as 3D Slicer's "editable
intensity range" does.

Morphology (grow, shrink, smooth) uses the ellipsoid of the given radius in mm on the
voxel grid, so anisotropic voxels are respected: a voxel q is within r of p when
((dz*sz)^2 + (dy*sy)^2 + (dx*sx)^2) <= r^2 (exactly scipy's binary dilation with that
footprint). scipy's dilation and distance transforms take seconds on a lung-sized box,
so the dilation ORs rows packed 64 voxels to a word, one pass per (dz, dy) row of the
ellipsoid, and the median counts from the runs of the mask along x. Islands and holes
are connected components of those runs (a graph of ~1e5 runs, not ~1e7 voxels).
``benchmarks/editing.py`` times each tool on a 512x512x600 mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[slice, ...]

HU_RANGE_PRESETS: dict[str, tuple[float, float]] = {
    # -1024 (not -1000): most scanners store air down to -1024, and it belongs to the lung.
    "lung": (-1024.0, -200.0),
    "soft tissue": (-100.0, 300.0),
    "fat": (-190.0, -30.0),
    "bone": (200.0, 3071.0),
}
"""Named HU ranges (low, high), inclusive, for ``limit_to_hu_range``."""

_EPS = 1e-6


@dataclass(frozen=True)
class RegionEdit:
    """A proposed change to a mask: the new label values of ``mask[box]``.

    ``box`` is a tuple of slices on the mask's axes; ``values`` has the box's shape.
    An edit with an empty box changes nothing.
    """

    box: Box
    values: np.ndarray

    @classmethod
    def nothing(cls, ndim: int = 3, dtype=np.uint8) -> RegionEdit:
        return cls(tuple(slice(0, 0) for _ in range(ndim)), np.zeros((0,) * ndim, dtype=dtype))

    @property
    def is_empty(self) -> bool:
        return self.values.size == 0

    def changed(self, mask: np.ndarray) -> np.ndarray:
        """Boolean array over the box: the voxels whose label this edit changes."""
        return np.asarray(mask[self.box]) != self.values

    def n_changed(self, mask: np.ndarray) -> int:
        return 0 if self.is_empty else int(np.count_nonzero(self.changed(mask)))

    def changed_indices(self, mask: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(indices into the whole mask, new values) of the changed voxels."""
        if self.is_empty:
            return tuple(np.zeros(0, np.intp) for _ in range(mask.ndim)), self.values.ravel()[:0]
        changed = self.changed(mask)
        local = np.nonzero(changed)
        indices = tuple(idx + s.start for idx, s in zip(local, self.box))
        return indices, self.values[changed]

    def apply(self, mask: np.ndarray) -> np.ndarray:
        """Write the edit into ``mask`` in place and return it."""
        if not self.is_empty:
            mask[self.box] = self.values
        return mask


# --- boxes -----------------------------------------------------------------------------
def label_box(mask: np.ndarray, label: int, margin=0) -> Box | None:
    """Bounding box (slices) of ``label`` in ``mask``, grown by ``margin`` voxels per axis
    (an int or one per axis) and clipped to the array; None when the label is absent."""
    present = np.asarray(mask) == label
    return _box_of(present, margin)


def _box_of(present: np.ndarray, margin=0) -> Box | None:
    ndim = present.ndim
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (ndim,))
    if ndim == 3:
        # Two cheap reductions instead of one per axis: (y, x) footprint, then z.
        plane = present.any(axis=0)
        if not plane.any():
            return None
        along = [present.reshape(present.shape[0], -1).any(axis=1), plane.any(axis=1), plane.any(axis=0)]
    else:
        along = [present.any(axis=tuple(a for a in range(ndim) if a != ax)) for ax in range(ndim)]
        if not along[0].any():
            return None
    box = []
    for ax, flags in enumerate(along):
        idx = np.flatnonzero(flags)
        lo = max(int(idx[0]) - int(margins[ax]), 0)
        hi = min(int(idx[-1]) + 1 + int(margins[ax]), present.shape[ax])
        box.append(slice(lo, hi))
    return tuple(box)


def _spacing3(spacing) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (3,)))
    if not all(s > 0 for s in sp):
        raise ValueError(f"spacing must be positive (z, y, x) mm, got {sp}")
    return sp


def _radius_voxels(radius_mm: float, spacing) -> np.ndarray:
    return np.floor(radius_mm / np.asarray(spacing, dtype=float) + _EPS).astype(int)


# --- HU range -------------------------------------------------------------------------
def limit_to_hu_range(change_mask: np.ndarray, hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """The voxels of ``change_mask`` that may change: those with ``low <= HU <= high``.

    ``change_mask`` and ``hu`` have the same shape (a whole volume or the same box of it).
    As 3D Slicer's editable intensity range: voxels outside the range keep their label.
    """
    hu = np.asarray(hu)
    if hu.shape != np.shape(change_mask):
        raise ValueError(f"HU array {hu.shape} and change mask {np.shape(change_mask)} differ in shape")
    return np.logical_and(change_mask, (hu >= low) & (hu <= high))


def limit_edit_to_hu_range(edit: RegionEdit, mask: np.ndarray, hu: np.ndarray,
                           low: float, high: float) -> RegionEdit:
    """``edit`` restricted to the voxels with ``low <= HU <= high`` (``hu``: the whole scan)."""
    if edit.is_empty:
        return edit
    old = np.asarray(mask[edit.box])
    allowed = limit_to_hu_range(old != edit.values, np.asarray(hu[edit.box]), low, high)
    return RegionEdit(edit.box, np.where(allowed, edit.values, old))


# --- volume ---------------------------------------------------------------------------
def label_volume_ml(mask: np.ndarray, label: int, spacing) -> float:
    """Volume of ``label`` in mL (1 mL = 1000 mm^3); ``spacing`` (z, y, x) mm."""
    return int(np.count_nonzero(np.asarray(mask) == label)) * float(np.prod(_spacing3(spacing))) / 1000.0


# --- fill between slices -----------------------------------------------------------------
def label_voxels(mask: np.ndarray) -> dict[str, int]:
    """Voxels per label value of a mask, background (0) left out: ``{"1": 5120, "2": 4800}``."""
    top = int(mask.max()) if mask.size else 0
    if np.issubdtype(mask.dtype, np.integer) and 0 < top <= 16 and mask.min() >= 0:
        # a few labels (the usual case): one comparison each beats a bincount of the volume
        counts = {str(v): int(np.count_nonzero(mask == v)) for v in range(1, top + 1)}
        return {k: c for k, c in counts.items() if c}
    if mask.size and np.issubdtype(mask.dtype, np.integer) and mask.min() >= 0 and top < 2**16:
        counts = np.bincount(mask.ravel())
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(mask, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts) if v != 0}


def outlined_slices(mask: np.ndarray, label: int, axis: int = 0) -> np.ndarray:
    """Indices along ``axis`` of the slices that hold ``label``."""
    present = np.asarray(mask) == label
    other = tuple(a for a in range(present.ndim) if a != axis)
    return np.flatnonzero(present.any(axis=other))


def _signed_distance(inside: np.ndarray, sampling) -> np.ndarray:
    """Signed distance (mm) to the outline: negative inside, positive outside, the outline
    half a voxel beyond the boundary voxels' centres."""
    half = 0.5 * float(np.mean(sampling))
    out = ndimage.distance_transform_edt(~inside, sampling=sampling)
    inn = ndimage.distance_transform_edt(inside, sampling=sampling)
    return np.where(inside, half - inn, out - half)


def interpolate_between_slices(mask: np.ndarray, label: int, axis: int = 0, spacing=None) -> RegionEdit:
    """Fill the slices between the ones the user outlined, by shape-based interpolation.

    The slices along ``axis`` that hold ``label`` are the outlines. Between two
    consecutive outlines with empty slices between them, each empty slice gets the
    outline where the linear blend of the two outlines' signed distance maps is negative
    (so a disc of radius 10 and one of radius 20 give discs of radius ~15 half way).
    ``spacing`` (z, y, x) mm weighs the in-plane distances (default: isotropic). As any
    shape-based interpolation, it needs outlines that overlap from one to the next: two
    outlines that do not overlap at all are not joined (outline one more slice between).

    Returns the proposed fill: only empty slices strictly between outlines change, and
    in them only background voxels become ``label``. Nothing to fill: an empty edit.
    """
    mask = np.asarray(mask)
    sp = (1.0, 1.0, 1.0) if spacing is None else _spacing3(spacing)
    keys = outlined_slices(mask, label, axis)
    gaps = [(int(a), int(b)) for a, b in zip(keys[:-1], keys[1:]) if b - a > 1]
    if not gaps:
        return RegionEdit.nothing(mask.ndim, mask.dtype)
    first, last = gaps[0][0], gaps[-1][1]
    along = [slice(None)] * mask.ndim
    along[axis] = slice(first, last + 1)
    block_box = _box_of(mask[tuple(along)] == label, margin=1)
    box = list(block_box)
    box[axis] = slice(first, last + 1)
    box = tuple(box)
    values = np.array(mask[box])
    moved = np.moveaxis(values, axis, 0)  # a view: writing it writes ``values``
    sampling = tuple(s for a, s in enumerate(sp) if a != axis)
    sd_b, b_prev = None, None
    for a, b in gaps:
        # consecutive gaps share an outline: its distance map is computed once
        sd_a = sd_b if a == b_prev else _signed_distance(moved[a - first] == label, sampling)
        sd_b, b_prev = _signed_distance(moved[b - first] == label, sampling), b
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            inside = (1.0 - t) * sd_a + t * sd_b < 0
            plane = moved[k - first]
            plane[inside & (plane == 0)] = label
    return RegionEdit(box, values)


# --- islands and holes ------------------------------------------------------------------
def _runs(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True along the last axis of a 3D array: (row index z*Y + y, start x, stop x),
    sorted by row then x."""
    z, y, x = inside.shape
    padded = np.zeros((z, y, x + 2), dtype=np.int8)
    padded[:, :, 1:-1] = inside
    step = np.diff(padded, axis=2)  # +1 where a run starts, -1 where one stops
    starts = np.flatnonzero(step == 1)
    stops = np.flatnonzero(step == -1)
    row, start = np.divmod(starts, x + 1)
    return row, start, stops % (x + 1)


# Which neighbouring rows (dz, dy) touch, and how far runs reach along x (0: overlap),
# for face (1), edge (2) and corner (3) connectivity; only "forward" rows: the graph is
# undirected. Connectivity 0 is face connectivity within each z slice.
_ROW_LINKS = {
    0: (((0, 1), 0),),
    1: (((0, 1), 0), ((1, 0), 0)),
    2: (((0, 1), 1), ((1, 0), 1), ((1, 1), 0), ((1, -1), 0)),
    3: (((0, 1), 1), ((1, 0), 1), ((1, 1), 1), ((1, -1), 1)),
}


def _run_components(row, start, stop, shape, connectivity) -> tuple[int, np.ndarray]:
    """Connected components of runs (from ``_runs``): (count, component of each run)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _nz, ny, nx = shape
    n = len(row)
    if n == 0:
        return 0, np.zeros(0, dtype=np.int32)
    width = nx + 1
    key_start = row * width + start
    key_stop = row * width + stop
    z, y = np.divmod(row, ny)
    src, dst = [], []
    for (dz, dy), reach in _ROW_LINKS[connectivity]:
        yy = y + dy
        ok = (yy >= 0) & (yy < ny)
        other = (z[ok] + dz) * ny + yy[ok]
        # runs j of the other row with start_j < stop_i + reach and stop_j > start_i - reach
        lo = np.searchsorted(key_stop, other * width + start[ok] - reach, side="right")
        hi = np.searchsorted(key_start, other * width + stop[ok] + reach, side="left")
        count = np.maximum(hi - lo, 0)
        total = int(count.sum())
        if not total:
            continue
        mine = np.repeat(np.flatnonzero(ok), count)
        first = np.repeat(lo, count)
        within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        src.append(mine)
        dst.append(first + within)
    if src:
        src, dst = np.concatenate(src), np.concatenate(dst)
    else:
        src = dst = np.zeros(0, dtype=np.intp)
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)


def _paint_runs(values: np.ndarray, row, start, stop, value) -> None:
    """Set the voxels of the given runs of a (z, y, x) array to ``value``, in place."""
    if len(row) == 0:
        return
    nx = values.shape[2]
    length = stop - start
    flat = np.repeat(row * nx + start - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))
    values.reshape(-1)[flat] = value


def remove_islands(mask: np.ndarray, label: int, keep: int | None = 1, min_size_voxels: int = 0,
                   connectivity: int = 1) -> RegionEdit:
    """Keep the ``keep`` largest 3D connected pieces of ``label`` and erase the rest.

    ``keep=None`` keeps any number; pieces smaller than ``min_size_voxels`` go in any
    case. ``connectivity`` 1 joins voxels sharing a face (6-neighbourhood), 2 an edge
    (18), 3 a corner (26). Erased voxels become background.
    """
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    mask = np.asarray(mask)
    box = label_box(mask, label)
    if box is None:
        return RegionEdit.nothing(mask.ndim, mask.dtype)
    region = mask[box]
    row, start, stop = _runs(region == label)
    n, piece = _run_components(row, start, stop, region.shape, connectivity)
    sizes = np.bincount(piece, weights=stop - start, minlength=n).astype(np.int64)
    keep_piece = np.ones(n, dtype=bool)
    if keep is not None:
        order = np.argsort(-sizes, kind="stable")
        keep_piece[order[max(int(keep), 0):]] = False
    keep_piece[sizes < int(min_size_voxels)] = False
    erase = ~keep_piece[piece]
    values = region.copy()
    _paint_runs(values, row[erase], start[erase], stop[erase], 0)
    return RegionEdit(box, values)


def fill_holes(mask: np.ndarray, label: int, mode: str = "slice") -> RegionEdit:
    """Fill the holes of ``label``: background enclosed by it.

    ``mode="slice"`` (default) fills each axial (z) slice on its own: a vessel crossing
    the liver is a hole in the axial slices though it opens to the outside in 3D.
    ``mode="3d"`` fills only cavities closed in 3D (face-connected background). The edge
    of the volume counts as outside. Voxels of other labels inside a hole keep their label.
    """
    if mode not in ("slice", "3d"):
        raise ValueError(f"mode must be 'slice' or '3d', got {mode!r}")
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"a (z, y, x) mask is needed, got {mask.ndim}D")
    box = label_box(mask, label)
    if box is None:
        return RegionEdit.nothing(mask.ndim, mask.dtype)
    region = mask[box]
    nz, ny, nx = region.shape
    row, start, stop = _runs(region != label)
    n, piece = _run_components(row, start, stop, region.shape, 0 if mode == "slice" else 1)
    # The box is the label's bounding box: background on its faces reaches the outside.
    z, y = np.divmod(row, ny)
    edge = (start == 0) | (stop == nx) | (y == 0) | (y == ny - 1)
    if mode == "3d":
        edge |= (z == 0) | (z == nz - 1)
    outside = np.zeros(n, dtype=bool)
    outside[piece[edge]] = True
    hole = ~outside[piece]
    filled = region.copy()
    _paint_runs(filled, row[hole], start[hole], stop[hole], label)
    return RegionEdit(box, np.where(region == 0, filled, region))


# --- morphology on the ellipsoid ----------------------------------------------------------
def ellipsoid_rows(radius_mm: float, spacing) -> list[tuple[int, int, int]]:
    """The ellipsoid of radius ``radius_mm`` on the voxel grid, as rows along x:
    (dz, dy, w) means offsets (dz, dy, -w..w) are within the radius."""
    sz, sy, sx = _spacing3(spacing)
    rz, ry, _ = _radius_voxels(radius_mm, (sz, sy, sx))
    r2 = radius_mm * radius_mm * (1 + _EPS)
    rows = []
    for dz in range(-rz, rz + 1):
        for dy in range(-ry, ry + 1):
            rest = r2 - (dz * sz) ** 2 - (dy * sy) ** 2
            if rest >= 0:
                rows.append((dz, dy, int(np.floor(np.sqrt(rest) / sx + _EPS))))
    return rows


# Dilation works on bits: each row along x packed into 64-bit words, so one OR of two
# shifted arrays handles 64 voxels per operation.
def _pack(inside: np.ndarray) -> np.ndarray:
    nz, ny, nx = inside.shape
    words = -(-nx // 64)
    padded = np.zeros((nz, ny, words * 64), dtype=bool)
    padded[:, :, :nx] = inside
    return np.packbits(padded, axis=2, bitorder="little").view("<u8")


def _unpack(words: np.ndarray, nx: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), axis=2, count=nx, bitorder="little").view(bool)


def _invert(words: np.ndarray, nx: int) -> np.ndarray:
    """NOT of packed rows, the padding bits past ``nx`` kept at 0."""
    valid = np.zeros(words.shape[-1] * 64, dtype=bool)
    valid[:nx] = True
    return ~words & np.packbits(valid, bitorder="little").view("<u8")


def _shift_x(words: np.ndarray, s: int) -> np.ndarray:
    """Packed rows moved by ``s`` voxels along x (towards higher x when s > 0)."""
    out = np.zeros_like(words)
    q, b = divmod(abs(s), 64)
    nw = words.shape[-1]
    if q >= nw:
        return out
    if s > 0:
        src, dst = words[..., :nw - q], out[..., q:]
        if b:
            dst |= src << np.uint64(b)
            dst[..., 1:] |= src[..., :-1] >> np.uint64(64 - b)
        else:
            dst |= src
    else:
        src, dst = words[..., q:], out[..., :nw - q]
        if b:
            dst |= src >> np.uint64(b)
            dst[..., :-1] |= src[..., 1:] << np.uint64(64 - b)
        else:
            dst |= src
    return out


def _dilate_words(words: np.ndarray, rows) -> np.ndarray:
    """Dilation of packed rows by the ellipsoid ``rows``, clipped to the array."""
    wmax = max(w for _, _, w in rows)
    lines = [words]  # lines[w]: dilated by -w..w along x
    for w in range(1, wmax + 1):
        lines.append(lines[-1] | _shift_x(words, w) | _shift_x(words, -w))
    out = np.zeros_like(words)
    nz, ny = words.shape[:2]
    for dz, dy, w in rows:
        if abs(dz) >= nz or abs(dy) >= ny:
            continue
        dst = out[max(dz, 0):nz + min(dz, 0), max(dy, 0):ny + min(dy, 0)]
        np.bitwise_or(dst, lines[w][max(-dz, 0):nz + min(-dz, 0), max(-dy, 0):ny + min(-dy, 0)], out=dst)
    return out


def _dilate(inside: np.ndarray, rows) -> np.ndarray:
    """Binary dilation of a 3D array by the ellipsoid ``rows``, clipped to the array."""
    return _unpack(_dilate_words(_pack(inside), rows), inside.shape[2])


def _majority(inside: np.ndarray, rows, chunk: int = 8) -> np.ndarray:
    """True where more than half of the ellipsoid ``rows`` around a voxel is True.

    Counts come from the runs along x: over a run [a, b) the count of a window x-w..x+w
    is a trapezoid in x whose second difference is +1 at a-w, -1 at a+w+1, -1 at b-w and
    +1 at b+w+1. They are accumulated a few z slices at a time, in a buffer that stays
    in the CPU cache.
    """
    nz, ny, nx = inside.shape
    total = sum(2 * w + 1 for _, _, w in rows)
    row, start, stop = _runs(inside)
    z, y = np.divmod(row, ny)
    first_run = np.searchsorted(z, np.arange(nz + 1))
    wmax = max(w for _, _, w in rows)
    off = wmax + 1
    length = nx + 2 * wmax + 3
    signs = np.array([1, -1, -1, 1], dtype=np.int32)
    out = np.empty(inside.shape, dtype=bool)
    acc = np.zeros(chunk * ny * length, dtype=np.int32)
    for z0 in range(0, nz, chunk):
        z1 = min(z0 + chunk, nz)
        acc[:] = 0
        for dz, dy, w in rows:
            lo = first_run[min(max(z0 - dz, 0), nz)]
            hi = first_run[min(max(z1 - dz, 0), nz)]
            if lo >= hi:
                continue
            yy = y[lo:hi] + dy
            ok = (yy >= 0) & (yy < ny)
            base = ((z[lo:hi][ok] + dz - z0) * ny + yy[ok]) * length + off
            a, b = start[lo:hi][ok], stop[lo:hi][ok]
            index = np.concatenate((base + a - w, base + a + w + 1, base + b - w, base + b + w + 1))
            np.add.at(acc, index, np.repeat(signs, len(a)))
        part = acc[:(z1 - z0) * ny * length].reshape(z1 - z0, ny, length)
        np.cumsum(part, axis=2, out=part)
        np.cumsum(part, axis=2, out=part)
        np.greater(2 * part[:, :, off:off + nx], total, out=out[z0:z1])
    return out


def _morph_setup(mask, label, radius_mm, spacing, margin_factor):
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"a (z, y, x) mask is needed, got {mask.ndim}D")
    if not radius_mm > 0:
        return None
    sp = _spacing3(spacing)
    margin = _radius_voxels(radius_mm, sp) * margin_factor + 1
    box = label_box(mask, label, margin)
    if box is None:
        return None
    return mask, box, ellipsoid_rows(radius_mm, sp)


def _edit(box, region, label, add=None, remove=None) -> RegionEdit:
    values = region.copy()
    if remove is not None:
        values[remove & (region == label)] = 0
    if add is not None:
        values[add & (region == 0)] = label
    return RegionEdit(box, values)


def grow(mask: np.ndarray, label: int, mm: float, spacing) -> RegionEdit:
    """Grow ``label`` by ``mm`` in every direction (the ellipsoid of that radius in mm on
    the voxel grid of ``spacing`` (z, y, x) mm), into background voxels only."""
    setup = _morph_setup(mask, label, mm, spacing, 1)
    if setup is None:
        return RegionEdit.nothing(np.ndim(mask), np.asarray(mask).dtype)
    mask, box, rows = setup
    region = mask[box]
    return _edit(box, region, label, add=_dilate(region == label, rows))


def shrink(mask: np.ndarray, label: int, mm: float, spacing) -> RegionEdit:
    """Shrink ``label`` by ``mm``: its voxels within ``mm`` of anything that is not
    ``label`` become background. The edge of the volume is not a boundary."""
    setup = _morph_setup(mask, label, mm, spacing, 1)
    if setup is None:
        return RegionEdit.nothing(np.ndim(mask), np.asarray(mask).dtype)
    mask, box, rows = setup
    region = mask[box]
    return _edit(box, region, label, remove=_dilate(region != label, rows))


SMOOTH_METHODS = ("open", "close", "median")


def smooth(mask: np.ndarray, label: int, radius_mm: float, spacing, method: str = "close") -> RegionEdit:
    """Smooth the outline of ``label`` with the ellipsoid of ``radius_mm``.

    ``"open"`` (shrink, then grow) removes bumps and bridges thinner than the ellipsoid;
    ``"close"`` (grow, then shrink) fills dents and gaps narrower than it, on background
    only; ``"median"`` gives each voxel the majority within the ellipsoid (adds on
    background, removes to background).
    """
    if method not in SMOOTH_METHODS:
        raise ValueError(f"method must be one of {SMOOTH_METHODS}, got {method!r}")
    setup = _morph_setup(mask, label, radius_mm, spacing, 2 if method == "close" else 1)
    if setup is None:
        return RegionEdit.nothing(np.ndim(mask), np.asarray(mask).dtype)
    mask, box, rows = setup
    region = mask[box]
    inside = region == label
    nx = region.shape[2]
    if method == "open":
        eroded = _invert(_dilate_words(_pack(~inside), rows), nx)
        result = _unpack(_dilate_words(eroded, rows), nx)
    elif method == "close":
        dilated = _dilate_words(_pack(inside), rows)
        result = ~_unpack(_dilate_words(_invert(dilated, nx), rows), nx)
    else:
        result = _majority(inside, rows)
    return _edit(box, region, label, add=result, remove=~result)
