"""Mask tools: click to correct. Include and exclude clicks re-segment the label in 3D around
each click (``napari_ctseg.editing.refine``), in a warm child process (``editing.refine_process``; a thread
where there is none), one undo step per click.

With **Clicks on**, a left click (without dragging) on a 2D view of the mask's layer (the main
view, or the coronal and sagittal views of CT view's tri-planar layout) is an include click,
Shift+left click an exclude click (on the 3D view, an exclude click on the label's surface under
the cursor: ``label_along_ray``) (or the other way round when "Exclude" is
chosen); dragging still pans, and napari's own paint and fill modes are left alone (clicks
count only while the layer is in pan/zoom mode, which turning clicks on selects). The clicks
are shown in a Points layer beside the mask (green include, magenta exclude). Each edit is
written as the other Mask tools write theirs (``EditPanel.apply_edit``: only the changed
voxels, through the HU range limit, one step of napari's undo history), so it counts as a
correction for Save corrected mask and Fine-tune. Clicks made while one is being computed
wait their turn, in order.

With **Scribble** on, the brush paints include (or, with "Exclude" chosen, exclude) strokes
on a Labels layer beside the mask ("scribbles (<mask>)"); each stroke, when the mouse is
released, re-segments the label along it in 3D (``editing.refine_stroke``: clicks spread
along the stroke, then what was painted), one undo step per stroke; applied strokes stay
shown, dimmer. With **Box** on, napari's rectangle tool draws a box around a structure on a
Shapes layer beside the mask ("boxes (<mask>)"); each box adds the structure inside it to the
label, in 3D (``editing.refine_box``: the random walker on the HU, in the warm child), one
undo step per box: for a structure the mask does not hold yet (a tumour, a node); with
"Exclude" chosen, a box (magenta) takes the structure inside it out of the label (a leak). Clicks,
scribbles and boxes take turns: turning one on turns the others off.

**Method**: the classical random walker, or a **guidance-aware version** of the layer's
target (its card says it takes clicks), whose network follows the clicks
(``editing.refine_model``), given the mask and every click so far on the label. The list
offers the target's guidance-aware versions; the default is the layer's own version when it
takes clicks, else the target's active version when it does, else the random walker.
"""
from __future__ import annotations

import time
import weakref
from collections import deque

import numpy as np
from napari.layers import Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QRadioButton, QVBoxLayout

from napari_ctseg.editing.refine import Click, refine_click
from napari_ctseg.editing.refine_box import refine_box
from napari_ctseg.editing.refine_stroke import refine_stroke
from napari_ctseg.editing.refine_process import RefineProcess
from napari_ctseg.editing.tools import RegionEdit
from napari_ctseg.errors import CTSegError
from napari_ctseg._napari._compat import unwrap
from napari_ctseg._napari.widgets._triplanar import in_side_views_too
from napari_ctseg._napari.widgets._mask_prompts import CLICK_HINT, COLOURS, Box, DrawingModes, Stroke

CLASSICAL = "Random walker (classical)"
CLICKS_KEY = "ctseg_clicks_for"
"""``layer.metadata`` key of a clicks Points layer: the name of the mask layer it belongs to."""


class ClickPanel(DrawingModes, QGroupBox):
    """Click to correct, on the Mask tools' layer, label and CT image (``host``)."""

    def __init__(self, host):
        super().__init__("Click to correct (3D)")
        self.host = host
        self.active = False
        self.points: Points | None = None
        self.pending: deque[Click] = deque()
        self.worker = None
        self.process: RefineProcess | None = None
        self.seconds: list[float] = []
        self.history: dict[tuple[str, int], list[Click]] = {}  # (layer name, label): clicks so far
        self._crops: dict = {}  # id of a CT array -> its network square (guidance-aware clicks)
        self._warm: set[str] = set()
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.toggle_button = QPushButton("Clicks on")
        self.toggle_button.setCheckable(True)
        self.toggle_button.setToolTip("Left click: include, Shift+left click: exclude, on any 2D view; "
                                      "drag to pan as usual")
        self.include_radio, self.exclude_radio = QRadioButton("Include"), QRadioButton("Exclude")
        self.include_radio.setChecked(True)
        self.include_radio.setToolTip("What a plain left click does; Shift+click does the other")
        self.exclude_radio.setToolTip(self.include_radio.toolTip())
        self.clear_button = QPushButton("Clear clicks")
        self.clear_button.setToolTip("Remove the click markers (the mask keeps its corrections; Ctrl+Z undoes them)")
        self.scribble_button = QPushButton("Scribble")
        self.scribble_button.setCheckable(True)
        self.scribble_button.setToolTip("Paint include (exclude) strokes with the brush; each stroke re-segments "
                                        "the label along it in 3D, one Ctrl+Z per stroke")
        self.box_button = QPushButton("Box")
        self.box_button.setCheckable(True)
        self.box_button.setToolTip("Drag a box around a structure on a 2D view: the structure inside is added to the "
                                   "label in 3D (with Exclude chosen, taken out of it; random walker on the HU), "
                                   "one Ctrl+Z per box")
        for w in (self.toggle_button, self.scribble_button, self.box_button, self.include_radio, self.exclude_radio,
                  self.clear_button):
            row.addWidget(w)
        layout.addLayout(row)
        self.scribbles: Labels | None = None
        self.scribbling = False
        self.boxes: Shapes | None = None
        self.boxing = False
        self._recolouring = False
        self._due: deque = deque()  # (scribbles layer, box) of strokes painted, to read in the next pass
        method_row = QHBoxLayout()
        method_row.addWidget(QLabel("Method:"))
        self.method_combo = QComboBox()
        self.method_combo.setToolTip("Random walker: classical, for any label. A version's network: a guidance-aware "
                                     "model of the layer's target, given the mask and the clicks")
        self.method_combo.addItem(CLASSICAL, None)
        method_row.addWidget(self.method_combo, 1)
        layout.addLayout(method_row)
        self._methods_for = None
        self.hint = QLabel(CLICK_HINT)
        self.hint.setWordWrap(True)
        layout.addWidget(self.hint)
        self.toggle_button.toggled.connect(self.set_active)
        self.scribble_button.toggled.connect(self.set_scribbling)
        self.box_button.toggled.connect(self.set_boxing)
        self.include_radio.toggled.connect(self._scribble_label)
        self.method_combo.currentIndexChanged.connect(self._warm_chosen)
        self.clear_button.clicked.connect(self.clear_points)
        # the viewer holds a function that holds the panel weakly: a deleted widget is released
        me = weakref.ref(self)

        def on_mouse(viewer, event):
            panel = me()
            if panel is not None:
                yield from panel._on_mouse(viewer, event)

        self._callback = in_side_views_too(on_mouse)  # the tri-planar coronal and sagittal views too

        def on_paint(event):
            panel = me()
            if panel is not None:
                panel._on_paint(event)

        self._paint_callback = on_paint

        def on_box(event):
            panel = me()
            if panel is not None:
                panel._on_box_data(event)

        self._box_callback = on_box
        host.viewer.mouse_drag_callbacks.append(on_mouse)

    @property
    def buttons(self) -> tuple[QPushButton, ...]:
        return (self.toggle_button, self.scribble_button, self.box_button, self.clear_button)

    @property
    def busy(self) -> bool:
        return self.worker is not None or bool(self.pending) or bool(self._due)

    # --- on and off ------------------------------------------------------------------------
    def set_active(self, on: bool = True) -> None:
        if on and not self.host.ready("click to correct"):
            self.toggle_button.setChecked(False)
            return
        self.active = bool(on)
        if self.toggle_button.isChecked() != self.active:
            self.toggle_button.setChecked(self.active)
        if self.active and self.scribbling:
            self.set_scribbling(False)
        if self.active and self.boxing:
            self.set_boxing(False)
        if self.active:
            self._start_process()
            self.host.layer.mode = "pan_zoom"
            self._points_layer()
            self.refresh_methods()
            card = self.guided_card()
            self._warm_chosen()
            how = f"{card.target} {card.version}'s network follows them" if card is not None else \
                "random walker on the HU"
            self.host.say(f"Clicks on: left click includes, Shift+click excludes (on a 2D view); {how}")

    def _start_process(self) -> None:
        if self.process is not None:
            return
        try:
            self.process = RefineProcess()  # warm before the first click
        except (OSError, RuntimeError):  # no child processes here: clicks run in a thread
            self.process = None
        else:  # the child ends with the widget, even one deleted without being closed
            self.host.destroyed.connect(lambda *_, child=self.process: child.close())

    def _warm_chosen(self, *_) -> None:
        """Load the chosen guidance-aware version in the child now (on turning clicks or
        scribbles on, or on choosing it in the method list), not at its first click."""
        card = self.method_combo.currentData()
        if (self.active or self.scribbling or self.boxing) and card is not None and self.process is not None \
                and str(card.path) not in self._warm:
            self.process.warm_model(card.path)
            self._warm.add(str(card.path))

    def _guided_cards(self) -> tuple[list, object]:
        """The layer's target's guidance-aware versions, and the default one (or None)."""
        layer = self.host.layer
        meta = getattr(layer, "metadata", None) or {}
        target = meta.get("target")
        if not target:
            return [], None
        from napari_ctseg.models.registry import ModelRegistry

        registry = ModelRegistry.default()
        try:
            cards = [c for c in registry.list_versions(target) if c.takes_clicks and c.path is not None]
        except CTSegError:
            return [], None
        default = None
        for version in (meta.get("model_version"), None):
            try:
                card = registry.get_card(target, version or None)
            except CTSegError:
                continue
            if card.takes_clicks and card.path is not None:
                default = next((c for c in cards if c.version == card.version), None)
                break
        return cards, default

    def refresh_methods(self) -> None:
        """Fill the method list for the current layer (kept as it is for the same layer)."""
        layer = self.host.layer
        key = (getattr(layer, "name", None), str((getattr(layer, "metadata", None) or {}).get("target")))
        if key == self._methods_for:
            return
        self._methods_for = key
        cards, default = self._guided_cards()
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        self.method_combo.addItem(CLASSICAL, None)
        for card in cards:
            self.method_combo.addItem(f"{card.target} {card.version} network (guidance-aware)"
                                      + (" - candidate" if card.extra.get("status") == "candidate" else ""), card)
        if default is not None:
            self.method_combo.setCurrentIndex(1 + cards.index(default))
        self.method_combo.blockSignals(False)
        self._warm_chosen()  # another layer's default network loads now, not at its first click

    def guided_card(self):
        """The guidance-aware version chosen in the method list, or None (the random walker)."""
        self.refresh_methods()
        return self.method_combo.currentData()

    def detach(self) -> None:
        """Stop listening to the viewer's mouse (the widget is closing)."""
        try:
            self.host.viewer.mouse_drag_callbacks.remove(self._callback)
        except ValueError:
            pass
        if self.scribbles is not None:
            try:
                self.scribbles.events.paint.disconnect(self._paint_callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self.boxes is not None:
            try:
                self.boxes.events.data.disconnect(self._box_callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        if self.process is not None:
            self.process.close()
            self.process = None

    # --- the mouse ---------------------------------------------------------------------------
    def _on_mouse(self, viewer, event):
        if viewer is not self.host.viewer and (self.boxing or self.scribbling):  # on a tri-planar side view
            yield from (self._box_in_side_view if self.boxing else self._scribble_in_side_view)(viewer, event)
            return
        layer = self.host.layer
        if not self.active or self.scribbling or layer is None or getattr(event, "button", 1) != 1 \
                or getattr(layer, "mode", "pan_zoom") != "pan_zoom":
            return
        start = np.asarray(event.position, dtype=float)
        ray = (getattr(event, "view_direction", None), list(getattr(event, "dims_displayed", []) or []))
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or np.abs(np.asarray(event.position, dtype=float) - start).max() > 1e-6
            yield
        if moved:  # a drag pans (rotates in 3D); only a click is a click
            return
        shift = "Shift" in {str(getattr(m, "name", m)) for m in (event.modifiers or ())}
        include = self.include_radio.isChecked() != shift
        if viewer.dims.ndisplay != 2:
            self._click_in_3d(layer, start, *ray, include)
            return
        zyx = np.round(np.asarray(layer.world_to_data(start))[-3:]).astype(int)
        self.click_at(tuple(int(v) for v in zyx), include)

    def _click_in_3d(self, layer, position, direction, displayed, include: bool) -> None:
        """A click on the 3D view: an exclude click on the label's first voxel along the ray
        under the cursor (the surface one sees); an include has no voxel to name there."""
        if include:
            self.host.say("Click to correct: in the 3D view a click can only exclude (Shift+click on the label's "
                          "surface); include on a 2D view")
            return
        zyx = label_along_ray(layer, self.host.label, position, direction, displayed)
        if zyx is None:
            self.host.say(f"Click to correct: no voxel of label {self.host.label} under the cursor in the 3D view")
            return
        self.click_at(zyx, False)

    # --- a click -------------------------------------------------------------------------------
    def click_at(self, zyx, include: bool = True) -> bool:
        """Queue an include/exclude click at voxel ``zyx`` of the layer (display grid); False
        when it cannot be used (no layer or CT image, outside the volume)."""
        host = self.host
        if not host.ready("click to correct"):
            return False
        image = host.selected_image()
        if image is None or tuple(image.data.shape[-3:]) != tuple(host.layer.data.shape[-3:]):
            show_error("Mask tools: click to correct needs the CT image (HU) on the mask's grid: choose it above")
            return False
        shape = host.layer.data.shape[-3:]
        if any(not 0 <= v < n for v, n in zip(zyx, shape)):
            host.say(f"Click to correct: {tuple(zyx)} is outside the volume {tuple(shape)}")
            return False
        click = Click(tuple(zyx), include)
        self.pending.append(click)
        # the marker in a pass of the event loop of its own: a Points.add costs 30-40 ms here and
        # drawing it 60-100 ms, and in the pass of the mouse event the two froze the viewer for
        # their sum (benchmarks/interactive_gui.py, 3 runs each: 99th percentile 93-106 ms in one
        # pass, 57-65 ms split)
        QTimer.singleShot(0, lambda: self._mark(click))
        return True

    def _mark(self, click: Click) -> None:
        self._add_point(click)
        # after the marker is drawn: the worker's copy of the scan would share the GIL with that draw
        QTimer.singleShot(0, self._next)

    def _next(self) -> None:
        if self.worker is not None or not self.pending:
            return
        host = self.host
        click = self.pending.popleft()
        layer, label = host.layer, host.label
        image = host.selected_image()
        if image is None or tuple(image.data.shape[-3:]) != tuple(layer.data.shape[-3:]):
            show_error("Mask tools: click to correct needs the CT image (HU) on the mask's grid: choose it above")
            QTimer.singleShot(0, self._next)
            return
        hu = np.asarray(image.data)
        mask = np.asarray(layer.data)
        spacing = host.spacing()
        stroke = click if isinstance(click, Stroke) else None
        box = click if isinstance(click, Box) else None
        if stroke is not None:
            host.say(f"Click to correct: {stroke.kind} stroke of {len(stroke.voxels):,} voxels…")
        elif box is not None:
            host.say(f"Click to correct: {box.kind} box {list(box.lo)}..{list(box.hi)} (z, y, x)…")
        else:
            host.say(f"Click to correct: {click.kind} at z {click.zyx[0]}, y {click.zyx[1]}, x {click.zyx[2]}…")

        process = self.process
        card = self.guided_card()
        key = (unwrap(layer).name, int(label))
        history = list(self.history.get(key, []))
        done = self.history.setdefault(key, [])
        if stroke is None and box is None:
            done.append(click)
        crops = self._crops

        def one(hu, mask, label, click, spacing, history):
            if card is not None:
                from napari_ctseg.editing.refine_process import refine_model_cropped
                from napari_ctseg.models.preprocess import find_crop

                key = (id(hu), hu.shape, str(card.path))
                crop = crops.get(key)
                if crop is None:  # the network's square of this scan, once
                    crop = crops[key] = find_crop(hu, card.preprocessing)
                if process is not None:
                    return process.submit_model(card, hu, mask, label, click, spacing, crop, history).result()
                from napari_ctseg.editing.refine_process import guided_refiner  # no child process here

                return refine_model_cropped(guided_refiner(str(card.path)), hu, mask, label, click, spacing,
                                            crop, history)
            if process is not None:  # the warm child: the event loop never waits for the GIL
                return process.submit(hu, mask, label, click, spacing).result()
            return refine_click(hu, mask, label, click, spacing)

        def work():
            t0 = time.perf_counter()
            if stroke is not None:
                edit, clicks = refine_stroke(hu, mask, label, stroke.voxels, stroke.include, spacing,
                                             click_edit=one, history=history)
                done.extend(clicks)
            elif box is not None:  # the classical method: no version is trained on boxes
                if process is not None:
                    edit = process.submit_box(hu, mask, label, (box.lo, box.hi), spacing, box.include).result()
                else:
                    edit = refine_box(hu, mask, label, (box.lo, box.hi), spacing, box.include)
            else:
                edit = one(hu, mask, label, click, spacing, history)
            changed = edit.changed(mask) if not edit.is_empty else None
            return edit, changed, time.perf_counter() - t0

        worker = create_worker(work)
        worker.returned.connect(lambda result, lyr=layer, c=click: self._done(lyr, c, *result))
        worker.errored.connect(lambda exc, c=click: self._failed(c, exc))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    def _done(self, layer: Labels, click, edit: RegionEdit, changed, seconds: float) -> None:
        self.seconds.append(seconds)
        what = f"{click.kind} {'box' if isinstance(click, Box) else 'stroke' if isinstance(click, Stroke) else 'click'}"
        if isinstance(click, Box):
            self._box_applied(click)
        if layer is not self.host.layer or edit.is_empty or changed is None or not changed.any():
            self.host.say(f"Click to correct: the {what} changed nothing ({seconds:.2f} s)")
            return
        # only the voxels this click changes: anything painted meanwhile in the box stays
        values = np.array(layer.data[edit.box], copy=True)
        values[changed] = edit.values[changed]
        n = self.host.edits.apply_edit(RegionEdit(edit.box, values), what)
        if n:
            self.host.say(f"Click to correct: {what} changed {n:,} voxels in 3D in {seconds:.2f} s "
                          "(Ctrl+Z undoes it)")

    def _failed(self, click, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, (CTSegError, ValueError)) else f"{type(exc).__name__}: {exc}"
        what = "box" if isinstance(click, Box) else "stroke" if isinstance(click, Stroke) else "click"
        show_error(f"Mask tools: {click.kind} {what}: {text}")

    def _finished(self) -> None:
        self.worker = None
        self._next()

    # --- the markers ---------------------------------------------------------------------------
    def _points_layer(self) -> Points:
        layer = unwrap(self.host.layer)
        viewer = self.host.viewer
        for existing in viewer.layers:
            if isinstance(existing, Points) and existing.metadata.get(CLICKS_KEY) == layer.name:
                self.points = existing
                return existing
        points = Points(np.empty((0, 3)), ndim=3, name=f"clicks ({layer.name})", size=6,
                        scale=tuple(layer.scale[-3:]), translate=tuple(layer.translate[-3:]),
                        border_width=0, metadata={CLICKS_KEY: layer.name})
        viewer.add_layer(points)
        viewer.layers.selection.active = layer  # keep the mask selected: clicks and undo act on it
        self.points = points
        return points

    def _add_point(self, click: Click) -> None:
        points = self.points if self.points is not None and self.points in self.host.viewer.layers \
            else self._points_layer()
        # one point added in place (one redraw); a new data array and colours cost ~25 ms more
        points.selected_data = set()
        points.current_face_color = COLOURS[click.include]
        points.add(np.asarray(click.zyx, float)[None])

    def clear_points(self) -> None:
        self.history.clear()  # the next click starts afresh for a guidance-aware network
        if self.points is not None and self.points in self.host.viewer.layers:
            self.points.data = np.empty((0, 3))
        if self.scribbles is not None and self.scribbles in self.host.viewer.layers:
            self.scribbles.data = np.zeros_like(self.scribbles.data)
        if self.boxes is not None and self.boxes in self.host.viewer.layers and len(self.boxes.data):
            self.boxes.data = []


def label_along_ray(layer: Labels, label: int, position, direction, displayed) -> tuple[int, int, int] | None:
    """The first voxel of ``label`` along the view ray through ``position`` (world), on a 3D
    view of ``layer`` (napari's ray through the data's bounding box, sampled every half voxel);
    None when the ray misses it."""
    if direction is None or len(displayed) != 3:
        return None
    start, end = layer.get_ray_intersections(position, direction, displayed, world=True)
    if start is None or end is None:
        return None
    start, end = np.asarray(start, float)[-3:], np.asarray(end, float)[-3:]
    n = 2 * int(np.ceil(np.abs(end - start).max())) + 2
    points = np.round(np.linspace(start, end, n)).astype(int)
    shape = np.asarray(layer.data.shape[-3:])
    points = points[np.all((points >= 0) & (points < shape), axis=1)]
    if not len(points):
        return None
    data = np.asarray(layer.data)
    hits = np.flatnonzero(data[tuple(points.T)] == label)
    return tuple(int(v) for v in points[hits[0]]) if hits.size else None
