"""CT tri-planar views: coronal and sagittal napari views linked to the main viewer.

The main viewer (axial) and two more napari viewers (coronal, sagittal) in a dock render the
same arrays: one world-space cursor point is shared by the three, each view draws a
crosshair through it (``_crosshair``), a click or drag in a side view moves it, a click in
the main view (in pan/zoom mode) moves it, and moving any slider moves the others. napari
has no built-in for this (napari issue #662); the side viewers are ``ViewerModel`` +
``QtViewer`` pairs, as in napari's ``multiple_viewer_widget`` example, showing mirrors of the
main viewer's layers (``_triplanar_layers``). ``CTViewWidget`` (``ct_view``) turns it on and off.
The main viewer's mouse callbacks marked ``in_side_views_too`` (Mask tools' click to correct)
get the side views' mouse events too, so a click, a box or a stroke works on any of the three.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels, Points, Shapes
from napari.qt import QtViewer
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import QSplitter, QVBoxLayout, QWidget

from napari_ctseg.io.planes import PLANE_COLORS, dims_order, slice_axis, snap_to_grid
from napari_ctseg._napari.widgets._crosshair import SIDE_VIEWS, Crosshairs, is_crosshair
from napari_ctseg._napari.widgets._crosshair import camera as camera_of
from napari_ctseg._napari.widgets._triplanar_layers import LayerMirrors


def _text_overlay(model: ViewerModel):
    canvas = getattr(model, "canvas", None)  # napari >= 0.9
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return model.text_overlay


def show_titles(models: dict[str, ViewerModel]) -> None:
    """Each side view's name and slice number ("Coronal  12/40") in its corner."""
    for view, model in models.items():
        text = view.capitalize()
        if model.dims.ndim >= 3:
            axis = model.dims.ndim - 3 + slice_axis(view)
            text += f"  {model.dims.current_step[axis] + 1}/{int(model.dims.nsteps[axis])}"
        overlay = _text_overlay(model)
        if overlay.text != text:
            overlay.text = text


SIDE_VIEWS_TOO = "ctseg_in_side_views_too"


def in_side_views_too(callback: Callable) -> Callable:
    """Mark a main viewer's mouse drag callback to get the side views' mouse events too (the
    side viewer as its viewer, world coordinates as in the main view): for click to correct,
    so a click on the coronal or sagittal view is a click on that plane. A callback whose first
    step yields True claims the drag: the side view does not move the cursor meanwhile (a box
    being drawn)."""
    setattr(callback, SIDE_VIEWS_TOO, True)
    return callback


def _start(callbacks, model: ViewerModel, event) -> tuple[list, bool]:
    """Start the marked ``callbacks`` on a press in a side view: their generators, advanced
    once, and whether one of them claimed the drag."""
    started, claimed = [], False
    for callback in list(callbacks):
        if getattr(callback, SIDE_VIEWS_TOO, False):
            gen = callback(model, event)
            if inspect.isgenerator(gen):
                try:
                    claimed = next(gen) is True or claimed
                except StopIteration:
                    continue
                started.append(gen)
    return started, claimed


def _advance(generators: list) -> list:
    """One step of each callback generator (napari's protocol: press, each move, release);
    those that have finished are dropped."""
    alive = []
    for gen in generators:
        try:
            next(gen)
        except StopIteration:
            continue
        alive.append(gen)
    return alive


def disconnect_all(conns) -> None:
    """Disconnect each (emitter, callback), ignoring what is already gone; empties ``conns``."""
    for emitter, callback in conns:
        try:
            emitter.disconnect(callback)
        except (ValueError, RuntimeError, TypeError):
            pass
    conns.clear()


class TriPlanarViews(QWidget):
    """Coronal and sagittal napari views linked to the main viewer through one cursor point.

    The shared state is the main viewer's ``dims.point`` (world coordinates, mm): every
    change in one viewer's point is copied to the others, and the crosshair layers are
    updated in place (no layer is re-added on an event).
    """

    closed_by_user = Signal()

    def __init__(self, viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.models: dict[str, ViewerModel] = {}
        self.qt_viewers: dict[str, QtViewer] = {}
        self.mirrors = LayerMirrors(self.models)
        self.cross = Crosshairs(self)
        self._connections: list[tuple[object, Callable]] = []
        self._updating = False
        self._torn_down = False
        self._sync_due = False  # a pass of the event loop is due to add the mirrors still missing

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        splitter = QSplitter(Qt.Orientation.Vertical)
        layout.addWidget(splitter)
        for view in SIDE_VIEWS:
            model = ViewerModel(title=f"CT {view}")
            camera = camera_of(model)
            camera.mouse_pan = False  # a left drag moves the cursor here, not the view
            overlay = _text_overlay(model)
            overlay.visible = True
            overlay.color = (*PLANE_COLORS[view], 1.0)
            overlay.font_size = 9
            overlay.text = view.capitalize()
            qt_viewer = QtViewer(model, show_welcome_screen=False)
            qt_viewer.setToolTip(f"{view.capitalize()} view: click or drag to move the cursor point")
            splitter.addWidget(qt_viewer)
            self.models[view] = model
            self.qt_viewers[view] = qt_viewer
            self._connect(model.dims.events.point, self._make_point_handler(model))
            self._connect(model.dims.events.ndim, self._on_side_ndim)
            # after napari's own handler, which turns panning on again whenever no layer is active
            model.layers.selection.events.active.connect(self._make_no_pan(model), position="last")
            self._connect(camera.events.zoom, self._update_widths)
            self._connect(model.events.status, self._make_status_forward(model))
            canvas = getattr(model, "canvas", None)  # napari >= 0.9
            if canvas is not None and hasattr(canvas, "events"):
                # a navigator view: keep the whole volume in sight when its pane resizes
                self._connect(canvas.events.size, self._make_refit(model))
            model.mouse_drag_callbacks.append(self._drag_in_side_view)

        main = self.viewer
        if main.dims.ndim >= 3:
            main.dims.order = dims_order("axial", main.dims.ndim, main.dims.order)
        self._connect(main.layers.events.inserted, self._on_main_layers)
        self._connect(main.layers.events.removed, self._on_main_layers)
        self._connect(main.layers.events.moved, self._on_main_layers)
        self._connect(main.dims.events.point, self._make_point_handler(main))
        self._connect(main.dims.events.order, self._update_crosshairs)
        self._connect(main.dims.events.ndisplay, self._update_crosshairs)
        self._connect(main.events.reset_view, self._reset_side_views)
        self._connect(camera_of(main).events.zoom, self._update_widths)
        main.mouse_drag_callbacks.append(self._click_in_main)

        self._sync_layers()
        self._reset_side_views()
        # the canvases get their final size once the dock is laid out: fit them then
        QTimer.singleShot(0, self._fit_all)

    # -- public ---------------------------------------------------------------------------
    def crosshair_world_lines(self, key: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The crosshair lines of a view ("main", "coronal", "sagittal") in world mm (z, y, x)."""
        return self.cross.world_lines(key)

    def cursor_point(self) -> np.ndarray | None:
        """The shared cursor point (z, y, x) in world coordinates (mm), or None without 3D data."""
        if self.viewer.dims.ndim < 3:
            return None
        return np.asarray(self.viewer.dims.point[-3:], dtype=float)

    def set_cursor_point(self, point, snap: bool = True) -> None:
        """Move the shared cursor to ``point`` (z, y, x) in mm; all views follow."""
        dims = self.viewer.dims
        if dims.ndim < 3:
            return
        p3 = np.asarray(point, dtype=float)
        if snap:
            rng = dims.range[-3:]
            p3 = snap_to_grid(p3, [r.start for r in rng], [r.step for r in rng], [r.stop for r in rng])
        full = np.asarray(dims.point, dtype=float)
        full[-3:] = p3
        self._updating = True
        try:
            dims.point = tuple(float(v) for v in full)
        finally:
            self._updating = False
        self._broadcast(self.viewer)

    def teardown(self) -> None:
        """Disconnect everything, remove the crosshair from the main viewer, close the views."""
        if self._torn_down:
            return
        self._torn_down = True
        disconnect_all(self._connections)
        self.mirrors.clear()
        for model, callback in (
            (self.viewer, self._click_in_main),
            *((m, self._drag_in_side_view) for m in self.models.values()),
        ):
            if callback in model.mouse_drag_callbacks:
                model.mouse_drag_callbacks.remove(callback)
        cross = self.cross.layers.pop("main", None)
        if cross is not None and cross in self.viewer.layers:
            self.viewer.layers.remove(cross)
        for model in self.models.values():
            model.layers.clear()
        self.cross.layers.clear()
        for qt_viewer in self.qt_viewers.values():
            qt_viewer.close()
            # owned by Python again, so it is deleted with its last reference
            qt_viewer.setParent(None)
        self.qt_viewers.clear()

    # -- Qt -------------------------------------------------------------------------------
    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ParentChange and not self._torn_down and self.parent() is None:
            # napari's dock close button re-parents us to None: treat it as "off"
            self.teardown()
            self.closed_by_user.emit()
        return super().event(event)

    # -- events ---------------------------------------------------------------------------
    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def _all_models(self) -> list[ViewerModel]:
        return [self.viewer, *self.models.values()]

    def _make_point_handler(self, model: ViewerModel):
        def on_point(event=None):
            if not self._updating:
                self._broadcast(model)

        return on_point

    def _broadcast(self, source: ViewerModel) -> None:
        """Copy ``source``'s dims point to the other viewers (right-aligned axes)."""
        if self._torn_down:
            return
        point = tuple(source.dims.point)
        self._updating = True
        try:
            for model in self._all_models():
                if model is source:
                    continue
                n = min(model.dims.ndim, len(point))
                if n == 0:
                    continue
                new = list(model.dims.point)
                new[-n:] = point[-n:]
                if tuple(new) != tuple(model.dims.point):
                    model.dims.point = tuple(new)
        finally:
            self._updating = False
        self._update_crosshairs()

    def _on_main_layers(self, event=None) -> None:
        if self._torn_down or self._updating:
            return
        cross = self.cross.layers.get("main")
        if cross is not None and cross not in self.viewer.layers:
            # the user deleted the crosshair from the layer list: respect that
            self.cross.layers.pop("main")
            self.cross.main_removed = True
        self._sync_layers(limit=0)  # the removed ones go now; new mirrors one per pass after

    def _on_side_ndim(self, event=None) -> None:
        for view, model in self.models.items():
            if model.dims.ndim >= 3:
                order = dims_order(view, model.dims.ndim, model.dims.order)
                if tuple(model.dims.order) != order:
                    model.dims.order = order

    def _make_status_forward(self, model: ViewerModel):
        def forward(event=None):
            # the window's status bar shows the main viewer's status: the HU under the
            # mouse in a side view goes there too
            if not self._torn_down and model.mouse_over_canvas:
                self.viewer.status = model.status

        return forward

    def _make_no_pan(self, model: ViewerModel):
        def no_pan(event=None):
            camera_of(model).mouse_pan = False  # a left drag moves the cursor, not the view

        self._connections.append((model.layers.selection.events.active, no_pan))
        return no_pan

    def _make_refit(self, model: ViewerModel):
        def refit(event=None):
            if not self._torn_down and len(model.layers):
                model.reset_view()
                self._update_widths()

        return refit

    def _fit_all(self) -> None:
        if not self._torn_down:
            self.viewer.reset_view()  # also resets the side views (reset_view event)

    def _reset_side_views(self, event=None) -> None:
        if self._torn_down:
            return
        for model in self.models.values():
            if len(model.layers):
                model.reset_view()
        self._update_widths()

    # -- layers and crosshairs --------------------------------------------------------------
    def _sync_layers(self, limit: int | None = None) -> None:
        """Mirror the main viewer's Image, Labels, Points and Shapes layers (click markers,
        boxes) into the side views, in order; at most ``limit`` new mirrors now, the rest in
        the next passes of the event loop (a layer added to the main viewer, Segment volume's
        results: its two mirrors cost napari as much as the layer itself)."""
        # A side viewer centres its sliders when it gets its first layer: that must not
        # move the shared point, so point events are ignored here and the main viewer's
        # point is copied out afterwards.
        self._updating = True
        try:
            done = self._sync_layers_quietly(limit)
        finally:
            self._updating = False
        self._broadcast(self.viewer)
        if not done and not self._sync_due:
            self._sync_due = True
            QTimer.singleShot(15, self._sync_later)

    def _sync_later(self) -> None:
        self._sync_due = False
        if not self._torn_down:
            self._sync_layers(limit=1)

    def _sync_layers_quietly(self, limit: int | None = None) -> bool:
        main_layers = [layer for layer in self.viewer.layers if not is_crosshair(layer)]
        wanted = [layer for layer in main_layers if isinstance(layer, (Image, Labels, Points, Shapes))]
        empty = [model for model in self.models.values() if not len(model.layers)]
        done = self.mirrors.sync(wanted, limit)
        for model in empty:  # a view's first layer, after the main viewer's own reset
            if len(model.layers):
                model.reset_view()
        self.cross.update_bounds(main_layers)
        for view, model in self.models.items():
            desired = [self.mirrors.of(layer, view) for layer in wanted if self.mirrors.has(layer, view)]
            if view in self.cross.layers:
                desired.append(self.cross.layers[view])
            for target, layer in enumerate(desired):
                current = model.layers.index(layer)
                if current != target:
                    model.layers.move(current, target)
            model.layers.selection.clear()  # no active layer: side views only navigate (``_make_no_pan``)
        self._on_side_ndim()
        cross = self.cross.layers.get("main")
        if cross is not None:
            index = self.viewer.layers.index(cross)
            if index != len(self.viewer.layers) - 1:
                self.viewer.layers.move(index, len(self.viewer.layers))
        return done

    def _update_crosshairs(self, event=None) -> None:
        if not self._torn_down and self.cross.update():
            show_titles(self.models)

    def _update_widths(self, event=None) -> None:
        if not self._torn_down:
            self.cross.update_widths()

    # -- mouse ----------------------------------------------------------------------------
    def _point_from_event(self, model: ViewerModel, event) -> None:
        ndim = model.dims.ndim
        if ndim < 3:
            return
        position = np.asarray(event.position, dtype=float)
        point = np.asarray(model.dims.point[-3:], dtype=float)
        for axis in event.dims_displayed:
            k = axis - (ndim - 3)
            if 0 <= k < 3 and axis < len(position):
                point[k] = position[axis]
        # the main viewer's grid is the reference for snapping
        self.set_cursor_point(point)

    def _drag_in_side_view(self, model: ViewerModel, event):
        """A left press or drag moves the cursor point; the main viewer's callbacks marked
        ``in_side_views_too`` (click to correct) get the same mouse events, with this view."""
        forwarded, claimed = _start(self.viewer.mouse_drag_callbacks, model, event)
        navigate = getattr(event, "button", 1) in (1, None) and not event.modifiers and not claimed
        if navigate:
            self._point_from_event(model, event)
        if not navigate and not forwarded:
            return
        yield
        while event.type == "mouse_move":
            if navigate:
                self._point_from_event(model, event)
            forwarded = _advance(forwarded)
            yield
        _advance(forwarded)  # the release

    def _click_in_main(self, model: ViewerModel, event):
        """A plain left click (no drag) in the main view moves the cursor point there.

        Only while the active layer is in pan/zoom mode, so painting or drawing never
        moves it, and dragging still pans.
        """
        if getattr(event, "button", 1) not in (1, None) or event.modifiers or model.dims.ndisplay != 2:
            return
        active = model.layers.selection.active
        if active is not None and str(getattr(active, "mode", "pan_zoom")) != "pan_zoom":
            return
        start = np.asarray(event.pos, dtype=float)
        moved = False
        yield
        while event.type == "mouse_move":
            if np.hypot(*(np.asarray(event.pos, dtype=float) - start)) > 3:
                moved = True
            yield
        if not moved:
            self._point_from_event(model, event)
