"""The robot user of the interactive-segmentation literature (click to correct, issue 21).

Starting from a mask, each click goes at the point deepest inside the largest error region
(include where the mask misses, exclude where it has extra), on the plane where that
region's cross-section is largest; the mask is refined (``editing.refine.refine``, with the
classical method or a guidance-aware version's ``GuidedRefiner``) and scored after every
click. The exact rules are in ``benchmarks/interactive.py``'s docstring. Used by that
benchmark, ``benchmarks/interactive_gui.py`` and the validation of guidance-aware training.
Qt-free.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax))) for ax in range(mask.ndim)]
    if any(i.size == 0 for i in idx):
        return None
    return tuple(slice(max(int(i[0]) - margin, 0), min(int(i[-1]) + 1 + margin, n))
                 for i, n in zip(idx, mask.shape))


def largest_plane(region: np.ndarray, spacing) -> tuple[int, int]:
    """(axis, index) of the axial, coronal or sagittal plane where the 3D boolean ``region``'s
    cross-section is largest (mm^2); ties: the first index, then axial, coronal, sagittal. A
    one-slice volume: its axial plane."""
    sp = np.asarray(spacing, dtype=float)
    best = None  # (area mm2, axis, index)
    for ax in range(3):
        if region.shape[0] == 1 and ax != 0:
            continue
        others = tuple(a for a in range(3) if a != ax)
        area = region.sum(axis=others) * float(np.prod(sp[list(others)]))
        k = int(np.argmax(area))
        if best is None or area[k] > best[0]:
            best = (float(area[k]), ax, k)
    return best[1], best[2]


def stroke_through(region: np.ndarray, spacing) -> np.ndarray:
    """The robot's scribble in a 3D boolean ``region``: (n, 3) voxels, the skeleton
    (``skimage.morphology.skeletonize``) of the region's largest cross-section
    (``largest_plane``), the line a user draws along an elongated error; the deepest point
    alone when the skeleton is empty."""
    from skimage.morphology import skeletonize

    ax, k = largest_plane(region, spacing)
    others = [a for a in range(3) if a != ax]
    plane = np.take(region, k, axis=ax)
    uv = np.argwhere(skeletonize(plane) & plane)
    if not len(uv):
        return np.asarray([deepest_point(region, spacing)])
    out = np.zeros((len(uv), 3), dtype=np.int64)
    out[:, ax] = k
    out[:, others[0]], out[:, others[1]] = uv[:, 0], uv[:, 1]
    return out


def deepest_point(region: np.ndarray, spacing) -> tuple[int, int, int]:
    """The robot's click in a 3D boolean ``region``: on the axial, coronal or sagittal plane
    where the region's cross-section is largest (mm^2), the voxel deepest inside that
    cross-section (2D Euclidean distance transform with the plane's spacing; outside the
    region and outside the array count as outside). Ties, on the plane or between planes:
    the deepest voxel nearest (mm) the mean position of all the deepest ones, then the first
    in order; the plane: axial, then coronal, then sagittal."""
    sp = np.asarray(spacing, dtype=float)
    ax, k = largest_plane(region, sp)
    others = [a for a in range(3) if a != ax]
    plane = np.take(region, k, axis=ax)
    depth = ndimage.distance_transform_edt(np.pad(plane, 1), sampling=sp[others])[1:-1, 1:-1]
    # ties (a ridge of equal depth in an elongated region): the one nearest their middle
    tied = np.argwhere(depth >= depth.max() - 1e-6)
    middle = tied.mean(axis=0)
    u, v = (int(c) for c in tied[int(np.argmin((((tied - middle) * sp[others]) ** 2).sum(axis=1)))])
    out = [0, 0, 0]
    out[ax], out[others[0]], out[others[1]] = k, int(u), int(v)
    return tuple(out)


@dataclass
class Region:
    size: int
    label: int
    include: bool
    box: tuple[slice, ...]
    voxels: np.ndarray  # bool, on ``box``


def error_regions(reference: np.ndarray, mask: np.ndarray, labels) -> list[Region]:
    """Every error region (see the module docstring, step 1), largest first."""
    around = _bbox((reference > 0) | (mask > 0))
    if around is None:
        return []
    ref, cur = reference[around], mask[around]
    found = []
    for label in labels:
        for include, err in ((True, (ref == label) & (cur == 0)), (False, (cur == label) & (ref != label))):
            if not err.any():
                continue
            pieces, n = ndimage.label(err)
            sizes = np.bincount(pieces.ravel(), minlength=n + 1)
            for i, sl in enumerate(ndimage.find_objects(pieces), 1):
                if sl is None:
                    continue
                box = tuple(slice(a.start + s.start, a.start + s.stop) for a, s in zip(around, sl))
                found.append(Region(int(sizes[i]), int(label), include, box, pieces[sl] == i))
    found.sort(key=lambda r: (-r.size, r.label, not r.include))
    return found


def next_click(reference, mask, labels, spacing, clicked=frozenset()):
    """(label, Click, region size) the robot makes next, or None when no error is left."""
    from napari_ctseg.editing.refine import Click

    for r in error_regions(reference, mask, labels):
        local = deepest_point(r.voxels, spacing)
        zyx = tuple(int(b.start + v) for b, v in zip(r.box, local))
        if (r.label, r.include, zyx) not in clicked:
            return r.label, Click(zyx, include=r.include), r.size
    return None


def score(mask: np.ndarray, reference: np.ndarray, labels) -> dict:
    """Dice of the target as one structure and, for several labels, per label."""
    from napari_ctseg.evaluation.metrics import dice

    out = {"dice": dice(mask > 0, reference > 0)}
    if len(labels) > 1:
        out["per_label"] = {int(v): dice(mask == v, reference == v) for v in labels}
    return out


@dataclass
class RobotRun:
    dice: list[float] = field(default_factory=list)  # after 0, 1, ... clicks
    per_label: list[dict] = field(default_factory=list)
    clicks: list[dict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # the core's, per click
    robot_seconds: float = 0.0

    def dice_after(self, k: int) -> float:
        return self.dice[min(k, len(self.dice) - 1)]

    def noc(self, level: float, cap: int) -> int | None:
        for k in range(0, cap + 1):
            if self.dice_after(k) >= level:
                return k
        return None


def _start(mask, reference, labels) -> tuple[np.ndarray, RobotRun]:
    """A copy of the mask to work on, and a run holding its score."""
    cur = np.array(mask, copy=True)
    run = RobotRun()
    first = score(cur, reference, labels)
    run.dice.append(first["dice"])
    run.per_label.append(first.get("per_label", {}))
    return cur, run


def _scored(run: RobotRun, cur, reference, labels, seconds: float) -> dict:
    """Score the mask after a step into ``run`` (and the step's seconds, when it ran)."""
    s = score(cur, reference, labels)
    run.dice.append(s["dice"])
    run.per_label.append(s.get("per_label", {}))
    if np.isfinite(seconds):
        run.seconds.append(seconds)
    return s


def robot_user(hu, mask, reference, labels, spacing, n_clicks: int = 10, on_click=None,
               refiner=None) -> RobotRun:
    """Run the robot user for ``n_clicks`` clicks from the automatic ``mask`` (not modified);
    ``refiner``: a guidance-aware version's ``GuidedRefiner`` (default: the classical method),
    given every earlier click on the same label."""
    from napari_ctseg.errors import RefineError

    from napari_ctseg.editing.refine import refine

    labels = tuple(int(v) for v in labels)
    cur, run = _start(mask, reference, labels)
    clicked: set = set()
    history: dict[int, list] = {}
    for n in range(1, n_clicks + 1):
        t0 = time.perf_counter()
        chosen = next_click(reference, cur, labels, spacing, clicked)
        run.robot_seconds += time.perf_counter() - t0
        if chosen is None:
            break
        label, click, size = chosen
        clicked.add((label, click.include, click.zyx))
        results: list = []
        try:
            cur, _ = refine(hu, cur, label, [click], spacing, results=results, refiner=refiner,
                            history=history.get(label, []))
            history.setdefault(label, []).append(click)
            seconds, added, removed, error = results[0].seconds, results[0].added, results[0].removed, None
        except RefineError as exc:  # counted as a click that did nothing
            seconds, added, removed, error = float("nan"), 0, 0, str(exc)
        s = _scored(run, cur, reference, labels, seconds)
        row = {"n": n, "label": label, "kind": click.kind, "zyx": list(click.zyx), "region_voxels": size,
               "added": added, "removed": removed, "seconds": seconds, "dice": s["dice"]}
        if error:
            row["error"] = error
        run.clicks.append(row)
        if on_click is not None:
            on_click(row)
    return run


def next_stroke(reference, mask, labels, spacing, stroked: set):
    """(region, its stroke's (n, 3) voxels) the stroke robot draws next, or None when no error
    is left; a region stroked before (its key is in ``stroked``, which this adds to) is passed over."""
    for r in error_regions(reference, mask, labels):
        voxels = stroke_through(r.voxels, spacing) + np.array([b.start for b in r.box])
        key = (r.label, r.include, tuple(map(tuple, voxels[:3])))
        if key not in stroked:
            stroked.add(key)
            return r, voxels
    return None


def robot_strokes(hu, mask, reference, labels, spacing, n_strokes: int = 5, on_stroke=None) -> RobotRun:
    """The robot user with scribbles: each step one stroke (``stroke_through``) through the
    largest error region (include where the mask misses, exclude where it has extra), applied
    with ``editing.refine_stroke`` and the classical method; a region stroked before is
    passed over for the next. ``RobotRun.clicks`` holds a row per stroke."""
    from napari_ctseg.editing.refine_stroke import refine_stroke
    from napari_ctseg.errors import RefineError

    labels = tuple(int(v) for v in labels)
    cur, run = _start(mask, reference, labels)
    stroked: set = set()
    for n in range(1, n_strokes + 1):
        t0 = time.perf_counter()
        chosen = next_stroke(reference, cur, labels, spacing, stroked)
        run.robot_seconds += time.perf_counter() - t0
        if chosen is None:
            break
        r, voxels = chosen
        t1 = time.perf_counter()
        try:
            edit, clicks = refine_stroke(hu, cur, r.label, voxels, r.include, spacing)
            before = cur[edit.box] == r.label
            added = int(np.count_nonzero((edit.values == r.label) & ~before))
            removed = int(np.count_nonzero(before & (edit.values != r.label)))
            edit.apply(cur)
            seconds, error, n_clicks = time.perf_counter() - t1, None, len(clicks)
        except RefineError as exc:
            seconds, added, removed, error, n_clicks = float("nan"), 0, 0, str(exc), 0
        s = _scored(run, cur, reference, labels, seconds)
        row = {"n": n, "label": r.label, "kind": "include" if r.include else "exclude", "zyx": list(map(int, voxels[0])),
               "stroke_voxels": int(len(voxels)), "clicks": n_clicks, "region_voxels": r.size, "added": added,
               "removed": removed, "seconds": seconds, "dice": s["dice"]}
        if error:
            row["error"] = error
        run.clicks.append(row)
        if on_stroke is not None:
            on_stroke(row)
    return run


def box_on(structure: np.ndarray, axis: int) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The robot's box on plane ``axis`` (0 axial, 1 coronal, 2 sagittal): the tight rectangle
    around the 3D boolean ``structure``'s largest cross-section on that plane (voxel count;
    ties: the first), as two opposite corners (z, y, x), equal on ``axis``; None for an empty
    structure."""
    others = tuple(a for a in range(3) if a != axis)
    area = structure.sum(axis=others)
    if not area.any():
        return None
    k = int(np.argmax(area))
    rows, cols = np.nonzero(np.take(structure, k, axis=axis))
    lo, hi = [k, k, k], [k, k, k]
    lo[others[0]], hi[others[0]] = int(rows.min()), int(rows.max())
    lo[others[1]], hi[others[1]] = int(cols.min()), int(cols.max())
    return tuple(lo), tuple(hi)
