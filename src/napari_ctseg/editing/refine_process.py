"""Click to correct in a warm child process, so that the viewer's event loop never waits for it.

``refine_click`` is numpy and scipy with Python between the calls: in a thread of napari's own
process it holds the GIL long enough to freeze the viewer for a third of a second per click
(``benchmarks/interactive_gui.py``). ``RefineProcess`` keeps one ``spawn`` process ready (it
imports ``editing.refine`` once, never torch, napari or Qt) and sends it, per click, only the
part of the scan that the click can see: ``click_crop`` is the box of ``refine.PROBE_MM``
around the click (the reach of ``choose_radius_mm``, which is larger than any refine box), so
the edit is the one ``refine_click`` makes on the whole scan, voxel for voxel
(``tests/test_refine.py`` checks it). A click costs the copy of that crop (a few MB) each way.
A crash or a kill of the child raises here; the viewer is unharmed, and the next click starts
a new child.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from napari_ctseg.editing.refine import PROBE_MM, Click, _spacing3, refine_click
from napari_ctseg.editing.tools import RegionEdit
from napari_ctseg.errors import RefineError


def click_crop(shape, click: Click, spacing) -> tuple[slice, ...]:
    """The box around ``click`` that holds everything ``refine_click`` reads for it."""
    sp = _spacing3(spacing)
    half = np.ceil(PROBE_MM / sp).astype(int) + 2
    return tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(click.zyx, half, shape))


def _cropped(hu, mask, label, click: Click, spacing) -> tuple[tuple[slice, ...], tuple]:
    """The crop and ``refine_click``'s arguments on it (copies: they travel to the child)."""
    crop = click_crop(np.shape(hu), click, spacing)
    local = Click(tuple(c - s.start for c, s in zip(click.zyx, crop)), click.include)
    return crop, (np.ascontiguousarray(hu[crop]), np.ascontiguousarray(mask[crop]), int(label), local,
                  tuple(float(s) for s in spacing))


def refine_click_cropped(hu: np.ndarray, mask: np.ndarray, label: int, click: Click, spacing) -> RegionEdit:
    """``refine_click`` on ``click_crop``'s part of the scan, the edit's box back on the whole grid
    (in this process: what ``RefineProcess`` does in its child)."""
    crop, args = _cropped(hu, mask, label, click, spacing)
    return _shifted(_child_refine(*args), crop)


def _child_refine(hu, mask, label, click, spacing) -> RegionEdit:
    return refine_click(hu, mask, label, click, spacing)


def _shifted(edit: RegionEdit, crop) -> RegionEdit:
    if edit.is_empty:
        return RegionEdit.nothing(len(crop), edit.values.dtype)
    box = tuple(slice(b.start + c.start, b.stop + c.start) for b, c in zip(edit.box, crop))
    return RegionEdit(box, edit.values)


def _ready() -> bool:
    return True


class RefineProcess:
    """One warm child process for click-to-correct; ``submit`` returns a ``Future`` of the
    ``RegionEdit`` on the whole grid. ``close`` (or garbage collection) ends the child."""

    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None
        self._start()

    def _start(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._pool.submit(_ready)  # the child starts and imports refine now, not at the first click

    def submit(self, hu: np.ndarray, mask: np.ndarray, label: int, click: Click, spacing) -> Future:
        crop, args = _cropped(hu, mask, label, click, spacing)
        if self._pool is None:
            self._start()
        try:
            inner = self._pool.submit(_child_refine, *args)
        except (BrokenProcessPool, RuntimeError):  # the last child died: a new one
            self._start()
            inner = self._pool.submit(_child_refine, *args)
        out: Future = Future()

        def done(f: Future) -> None:
            try:
                out.set_result(_shifted(f.result(), crop))
            except BrokenProcessPool:
                self._pool = None
                out.set_exception(RefineError("the click-to-correct process stopped (out of memory?); "
                                              "click again to start a new one"))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
                out.set_exception(exc)

        inner.add_done_callback(done)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
