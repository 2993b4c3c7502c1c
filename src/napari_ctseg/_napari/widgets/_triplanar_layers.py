"""CT tri-planar views: the main viewer's layers mirrored into the side views.

Image, Labels, Points (click markers) and Shapes (boxes) layers are mirrored.

A mirror is a layer of the same kind made from the original's data tuple, so it shares the
array (no copy; a Points or Shapes layer's few coordinates are copied); its display properties
and data follow the original's events.
"""
from __future__ import annotations

from napari.components import ViewerModel
from napari.layers import Image, Layer, Points, Shapes


class LayerMirrors:
    """Mirrors of chosen main-viewer layers in the side viewers ``models`` (view -> model)."""

    def __init__(self, models: dict[str, ViewerModel]):
        self.models = models
        self._mirrors: dict[int, tuple[Layer, dict[str, Layer], list]] = {}

    def sync(self, wanted: list[Layer], limit: int | None = None) -> bool:
        """Mirror exactly ``wanted``: drop the mirrors of other layers at once, add the missing
        ones, at most ``limit`` of them (a layer in one view each; None: all). napari builds a
        layer's visuals in the GUI thread, 0.1-0.3 s each under software rendering: one at a
        time, the caller spreads them over passes of the event loop. True when all are there."""
        wanted_ids = {id(layer) for layer in wanted}
        for key in [k for k in self._mirrors if k not in wanted_ids]:
            _layer, mirrors, conns = self._mirrors.pop(key)
            _disconnect(conns)
            for view, mirror in mirrors.items():
                if mirror in self.models[view].layers:
                    self.models[view].layers.remove(mirror)
        added = 0
        for layer in wanted:
            if id(layer) not in self._mirrors:
                self._follow(layer)
            mirrors = self._mirrors[id(layer)][1]
            for view, model in self.models.items():
                if view in mirrors:
                    continue
                if limit is not None and added >= limit:
                    return False
                data, state, kind = layer.as_layer_data_tuple()
                mirror = Layer.create(data, state, kind)  # shares the array: no copy
                model.layers.append(mirror)
                mirrors[view] = mirror
                added += 1
        return True

    def has(self, layer: Layer, view: str) -> bool:
        """Whether ``layer`` has its mirror in ``view`` yet."""
        entry = self._mirrors.get(id(layer))
        return entry is not None and view in entry[1]

    def of(self, layer: Layer, view: str) -> Layer:
        """The mirror of ``layer`` in ``view``."""
        return self._mirrors[id(layer)][1][view]

    def clear(self) -> None:
        """Stop following the originals (the mirrors stay in their viewers)."""
        for _layer, _mirrors, conns in self._mirrors.values():
            _disconnect(conns)
        self._mirrors.clear()

    def _follow(self, layer: Layer) -> None:
        """The mirrors of ``layer`` (none yet) follow its display properties and data."""
        mirrors: dict[str, Layer] = {}
        conns: list = []
        props = ["visible", "opacity", "blending", "colormap", "name"]
        if isinstance(layer, Image):
            props += ["contrast_limits", "gamma", "interpolation2d"]
        elif isinstance(layer, Points):
            props += ["size"]
        elif isinstance(layer, Shapes):
            props += ["edge_color", "face_color", "edge_width"]
        else:
            props += ["contour", "show_selected_label", "selected_label"]
        for name in props:
            emitter = getattr(layer.events, name, None)
            if emitter is None:
                continue
            callback = _prop_sync(layer, mirrors, name)
            emitter.connect(callback)
            conns.append((emitter, callback))
        data_sync = _coords_sync(layer, mirrors) if isinstance(layer, (Points, Shapes)) else _data_sync(layer, mirrors)
        for name in ("data", "paint"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(data_sync)
                conns.append((emitter, data_sync))
        self._mirrors[id(layer)] = (layer, mirrors, conns)


def _disconnect(conns) -> None:
    for emitter, callback in conns:
        emitter.disconnect(callback)


def _prop_sync(layer: Layer, mirrors: dict[str, Layer], name: str):
    def sync(event=None):
        value = getattr(layer, name)
        for mirror in mirrors.values():
            if isinstance(layer, Shapes) and len(mirror.data) != len(layer.data):
                continue  # a colour per shape: the data's own sync brings them over
            if name == "contrast_limits":
                mirror.contrast_limits_range = layer.contrast_limits_range
            setattr(mirror, name, value)

    return sync


def _data_sync(layer: Layer, mirrors: dict[str, Layer]):
    def sync(event=None):
        for mirror in mirrors.values():
            if mirror.data is not layer.data:
                mirror.data = layer.data
            else:
                mirror.refresh()

    return sync


def _coords_sync(layer: Layer, mirrors: dict[str, Layer]):
    """A Points or Shapes layer's data (a few coordinates, copied) and its colour per item
    (a marker's face, include or exclude; a box's edge, include, exclude or applied)."""
    shapes = isinstance(layer, Shapes)
    colour = "edge_color" if shapes else "face_color"

    def sync(event=None):
        if str(getattr(event, "action", "added")) in ("adding", "removing", "changing"):
            return  # the announcement before the change: the data is not there yet
        for mirror in mirrors.values():
            mirror.data = list(zip(layer.data, layer.shape_type)) if shapes else layer.data
            if len(layer.data):
                setattr(mirror, colour, getattr(layer, colour))

    return sync
