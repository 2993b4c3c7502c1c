"""Mask tools: the HU range limit on napari's own paint path, and undo that recounts.

Limit to HU range (3D Slicer's "editable intensity range"): while it is on, only voxels
whose HU in the chosen CT image lies in [low, high] may change, for the Mask tools and for
napari's own paint brush, eraser, fill bucket and polygon. napari applies every brush,
fill and polygon edit through one private Labels method (``_compat.PAINT_HOOK``, napari >= 0.6;
before, through ``data_setitem``); ``PaintGuard`` puts a small wrapper of that method
(``_compat.filtered_paint``) on the layer instance, which removes the out-of-range
voxels from the mask before napari paints and records the undo step. So out-of-range
voxels are never painted, not even for a moment, and undo stays one step per stroke. The
wrappers are instance attributes, removed when the guard moves to another layer, when
``detach`` is called, or when the widget owning the guard is deleted.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from napari.layers import Image, Labels

from napari_ctseg._napari._compat import PAINT_HOOK, filtered_paint, paint_hook_available, unwrap


def remove_hooks(hooks: dict) -> None:
    """Take the wrappers named in ``hooks`` off their layer (see ``PaintGuard``)."""
    target = hooks.get("target")
    if target is not None:
        for name in hooks.get("names", []):
            target.__dict__.pop(name, None)
    hooks.update(target=None, names=[])


class PaintGuard:
    """The HU limit (``hu_range`` on ``hu_image``) on one Labels layer's paint path, and a
    call of ``on_undo_redo`` after napari's undo and redo on it.

    ``applying`` is set while the Mask tools write an edit they already limited.
    """

    def __init__(self, owner, on_undo_redo: Callable[[], None]):
        self.hu_range: tuple[float, float] | None = None
        self.hu_image: Image | None = None
        self.applying = False
        self._on_undo_redo = on_undo_redo
        self.hooks: dict = {"target": None, "names": []}
        hooks = self.hooks
        owner.destroyed.connect(lambda *_: remove_hooks(hooks))  # even if never closed

    @property
    def active(self) -> bool:
        return self.hu_range is not None and self.hu_image is not None

    def allowed(self, where) -> np.ndarray | None:
        """Which voxels at ``where`` (slices or index arrays) may change; None: all."""
        if not self.active:
            return None
        lo, hi = self.hu_range
        values = np.asarray(self.hu_image.data[where])
        return (values >= lo) & (values <= hi)

    def attach(self, layer: Labels) -> None:
        """Wrap napari's paint path and undo/redo on this layer instance."""
        self.detach()
        target = unwrap(layer)
        me = weakref.ref(self)
        cls = type(target)

        def allowed(where):
            guard = me()
            return None if guard is None else guard.allowed(where)

        hooks = {}
        if paint_hook_available(target):
            hooks[PAINT_HOOK] = filtered_paint(target, allowed)

        def data_setitem(indices, value, refresh=True):
            guard = me()
            if guard is not None and not guard.applying and isinstance(indices, tuple) \
                    and all(isinstance(i, np.ndarray) for i in indices):
                ok = guard.allowed(indices)
                if ok is not None:
                    indices = tuple(i[ok] for i in indices)
                    if np.ndim(value) > 0:
                        value = np.asarray(value)[ok]
            return cls.data_setitem(target, indices, value, refresh)

        hooks["data_setitem"] = data_setitem

        def undo():
            cls.undo(target)
            guard = me()
            if guard is not None:
                guard._on_undo_redo()

        def redo():
            cls.redo(target)
            guard = me()
            if guard is not None:
                guard._on_undo_redo()

        hooks["undo"], hooks["redo"] = undo, redo
        for name, fn in hooks.items():
            setattr(target, name, fn)
        self.hooks.update(target=target, names=list(hooks))

    def detach(self) -> None:
        remove_hooks(self.hooks)
