"""Mask tools' click panel, its drawing modes: **Scribble** (include/exclude strokes painted
with napari's brush on a Labels layer beside the mask) and **Box** (rectangles drawn with
napari's rectangle tool on a Shapes layer beside the mask). ``ClickPanel`` (``_mask_clicks``)
takes this mixin; what a stroke or a box does is ``editing.refine_stroke`` / ``editing.refine_box``,
queued and applied with the clicks.
"""
from __future__ import annotations

import numpy as np
from napari.layers import Labels, Shapes
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QPushButton

from napari_ctseg._napari._compat import unwrap

COLOURS = {True: (0.2, 0.85, 0.3, 1.0), False: (0.95, 0.2, 0.8, 1.0)}  # include, exclude
SCRIBBLES_KEY = "ctseg_scribbles_for"
"""``layer.metadata`` key of a scribbles Labels layer: the name of the mask layer it belongs to."""
# scribble values: 1 include, 2 exclude being drawn; 3 and 4 the same once applied (dimmer)
SCRIBBLE_COLOURS = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: COLOURS[True], 2: COLOURS[False],
                    3: (0.2, 0.85, 0.3, 0.45), 4: (0.95, 0.2, 0.8, 0.45)}
CLICK_HINT = ("Left click adds to the label around the click, Shift+click removes (any 2D view, the tri-planar "
              "side views too; on the 3D view Shift+click removes the surface under the cursor); each click is "
              "one Ctrl+Z.")
SCRIBBLE_HINT = ("Paint with the brush (the tri-planar side views too): an include stroke adds along it in 3D, "
                 "exclude removes; one Ctrl+Z each.")
BOX_HINT = ("Drag a box around a structure on a 2D view (the tri-planar side views too): it is added to the label "
            "in 3D (with Exclude chosen, taken out of it); one Ctrl+Z each.")
BOXES_KEY = "ctseg_boxes_for"
"""``layer.metadata`` key of a boxes Shapes layer: the name of the mask layer it belongs to."""
BOX_COLOURS = {True: "#ffcc1a", False: "#f233cc"}  # include (yellow), exclude (magenta); applied: dimmer
APPLIED_ALPHA = 0.45


def _rgba(hex_colour: str) -> tuple[float, float, float, float]:
    h = hex_colour.lstrip("#")
    return (*(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)), 1.0)


class Stroke:
    """A scribble stroke: its voxels (n, 3) on the mask's grid, include or exclude."""

    def __init__(self, voxels: np.ndarray, include: bool):
        self.voxels, self.include = voxels, bool(include)

    @property
    def kind(self) -> str:
        return "include" if self.include else "exclude"


class Box:
    """A box prompt: two opposite corners (z, y, x) on the mask's grid (equal on the drawn
    slice's axis), include (add the structure inside) or exclude (take it out of the label), and
    its index on the boxes layer."""

    def __init__(self, lo, hi, index: int | None = None, include: bool = True):
        self.lo, self.hi, self.index = tuple(int(v) for v in lo), tuple(int(v) for v in hi), index
        self.include = bool(include)

    @property
    def kind(self) -> str:
        return "include" if self.include else "exclude"



class DrawingModes:
    """Scribble and Box for ``ClickPanel`` (its ``host``, ``hint``, ``pending``, ``_next``,
    buttons and layers)."""

    # --- drawing modes: scribbles and boxes ---------------------------------------------------
    def _switch(self, attr: str, button: QPushButton, what: str, on: bool) -> bool:
        """Turn a drawing mode (``attr``: "scribbling" or "boxing") on or off, its button
        following; turning one on turns clicks and the other mode off. False when nothing changed."""
        if on and not self.host.ready(what):
            button.setChecked(False)
            return False
        if not on and not getattr(self, attr):
            if button.isChecked():
                button.setChecked(False)
            return False
        setattr(self, attr, bool(on))
        if button.isChecked() != bool(on):
            button.setChecked(bool(on))
        if on:
            if self.active:
                self.set_active(False)
            for other, turn_off in (("scribbling", self.set_scribbling), ("boxing", self.set_boxing)):
                if other != attr and getattr(self, other):
                    turn_off(False)
            self._start_process()
        return True

    def _leave(self, layer) -> None:
        """A drawing mode off: its layer back to pan/zoom, the mask selected again."""
        self.hint.setText(CLICK_HINT)
        viewer = self.host.viewer
        if layer is not None and layer in viewer.layers:
            layer.mode = "pan_zoom"
            if viewer.layers.selection.active is layer and self.host.layer is not None:
                viewer.layers.selection.active = self.host.layer

    def set_scribbling(self, on: bool = True) -> None:
        """Scribble on: the brush paints include/exclude strokes on the scribbles layer."""
        if not self._switch("scribbling", self.scribble_button, "scribble", on):
            return
        if not self.scribbling:
            self._leave(self.scribbles)
            return
        self.refresh_methods()
        self._warm_chosen()
        layer = self._scribbles_layer()
        self.host.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self._scribble_label()
        self.hint.setText(SCRIBBLE_HINT)
        self.host.say("Scribble on: paint include strokes (choose Exclude for exclude strokes); each stroke "
                      "re-segments the label along it in 3D when you release the mouse")

    def set_boxing(self, on: bool = True) -> None:
        """Box on: napari's rectangle tool draws boxes on the boxes layer; each adds the structure
        inside it to the label."""
        if not self._switch("boxing", self.box_button, "box", on):
            return
        if not self.boxing:
            self._leave(self.boxes)
            return
        layer = self._boxes_layer()
        self.host.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self._scribble_label()
        self.hint.setText(BOX_HINT)
        self.host.say("Box on: drag a box around a structure on a 2D view; what is inside is added to the label "
                      "in 3D (taken out of it with Exclude chosen; random walker on the HU)")

    def _boxes_layer(self) -> Shapes:
        layer = unwrap(self.host.layer)
        viewer = self.host.viewer
        found = next((x for x in viewer.layers if isinstance(x, Shapes)
                      and x.metadata.get(BOXES_KEY) == layer.name), None)
        if found is None:
            found = Shapes(ndim=3, name=f"boxes ({layer.name})", scale=tuple(layer.scale[-3:]),
                           translate=tuple(layer.translate[-3:]), edge_color=BOX_COLOURS[True], face_color="transparent",
                           edge_width=1, metadata={BOXES_KEY: layer.name})
            found.current_edge_color = BOX_COLOURS[True]
            found.current_face_color = "transparent"
            viewer.add_layer(found)
        if self._box_callback not in [getattr(c, "__func__", c) for c in found.events.data.callbacks]:
            found.events.data.connect(self._box_callback)
        self.boxes = found
        return found

    def _on_box_data(self, event) -> None:
        """A shape finished on the boxes layer: its corners on the mask's grid become a box."""
        layer = self.boxes
        if not self.boxing or layer is None or str(getattr(event, "action", "")).split(".")[-1].lower() != "added":
            return
        if not len(layer.data) or layer.shape_type[-1] != "rectangle":
            return
        index = len(layer.data) - 1
        host = self.host
        if not host.ready("box"):
            return
        world = np.asarray([layer.data_to_world(v) for v in np.asarray(layer.data[index], float)])
        vox = np.asarray([host.layer.world_to_data(w) for w in world])[:, -3:]
        lo, hi = np.round(vox.min(0)).astype(int), np.round(vox.max(0)).astype(int)
        layer.selected_data = set()  # shown in its own colour, not as napari's selection
        include = self.include_radio.isChecked()
        colours = np.asarray(layer.edge_color, float).copy()
        colours[index] = _rgba(BOX_COLOURS[include])
        layer.edge_color = colours
        self.pending.append(Box(lo, hi, index, include))
        QTimer.singleShot(0, self._next)

    def _box_in_side_view(self, model, event):
        """Box on, a drag on a tri-planar side view (``ClickPanel._on_mouse`` forwards it): napari's
        rectangle tool acts on the main view only, so the box is drawn here, shown on the side
        view's mirror of the boxes layer while dragging, and added to the boxes layer on release
        as the tool adds one (``_on_box_data`` takes it from there)."""
        boxes = self.boxes
        if getattr(event, "button", 1) != 1 or boxes is None or boxes not in self.host.viewer.layers:
            return
        include = self.include_radio.isChecked()
        mirror = next((x for x in model.layers if isinstance(x, Shapes)
                       and x.metadata.get(BOXES_KEY) == boxes.metadata.get(BOXES_KEY)), None)
        if mirror is not None:
            mirror.current_edge_color = BOX_COLOURS[include]
        axes = [int(a) for a in list(event.dims_displayed)[-2:]]
        start = np.asarray(boxes.world_to_data(event.position), float)
        yield True  # this drag draws a box: the side view leaves its cursor alone meanwhile
        corners = None
        while event.type == "mouse_move":
            corners = _rectangle(start, np.asarray(boxes.world_to_data(event.position), float), axes)
            if mirror is not None:
                mirror.data = [*zip(boxes.data, boxes.shape_type), (corners, "rectangle")]
            yield
        corners = _rectangle(start, np.asarray(boxes.world_to_data(event.position), float), axes)
        if np.min(np.ptp(corners[:, axes], axis=0)) < 2:  # a click, not a box
            if mirror is not None:
                mirror.data = list(zip(boxes.data, boxes.shape_type))
            return
        boxes.current_edge_color = BOX_COLOURS[include]
        boxes.add_rectangles(corners)

    def _box_applied(self, box: Box) -> None:
        layer = self.boxes
        if layer is None or box.index is None or box.index >= len(layer.data):
            return
        colours = np.asarray(layer.edge_color, float).copy()
        colours[box.index] = (*_rgba(BOX_COLOURS[box.include])[:3], APPLIED_ALPHA)
        layer.edge_color = colours

    def _scribble_label(self, *_) -> None:
        """Include or Exclude chosen: the brush's scribble value, the colour of the next box."""
        if self.scribbling and self.scribbles is not None:
            self.scribbles.selected_label = 1 if self.include_radio.isChecked() else 2
        if self.boxing and self.boxes is not None:
            self.boxes.current_edge_color = BOX_COLOURS[self.include_radio.isChecked()]

    def _scribbles_layer(self) -> Labels:
        from napari.utils.colormaps import DirectLabelColormap

        layer = unwrap(self.host.layer)
        viewer = self.host.viewer
        found = next((x for x in viewer.layers if isinstance(x, Labels)
                      and x.metadata.get(SCRIBBLES_KEY) == layer.name), None)
        if found is None or tuple(found.data.shape) != tuple(layer.data.shape[-3:]):
            if found is not None:
                viewer.layers.remove(found)
            found = Labels(np.zeros(layer.data.shape[-3:], np.uint8), name=f"scribbles ({layer.name})",
                           scale=tuple(layer.scale[-3:]), translate=tuple(layer.translate[-3:]),
                           colormap=DirectLabelColormap(color_dict=SCRIBBLE_COLOURS), opacity=1.0,
                           metadata={SCRIBBLES_KEY: layer.name})
            found.brush_size = 5
            viewer.add_layer(found)
        if self._paint_callback not in [getattr(c, "__func__", c) for c in found.events.paint.callbacks]:
            found.events.paint.connect(self._paint_callback)
        self.scribbles = found
        return found

    def _scribble_in_side_view(self, model, event):
        """Scribble on, a drag on a tri-planar side view (``ClickPanel._on_mouse`` forwards it):
        napari's brush paints on the main view only, so the stroke is painted here, a disk of the
        brush's size on the side view's plane at each point of the drag (shown on that view while
        dragging), and written on the scribbles layer on release in one ``data_setitem``: its paint
        event makes the stroke, as a stroke of the brush does (``_on_paint``)."""
        layer = self.scribbles
        if getattr(event, "button", 1) != 1 or layer is None or layer not in self.host.viewer.layers:
            return
        value = 1 if self.include_radio.isChecked() else 2
        mirror = next((x for x in model.layers if isinstance(x, Labels)
                       and x.metadata.get(SCRIBBLES_KEY) == layer.metadata.get(SCRIBBLES_KEY)), None)
        axes = [int(a) for a in list(event.dims_displayed)[-2:]]
        data = layer.data
        radius = max(float(layer.brush_size) / 2, 0.5)
        painted: dict[tuple, int] = {}  # voxel -> its value before the stroke
        last = np.asarray(layer.world_to_data(event.position), float)[-3:]

        def dab(point) -> None:
            for voxel in _disk(point, axes, radius, data.shape):
                if voxel not in painted:
                    painted[voxel] = int(data[voxel])
                    data[voxel] = value  # shown on this view now (the mirror shares the array)

        dab(last)
        yield True  # this drag paints: the side view leaves its cursor alone meanwhile
        while event.type == "mouse_move":
            here = np.asarray(layer.world_to_data(event.position), float)[-3:]
            steps = max(1, int(np.ceil(np.abs(here - last).max() / max(radius / 2, 0.5))))
            for t in np.linspace(0, 1, steps + 1)[1:]:
                dab(last + t * (here - last))
            last = here
            if mirror is not None:
                mirror.refresh()
            yield
        if not painted:
            return
        idx = tuple(np.array(v) for v in zip(*painted))
        data[idx] = np.array(list(painted.values()), dtype=data.dtype)  # back as it was, then one edit
        layer.data_setitem(idx, value)

    def _on_paint(self, event) -> None:
        """A stroke finished on the scribbles layer: its voxels (1 include, 2 exclude) become a
        stroke to refine; on the layer they turn to 3 / 4 (applied, shown dimmer)."""
        layer = self.scribbles
        if not self.scribbling or layer is None or self._recolouring:
            return
        lo, hi = None, None
        for atom in event.value or ():
            key = getattr(atom, "slice_key", None)
            if key is not None:
                a = [s.start or 0 for s in key]
                b = [s.stop if s.stop is not None else n for s, n in zip(key, layer.data.shape)]
            else:
                idx = [np.atleast_1d(np.asarray(i)) for i in atom[0]]
                if not idx or idx[0].size == 0:
                    continue
                a = [int(i.min()) for i in idx]
                b = [int(i.max()) + 1 for i in idx]
            lo = a if lo is None else np.minimum(lo, a)
            hi = b if hi is None else np.maximum(hi, b)
        if lo is None:
            return
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        # read the layer after this pass: napari reports a data_setitem before it writes the data
        self._due.append((layer, box))
        QTimer.singleShot(0, self._take_strokes)

    def _take_strokes(self) -> None:
        while self._due:
            self._take_stroke(*self._due.popleft())

    def _take_stroke(self, layer: Labels, box) -> None:
        if layer is not self.scribbles or not self.scribbling:
            return
        region = np.asarray(layer.data[box])
        strokes = []
        for value, include in ((1, True), (2, False)):
            local = np.argwhere(region == value)
            if len(local):
                strokes.append((value, Stroke(local + np.array([s.start for s in box]), include)))
        if not strokes or not self.host.ready("scribble"):
            return  # left as drawn (not shown as applied)
        self._recolouring = True  # the recolouring is an edit of the layer too: its paint event is ours
        try:
            for value, stroke in strokes:
                layer.data_setitem(tuple(stroke.voxels.T), value + 2)
        finally:
            self._recolouring = False
        self.pending.extend(stroke for _, stroke in strokes)
        QTimer.singleShot(0, self._next)


def _rectangle(start: np.ndarray, end: np.ndarray, axes) -> np.ndarray:
    """The four corners of the rectangle from ``start`` to ``end`` (data coordinates) on the
    plane of ``axes``, at ``start``'s slice along the other axis."""
    a, b = axes
    corners = np.repeat(start[None], 4, axis=0)
    corners[1, b] = end[b]
    corners[2, [a, b]] = end[[a, b]]
    corners[3, a] = end[a]
    return corners


def _disk(point: np.ndarray, axes, radius: float, shape) -> list[tuple[int, int, int]]:
    """The voxels within ``radius`` (voxels) of ``point`` on the plane of ``axes`` through it."""
    a, b = axes
    centre = np.round(point).astype(int)
    r = int(np.ceil(radius))
    out = []
    for da in range(-r, r + 1):
        for db in range(-r, r + 1):
            if da * da + db * db > radius * radius:
                continue
            v = centre.copy()
            v[a] += da
            v[b] += db
            if all(0 <= v[k] < shape[k] for k in range(3)):
                out.append(tuple(int(x) for x in v))
    return out
