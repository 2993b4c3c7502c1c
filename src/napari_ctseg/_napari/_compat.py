"""The few napari internals this plugin relies on, in one place, for the napari versions tested.

napari's public API does not yet cover everything the plugin does (reaching the layer behind
a plugin's ``PublicOnlyProxy``, filtering brush strokes by HU before they land, grabbing the
main window for a screenshot). Each such use goes through a function here, so a napari
release that changes one of them breaks one module, and ``tests/_napari/test_compat.py``
says which. ``pyproject.toml`` bounds napari to ``NAPARI_TESTED``.
"""
from __future__ import annotations

from typing import Any

NAPARI_TESTED = ">=0.5,<0.10"  # the test suite ran on napari 0.9.2; the lower bound is the API floor
PAINT_HOOK = "_apply_mask_to_data"  # Labels: where brush, fill and polygon strokes land


def unwrap(obj: Any) -> Any:
    """The napari object behind a plugin's ``PublicOnlyProxy`` (identity checks and hooks need it)."""
    return getattr(obj, "__wrapped__", obj)


def qt_window(viewer):
    """The viewer's main ``QMainWindow``."""
    return viewer.window._qt_window


def is_image_layer(layer) -> bool:
    """Whether a layer is an Image layer (also through a proxy)."""
    from napari.layers import Image

    return isinstance(unwrap(layer), Image)


def paint_hook_available(layer) -> bool:
    """Whether this napari's Labels layers route strokes through ``PAINT_HOOK``."""
    return hasattr(type(unwrap(layer)), PAINT_HOOK)


def filtered_paint(target, allowed):
    """A wrapper of ``PAINT_HOOK`` for one Labels instance ``target`` that first drops the
    voxels ``allowed(region)`` rejects (``allowed`` returns a boolean array for the stroke's
    region, or None for all); set it on the instance, not the class."""
    import numpy as np

    cls = type(target)

    def paint(data, mask, new_label, volume_slice):
        ok = allowed(tuple(volume_slice))
        if ok is not None and ok.shape == np.shape(mask):
            mask = np.logical_and(mask, ok)
        return getattr(cls, PAINT_HOOK)(target, data, mask, new_label, volume_slice)

    return paint


def layer_renamed(layers):
    """The emitter of a LayerList that fires when any of its layers is renamed (napari >= 0.5)."""
    return layers.events.renamed
