"""Click to correct with a scribble: an include or exclude stroke painted on a 2D view.

A stroke says more than a click: "all of this is (not) the label". ``refine_stroke`` turns
the stroke's voxels into clicks spread along it (``stroke_clicks``: farthest-point sampling,
one click per ``STEP_MM`` of stroke, at most ``MAX_CLICKS``), applies them in order as
``refine`` applies clicks (the random walker by default; ``click_edit`` may be a guidance-aware
network or the warm child process), then what the user painted: an include stroke's voxels
on background join the label, an exclude stroke's voxels of the label become background
(other labels are never touched). The result is **one** ``RegionEdit``: one undo step for
the whole stroke. Qt-free; arrays on the display grid (z, y, x), spacing (z, y, x) mm.
"""
from __future__ import annotations

import numpy as np

from napari_ctseg.editing.refine import Click, _check_inputs, _spacing3, refine_click
from napari_ctseg.editing.tools import RegionEdit
from napari_ctseg.errors import RefineError

STEP_MM = 15.0  # one click per this much stroke
MAX_CLICKS = 8  # a long stroke: no more clicks than this (about 2-3 s with the random walker)


def stroke_voxels(voxels, shape) -> np.ndarray:
    """(n, 3) int: the stroke's distinct voxels inside ``shape``; ``RefineError`` for none."""
    v = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    inside = np.all((v >= 0) & (v < np.asarray(shape)), axis=1)
    v = np.unique(v[inside], axis=0)
    if not len(v):
        raise RefineError("the stroke has no voxel inside the volume")
    return v


def stroke_clicks(voxels, include: bool, spacing, step_mm: float = STEP_MM,
                  max_clicks: int = MAX_CLICKS) -> list[Click]:
    """Clicks spread along a stroke: its voxel nearest its centre first, then, each time,
    the stroke voxel farthest (mm) from every click so far, while that is at least
    ``step_mm``, up to ``max_clicks``."""
    v = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    if not len(v):
        return []
    mm = v * _spacing3(spacing)
    first = int(np.argmin(((mm - mm.mean(0)) ** 2).sum(1)))
    chosen = [first]
    dist = np.sqrt(((mm - mm[first]) ** 2).sum(1))
    while len(chosen) < max_clicks:
        far = int(np.argmax(dist))
        if dist[far] < step_mm:
            break
        chosen.append(far)
        dist = np.minimum(dist, np.sqrt(((mm - mm[far]) ** 2).sum(1)))
    return [Click(tuple(v[i]), include) for i in chosen]


def refine_stroke(hu: np.ndarray, mask: np.ndarray, label: int, voxels, include: bool, spacing, *,
                  click_edit=None, history=()) -> tuple[RegionEdit, list[Click]]:
    """The edit of one include/exclude stroke on ``label`` (not applied: ``edit.apply(mask)``)
    and the clicks it was made of.

    ``voxels``: the stroke's (n, 3) display-grid indices. Only the stroke's voxels where the
    click may act are used: background or ``label`` for an include (an include never takes
    another label's voxels), ``label`` for an exclude. ``click_edit(hu, mask, label, click,
    spacing, history)`` returns one click's ``RegionEdit`` (default: ``refine_click``);
    ``history``: earlier clicks on this label, for a guidance-aware network. ``RefineError``
    when no voxel of the stroke can be used.
    """
    _check_inputs(hu, mask, label)
    label = int(label)
    v = stroke_voxels(voxels, np.shape(hu))
    here = np.asarray(mask)[tuple(v.T)]
    usable = v[(here == 0) | (here == label)] if include else v[here == label]
    if not len(usable):
        what = f"background or label {label}" if include else f"label {label}"
        raise RefineError(f"the {'include' if include else 'exclude'} stroke crosses no voxel of {what}")
    clicks = stroke_clicks(usable, include, spacing)
    at = tuple(usable.T)
    new = np.array(mask, copy=True)
    boxes = []
    done = list(history)
    for click in clicks:
        if click_edit is None:
            edit = refine_click(hu, new, label, click, spacing)
        else:
            edit = click_edit(hu, new, label, click, spacing, list(done))
        done.append(click)
        if not edit.is_empty:
            edit.apply(new)
            boxes.append(edit.box)
    # what the user painted, on the voxels where it may act
    new[at] = label if include else 0
    lo = usable.min(0)
    hi = usable.max(0) + 1
    for box in boxes:
        lo = np.minimum(lo, [s.start for s in box])
        hi = np.maximum(hi, [s.stop for s in box])
    union = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return RegionEdit(union, np.ascontiguousarray(new[union])), clicks
