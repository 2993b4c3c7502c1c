"""CT tri-planar views: the crosshair layers, one per view, through the shared cursor point.

Each view ("main", "coronal", "sagittal") has a ``Vectors`` layer of line segments, on a
coarse isotropic grid over the main viewer's content, coloured by the plane each line
lies in (``planes.crosshair_lines``); the layers are updated in place on every event, never
re-added, and the line width follows the zoom so it stays ``CROSSHAIR_PX`` on screen.
"""
from __future__ import annotations

import numpy as np
from napari.components import ViewerModel
from napari.layers import Layer, Vectors

from napari_ctseg.io.planes import PLANE_COLORS, crosshair_lines, line_plane

CROSSHAIR_KEY = "ctseg_crosshair"
"""``layer.metadata`` flag of the crosshair layers the tri-planar views add (and remove)."""

CROSSHAIR_NAME = "crosshair"
CROSSHAIR_PX = 2.0
"""Crosshair line width on screen, in canvas pixels (kept constant while zooming)."""

SIDE_VIEWS = ("coronal", "sagittal")


def is_crosshair(layer) -> bool:
    return bool(getattr(layer, "metadata", None) or {}) and bool(layer.metadata.get(CROSSHAIR_KEY))


def camera(model: ViewerModel):
    scene = getattr(model, "scene", None)  # napari >= 0.9
    return scene.camera if scene is not None and hasattr(scene, "camera") else model.camera


class Crosshairs:
    """The crosshair layers of the tri-planar ``views`` (``TriPlanarViews``)."""

    def __init__(self, views):
        self.views = views
        self.layers: dict[str, Vectors] = {}  # "main", "coronal", "sagittal"
        self.bounds = None  # (low, high, step) of the last three axes, mm
        self.main_removed = False  # the user deleted the main viewer's crosshair

    def _model(self, key: str) -> ViewerModel:
        return self.views.viewer if key == "main" else self.views.models[key]

    def update_bounds(self, content: list[Layer]) -> None:
        """World extent (mm) of the main viewer's content on the last three axes."""
        viewer = self.views.viewer
        bounds = None
        if content and viewer.dims.ndim >= 3:
            extent = viewer.layers.get_extent(content)
            world = np.asarray(extent.world, dtype=float)
            if world.shape[1] >= 3 and np.all(np.isfinite(world[:, -3:])):
                step = np.asarray(extent.step, dtype=float)[-3:]
                bounds = (world[0, -3:], world[1, -3:], step)
        changed = (bounds is None) != (self.bounds is None) or (
            bounds is not None
            and not all(np.allclose(a, b) for a, b in zip(bounds, self.bounds, strict=True))
        )
        self.bounds = bounds
        if bounds is None:
            self.remove_all()
            return
        low, _high, step = bounds
        # A coarse isotropic grid for the crosshair: lines stay equally thick on
        # anisotropic scans, and the layer never refines the sliders' step (the minimum
        # scale over all layers).
        scale = np.full(3, float(step.max()))
        for key in ("main", *SIDE_VIEWS):
            if key == "main" and self.main_removed:
                continue
            layer = self.layers.get(key)
            if layer is None:
                layer = self._new(scale, low)
                self.layers[key] = layer
                self._add(key, layer)
            else:
                if not np.allclose(layer.scale, scale):
                    layer.scale = scale
                if not np.allclose(layer.translate, low):
                    layer.translate = low
        if changed:
            self.views._reset_side_views()

    @staticmethod
    def _new(scale, translate) -> Vectors:
        return Vectors(
            np.zeros((0, 2, 3)),
            ndim=3,
            name=CROSSHAIR_NAME,
            scale=scale,
            translate=translate,
            vector_style="line",
            edge_width=0.5,
            edge_color="yellow",
            opacity=0.9,
            blending="translucent_no_depth",
            metadata={CROSSHAIR_KEY: True},
        )

    def _add(self, key: str, layer: Vectors) -> None:
        views = self.views
        if key == "main":
            selection = views.viewer.layers.selection
            active, selected = selection.active, set(selection)
            updating, views._updating = views._updating, True
            try:
                views.viewer.layers.append(layer)
            finally:
                views._updating = updating
            # adding a layer selects it: give the user's selection back
            selection.clear()
            selection.update(selected)
            selection.active = active
        else:
            views.models[key].layers.append(layer)

    def remove_all(self) -> None:
        views = self.views
        for key, layer in list(self.layers.items()):
            model = self._model(key)
            if layer in model.layers:
                updating, views._updating = views._updating, True
                try:
                    model.layers.remove(layer)
                finally:
                    views._updating = updating
            del self.layers[key]

    def world_lines(self, key: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The crosshair lines of a view ("main", "coronal", "sagittal") in world mm (z, y, x)."""
        layer = self.layers.get(key)
        if layer is None or len(layer.data) == 0:
            return []
        out = []
        for start, proj in layer.data:
            a = np.asarray(layer.data_to_world(start), dtype=float)[-3:]
            b = np.asarray(layer.data_to_world(start + proj), dtype=float)[-3:]
            out.append((int(np.argmax(np.abs(b - a))), a, b))
        return out

    def update(self) -> bool:
        """Draw each view's lines through its cursor point; False when there is nothing to draw on."""
        if self.bounds is None:
            return False
        low, high, _step = self.bounds
        for key, layer in self.layers.items():
            model = self._model(key)
            ndim = model.dims.ndim
            if ndim < 3:
                continue
            point = np.asarray(model.dims.point[-3:], dtype=float)
            displayed = [a - (ndim - 3) for a in model.dims.displayed if a >= ndim - 3]
            lines = crosshair_lines(point, low, high, displayed)
            scale = np.asarray(layer.scale, dtype=float)[-3:]
            translate = np.asarray(layer.translate, dtype=float)[-3:]
            vectors = np.zeros((len(lines), 2, 3))
            colors = np.zeros((len(lines), 4))
            for i, (axis, start, end) in enumerate(lines):
                vectors[i, 0] = (start - translate) / scale
                vectors[i, 1] = (end - start) / scale
                colors[i] = (*PLANE_COLORS[line_plane(axis, displayed)], 1.0)
            if layer.data.shape != vectors.shape or not np.allclose(layer.data, vectors):
                layer.data = vectors
            if layer.edge_color.shape != colors.shape or not np.allclose(layer.edge_color, colors):
                layer.edge_color = colors
        self.update_widths()
        return True

    def update_widths(self) -> None:
        for key, layer in self.layers.items():
            zoom = float(camera(self._model(key)).zoom) or 1.0
            width = CROSSHAIR_PX / (zoom * float(np.asarray(layer.scale)[-1]))
            if not np.isclose(layer.edge_width, width):
                layer.edge_width = width
