"""Anatomical planes on the display grid, and the crosshair through a cursor point.

Pure geometry, no napari or Qt: the CT view widget turns these into ``dims.order`` and
layer data.  The display array's axes are (z, y, x) pointing to Inferior, Posterior and
patient Left (see ``volume.DISPLAY_AXCODES``).  A viewer shows the last two axes of its
``dims.order`` as (rows downwards, columns to the right), so:

* axial    = (z, y, x): anterior up, the patient's right on the screen's left,
* coronal  = (y, z, x): superior up, the patient's right on the screen's left,
* sagittal = (x, z, y): superior up, anterior on the screen's left.

Points are in world coordinates (mm) on the last three axes (z, y, x).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PLANES = ("axial", "coronal", "sagittal")

_ORDER3 = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}

PLANE_OF_AXIS = {0: "axial", 1: "coronal", 2: "sagittal"}
"""The plane each display axis (z, y, x) is the normal of: a constant z is an axial plane."""

PLANE_COLORS = {
    "axial": (1.0, 0.25, 0.2),  # red, yellow, green as 3D Slicer's slice views
    "coronal": (0.25, 0.9, 0.3),  # green
    "sagittal": (1.0, 0.85, 0.1),  # yellow
}


def check_plane(plane: str) -> str:
    name = str(plane).lower()
    if name not in _ORDER3:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(PLANES)}")
    return name


def dims_order(plane: str, ndim: int, current: Sequence[int] | None = None) -> tuple[int, ...]:
    """napari ``dims.order`` showing ``plane`` of the last three axes of an ``ndim`` viewer.

    Leading axes (time, channel, ...) keep their current relative order.
    """
    if ndim < 3:
        raise ValueError(f"a {ndim}D viewer has no anatomical planes; a CT needs 3 axes")
    first = ndim - 3
    if current is not None and len(current) == ndim:
        lead = [int(a) for a in current if int(a) < first]
    else:
        lead = list(range(first))
    return tuple(lead) + tuple(first + a for a in _ORDER3[check_plane(plane)])


def plane_of_order(order: Sequence[int]) -> str | None:
    """The plane a ``dims.order`` shows, or None when it shows no standard plane."""
    if len(order) < 3:
        return None
    first = len(order) - 3
    last3 = tuple(int(a) - first for a in order[-3:])
    for name, o in _ORDER3.items():
        if last3 == o:
            return name
    return None


def slice_axis(plane: str) -> int:
    """Which of (z, y, x) a plane's slider moves along (0, 1 or 2)."""
    return _ORDER3[check_plane(plane)][0]


def snap_to_grid(point, start, step, stop=None) -> np.ndarray:
    """Move a point (mm) to the nearest voxel centre of a grid (start, step), within [start, stop]."""
    point = np.asarray(point, dtype=float)
    start = np.asarray(start, dtype=float)
    step = np.where(np.asarray(step, dtype=float) > 0, step, 1.0)
    snapped = start + np.round((point - start) / step) * step
    snapped = np.maximum(snapped, start)
    if stop is not None:
        snapped = np.minimum(snapped, np.asarray(stop, dtype=float))
    return snapped


def crosshair_lines(point, low, high, displayed: Sequence[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The crosshair through ``point`` in a view showing axes ``displayed`` (of z, y, x).

    One line along each displayed axis, crossing the whole volume [low, high] (mm) and
    passing through ``point`` on every other axis, so it lies in the view's current slice.
    Returns ``(axis, start, end)`` per line, ``axis`` being the one it runs along.
    """
    point = np.asarray(point, dtype=float)
    low = np.asarray(low, dtype=float)
    high = np.asarray(high, dtype=float)
    lines = []
    for axis in displayed:
        start = point.copy()
        end = point.copy()
        start[axis] = low[axis]
        end[axis] = high[axis]
        lines.append((int(axis), start, end))
    return lines


def line_plane(line_axis: int, displayed: Sequence[int]) -> str:
    """The plane a crosshair line marks: the one normal to the other displayed axis.

    In an axial view (y, x displayed) the horizontal line runs along x at a fixed y:
    it is where the coronal plane cuts this slice.
    """
    others = [a for a in displayed if a != line_axis]
    if len(others) != 1:
        # 3D display: a line along one axis is where two planes meet; name the first
        others = [a for a in (0, 1, 2) if a != line_axis][:1]
    return PLANE_OF_AXIS[int(others[0])]
