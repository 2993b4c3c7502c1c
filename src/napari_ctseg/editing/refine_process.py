"""Click to correct in a warm child process, so that the viewer's event loop never waits for it.

``refine_click`` is numpy and scipy with Python between the calls: in a thread of napari's own
process it holds the GIL long enough to freeze the viewer for a third of a second per click
(``benchmarks/interactive_gui.py``). ``RefineProcess`` keeps one ``spawn`` process ready (it
imports ``editing.refine`` once, never torch, napari or Qt) and sends it, per click, only the
part of the scan that the click can see: ``click_crop`` is the box of ``refine.PROBE_MM``
around the click (the reach of ``choose_radius_mm``, which is larger than any refine box), so
the edit is the one ``refine_click`` makes on the whole scan, voxel for voxel
(``tests/test_refine.py`` checks it). A click costs the copy of that crop (a few MB) into shared memory, a slice at a time (pickled, an 18 MB crop held the
GIL for ~30 ms at once, a stall of the viewer), and the edit's box back.
A crash or a kill of the child raises here; the viewer is unharmed, and the next click starts
a new child.

With a guidance-aware version (``submit_model``) the child loads the version's network once
(torch included) and keeps it; a click sends the axial slab within the version's reach of the
click (plus the network's context slices), whole slices, since the network sees the body's
square (``find_crop``, computed once per scan by the caller).
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from napari_ctseg.editing.refine import PROBE_MM, Click, _spacing3, refine_click
from napari_ctseg.editing.tools import RegionEdit
from napari_ctseg.errors import RefineError
from napari_ctseg.jobs import SharedArray, SharedMemoryFull, exit_with_parent, without_main_module


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
    with _mapped(hu, mask) as (hu, mask):
        return refine_click(hu, mask, label, click, spacing)


def _child_refine_box(hu, mask, label, box, spacing, include=True) -> RegionEdit:
    from napari_ctseg.editing.refine_box import refine_box

    with _mapped(hu, mask) as (hu, mask):
        return refine_box(hu, mask, label, box, spacing, include)


class _mapped:
    """``SharedArray`` arguments as arrays for the call, unmapped after it (plain arrays pass)."""

    def __init__(self, *arrays):
        self.arrays = arrays

    def __enter__(self):
        return tuple(a.array if isinstance(a, SharedArray) else a for a in self.arrays)

    def __exit__(self, *exc):
        for a in self.arrays:
            if isinstance(a, SharedArray):
                a.close()


def _shared(*arrays) -> tuple:
    """Copies in shared memory, a slice at a time: sending them costs the child a name, and the
    viewer's thread gets the GIL between slices (pickling an 18 MB crop held it ~30 ms). Where
    /dev/shm is too small, plain copies (pickled to the child, as before)."""
    out = []
    try:
        for a in arrays:
            out.append(SharedArray.copy_of(a))
    except SharedMemoryFull:
        for a in out:
            a.free()
        return tuple(np.ascontiguousarray(a) for a in arrays)
    return tuple(out)


def _shifted(edit: RegionEdit, crop) -> RegionEdit:
    if edit.is_empty:
        return RegionEdit.nothing(len(crop), edit.values.dtype)
    box = tuple(slice(b.start + c.start, b.stop + c.start) for b, c in zip(edit.box, crop))
    return RegionEdit(box, edit.values)


def _ready() -> bool:
    return True


_REFINERS: dict = {}


def guided_refiner(folder: str):
    """The warm ``GuidedRefiner`` of a version folder, loaded once per process (the child's, or
    the viewer's where there is no child)."""
    if folder not in _REFINERS:
        from napari_ctseg.editing.refine_model import GuidedRefiner
        from napari_ctseg.models.registry import ModelCard, load_card_model

        card = ModelCard.load(folder)
        _REFINERS[folder] = GuidedRefiner(load_card_model(card, "cpu")[0], card)
    return _REFINERS[folder]


def _warm_model(folder: str) -> bool:
    guided_refiner(folder)
    return True


def _loaded_models() -> list[str]:
    return sorted(_REFINERS)


def model_slab(shape, click: Click, spacing, reach_mm: float, context: int) -> tuple[slice, ...]:
    """The axial slab a guidance-aware click reads: ``reach_mm`` either side of the click in z,
    plus ``context`` slices for the network's neighbours, whole slices."""
    sp = _spacing3(spacing)
    dz = int(np.floor(reach_mm / sp[0])) + int(context)
    return (slice(max(click.zyx[0] - dz, 0), min(click.zyx[0] + dz + 1, shape[0])), slice(0, shape[1]),
            slice(0, shape[2]))


def _child_refine_model(folder, hu, mask, label, click, spacing, crop, history) -> RegionEdit:
    with _mapped(hu, mask) as (hu, mask):
        return guided_refiner(folder).click(hu, mask, label, click, spacing, history=history, crop=crop)


def _local(click: Click, slab) -> Click:
    return Click((click.zyx[0] - slab[0].start, click.zyx[1], click.zyx[2]), click.include)


def _on_slab(hu, mask, click: Click, spacing, reach_mm: float, context: int, history):
    """The slab and the arguments of a guidance-aware click on it (copies: they may travel)."""
    slab = model_slab(np.shape(hu), click, spacing, reach_mm, context)
    return slab, (np.ascontiguousarray(hu[slab]), np.ascontiguousarray(mask[slab]), _local(click, slab),
                  [_local(c, slab) for c in history])


def refine_model_cropped(refiner, hu, mask, label, click: Click, spacing, crop, history=()) -> RegionEdit:
    """A guidance-aware click on ``model_slab``'s slab, the edit back on the whole grid (in this
    process: what ``RefineProcess.submit_model`` does in its child)."""
    slab, (hu_s, mask_s, local, past) = _on_slab(hu, mask, click, spacing, refiner.spec.reach_mm,
                                                 refiner.prep.context, history)
    return _shifted(refiner.click(hu_s, mask_s, label, local, spacing, history=past, crop=crop), slab)


class RefineProcess:
    """One warm child process for click-to-correct; ``submit`` returns a ``Future`` of the
    ``RegionEdit`` on the whole grid. ``close`` (or garbage collection) ends the child."""

    def __init__(self):
        self._pool: ProcessPoolExecutor | None = None
        self._start()

    def _start(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=exit_with_parent)
        with without_main_module():  # the child needs neither napari nor Qt
            self._pool.submit(_ready)  # the child starts and imports refine now, not at the first click

    def submit(self, hu: np.ndarray, mask: np.ndarray, label: int, click: Click, spacing) -> Future:
        crop = click_crop(np.shape(hu), click, spacing)
        local = Click(tuple(c - s.start for c, s in zip(click.zyx, crop)), click.include)
        shared = _shared(hu[crop], mask[crop])
        args = (*shared, int(label), local, tuple(float(s) for s in spacing))
        return self._run(_child_refine, args, crop, shared)

    def submit_box(self, hu: np.ndarray, mask: np.ndarray, label: int, box, spacing, include: bool = True) -> Future:
        """A box prompt (``editing.refine_box``; an exclude box with ``include`` False), on the
        part of the scan it reads."""
        from napari_ctseg.editing.refine_box import work_region

        crop, lo, hi, _, _ = work_region(box, np.shape(hu), spacing)
        start = np.array([c.start for c in crop])
        shared = _shared(hu[crop], mask[crop])
        args = (*shared, int(label), (tuple(lo - start), tuple(hi - start)), tuple(float(s) for s in spacing),
                bool(include))
        return self._run(_child_refine_box, args, crop, shared)

    def warm_model(self, folder) -> Future:
        """Load a guidance-aware version (its folder) in the child now, not at the first click."""
        return self._run(_warm_model, (str(folder),), None)

    def loaded_models(self) -> Future:
        """The version folders whose networks the child holds loaded (sorted)."""
        return self._run(_loaded_models, (), None)

    def submit_model(self, card, hu: np.ndarray, mask: np.ndarray, label: int, click: Click, spacing,
                     crop, history=()) -> Future:
        """A click refined by the guidance-aware version ``card`` (loaded once in the child)."""
        from napari_ctseg.models.guidance import GuidanceSpec

        reach = GuidanceSpec.from_dict(card.guidance).reach_mm
        context = int(card.preprocessing.get("context", 0))
        slab = model_slab(np.shape(hu), click, spacing, reach, context)
        shared = _shared(hu[slab], mask[slab])
        args = (str(card.path), *shared, int(label), _local(click, slab), tuple(float(s) for s in spacing), crop,
                [_local(c, slab) for c in history])
        return self._run(_child_refine_model, args, slab, shared)

    def _run(self, fn, args, crop, shared=()) -> Future:
        if self._pool is None:
            self._start()
        try:
            try:
                inner = self._pool.submit(fn, *args)
            except (BrokenProcessPool, RuntimeError):  # the last child died: a new one
                self._start()
                inner = self._pool.submit(fn, *args)
        except BaseException:
            for a in shared:
                if isinstance(a, SharedArray):
                    a.free()
            raise
        out: Future = Future()

        def done(f: Future) -> None:
            for a in shared:
                if isinstance(a, SharedArray):
                    a.free()
            try:
                out.set_result(f.result() if crop is None else _shifted(f.result(), crop))
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
