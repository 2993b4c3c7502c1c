"""CT view dock widget: anatomical planes, CT window presets, linked tri-planar views.

The geometry contract (``napari_ctseg.volume``): every CT Image layer holds (z, y, x) with
axes pointing to Inferior, Posterior and patient Left, and ``scale`` = spacing in mm. The
plane buttons therefore only set ``viewer.dims.order`` (``napari_ctseg.planes``); nothing
is resampled.

The linked tri-planar mode keeps the main viewer (axial) and adds a dock with two more
napari viewers (coronal, sagittal) rendering the same arrays: one world-space cursor point
is shared by the three, each view draws a crosshair through it, a click or drag in a side
view moves it, a click in the main view (in pan/zoom mode) moves it, and moving any slider
moves the others. napari has no built-in for this (napari issue #662); the side viewers
are ``ViewerModel`` + ``QtViewer`` pairs, as in napari's ``multiple_viewer_widget`` example.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from napari.components import ViewerModel
from napari.layers import Image, Labels, Layer, Vectors
from napari.qt import QtViewer
from napari.utils.notifications import show_info
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QDockWidget,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ...planes import (
    PLANE_COLORS,
    PLANES,
    crosshair_lines,
    dims_order,
    line_plane,
    plane_of_order,
    slice_axis,
    snap_to_grid,
)
from ...volume import WINDOW_PRESETS
from .._compat import layer_renamed, unwrap

CROSSHAIR_KEY = "ctseg_crosshair"
"""``layer.metadata`` flag of the crosshair layers this widget adds (and removes)."""

CROSSHAIR_NAME = "crosshair"
CROSSHAIR_PX = 2.0
"""Crosshair line width on screen, in canvas pixels (kept constant while zooming)."""

SIDE_VIEWS = ("coronal", "sagittal")

_PLANE_TIPS = {
    "axial": "Axial slices (z): anterior up, the patient's right on the screen's left",
    "coronal": "Coronal slices (y): superior up, the patient's right on the screen's left",
    "sagittal": "Sagittal slices (x): superior up, anterior on the screen's left",
}




def _camera(model: ViewerModel):
    scene = getattr(model, "scene", None)  # napari >= 0.9
    return scene.camera if scene is not None and hasattr(scene, "camera") else model.camera


def _text_overlay(model: ViewerModel):
    canvas = getattr(model, "canvas", None)  # napari >= 0.9
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "text"):
        return overlays.text
    return model.text_overlay


def is_crosshair(layer) -> bool:
    return bool(getattr(layer, "metadata", None) or {}) and bool(layer.metadata.get(CROSSHAIR_KEY))


def _is_grey_image(layer) -> bool:
    return isinstance(layer, Image) and not getattr(layer, "rgb", False)


def _data_range(layer) -> tuple[float, float]:
    """(min, max) of an in-memory image's values; (inf, -inf) when not cheap to know."""
    data = layer.data
    if getattr(layer, "multiscale", False) or not isinstance(data, np.ndarray) or data.size == 0:
        return (np.inf, -np.inf)
    return float(data.min()), float(data.max())


def window_text(limits) -> str:
    """'L 40 / W 350 HU' (and the preset's name when the limits are one)."""
    lo, hi = (float(v) for v in limits)
    level, width = (lo + hi) / 2, hi - lo
    text = f"L {level:g} / W {width:g} HU"
    for preset in WINDOW_PRESETS.values():
        if np.allclose((lo, hi), preset.limits, atol=0.5):
            return f"{text}  ({preset.name})"
    return text


class CTViewWidget(QWidget):
    """Dock widget: Axial / Coronal / Sagittal, CT window presets, linked tri-planar view."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.triplanar: TriPlanarViews | None = None
        self._triplanar_dock = None
        self._close_watcher = None
        self._watched: Image | None = None  # image layer whose window the label shows

        layout = QVBoxLayout(self)

        plane_box = QGroupBox("Plane")
        plane_row = QHBoxLayout(plane_box)
        self._plane_group = QButtonGroup(self)
        self.plane_buttons: dict[str, QPushButton] = {}
        for plane in PLANES:
            button = QPushButton(plane.capitalize())
            button.setCheckable(True)
            button.setToolTip(_PLANE_TIPS[plane])
            self._plane_group.addButton(button)
            plane_row.addWidget(button)
            self.plane_buttons[plane] = button
        # bound methods, not lambdas: a lambda holding self would keep the widget alive
        self._plane_group.buttonClicked.connect(self._on_plane_button)
        layout.addWidget(plane_box)

        window_box = QGroupBox("CT window")
        grid = QGridLayout(window_box)
        self.window_buttons: dict[str, QPushButton] = {}
        self._window_group = QButtonGroup(self)
        self._window_group.setExclusive(False)
        for i, (name, preset) in enumerate(WINDOW_PRESETS.items()):
            lo, hi = preset.limits
            button = QPushButton(name.capitalize())
            button.setToolTip(
                f"{name.capitalize()} window: level {preset.level:g} HU, width {preset.width:g} HU "
                f"(shows {lo:g} to {hi:g} HU)"
            )
            self._window_group.addButton(button)
            grid.addWidget(button, i // 3, i % 3)
            self.window_buttons[name] = button
        self._window_group.buttonClicked.connect(self._on_window_button)
        self.window_label = QLabel("no CT image")
        self.window_label.setToolTip("Level (centre) and width of the active image's window, in HU")
        grid.addWidget(self.window_label, 2, 0, 1, 3)
        layout.addWidget(window_box)

        self.triplanar_button = QPushButton("Linked tri-planar")
        self.triplanar_button.setCheckable(True)
        self.triplanar_button.setToolTip(
            "Show coronal and sagittal views next to the axial one, linked to one cursor "
            "point with a crosshair in each: click or drag in a side view, click in the "
            "main view (pan/zoom mode), or move any slider"
        )
        self.triplanar_button.toggled.connect(self.set_triplanar)
        layout.addWidget(self.triplanar_button)
        # no vertical stretch of our own: the tri-planar dock below gets the height
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        specs = [
            (self.viewer.dims.events.order, "_sync_plane_buttons"),
            (self.viewer.dims.events.ndim, "_sync_plane_buttons"),
            (self.viewer.layers.selection.events.active, "_update_window_label"),
            (self.viewer.layers.events.inserted, "_update_window_label"),
            (self.viewer.layers.events.removed, "_update_window_label"),
            (layer_renamed(self.viewer.layers), "_update_window_label"),
        ]
        for emitter, name in specs:
            emitter.connect(getattr(self, name))
        # napari keeps bound methods weakly; drop them as soon as the widget goes
        self_ref = weakref.ref(self)
        self.destroyed.connect(lambda *_: _disconnect_methods(self_ref, specs))
        self._sync_plane_buttons()
        self._update_window_label()

    # -- planes ---------------------------------------------------------------------------
    def show_plane(self, plane: str) -> None:
        """Show axial, coronal or sagittal slices of the last three axes, fitted to the canvas.

        The cursor point is kept, except that a slider sitting on the first slice of the
        new slicing axis moves to the middle slice.
        """
        dims = self.viewer.dims
        if dims.ndim < 3:
            show_info("CT view: open a 3D scan first (the viewer shows no 3D data)")
            self._sync_plane_buttons()
            return
        if dims.ndisplay != 2:
            dims.ndisplay = 2
        dims.order = dims_order(plane, dims.ndim, dims.order)
        axis = dims.ndim - 3 + slice_axis(plane)
        if dims.current_step[axis] == 0 and dims.nsteps[axis] > 1:
            dims.set_current_step(axis, int(dims.nsteps[axis]) // 2)
        self.viewer.reset_view()
        self._sync_plane_buttons()

    def _on_plane_button(self, button) -> None:
        for plane, b in self.plane_buttons.items():
            if b is button:
                self.show_plane(plane)

    def current_plane(self) -> str | None:
        if self.viewer.dims.ndim < 3:
            return None
        return plane_of_order(self.viewer.dims.order)

    def _sync_plane_buttons(self, event=None) -> None:
        plane = self.current_plane()
        self._plane_group.setExclusive(False)
        for name, button in self.plane_buttons.items():
            button.setChecked(name == plane)
        self._plane_group.setExclusive(True)

    # -- windows --------------------------------------------------------------------------
    def target_image_layer(self) -> Image | None:
        """The image a window preset applies to.

        The active layer when it is an image; else the topmost selected image; else
        (e.g. a Labels layer is active) the topmost image layer.
        """
        layers = self.viewer.layers
        active = layers.selection.active
        if _is_grey_image(active):
            return active
        selected = [layer for layer in layers if layer in layers.selection and _is_grey_image(layer)]
        if selected:
            return selected[-1]
        images = [layer for layer in layers if _is_grey_image(layer)]
        return images[-1] if images else None

    def apply_window(self, name: str) -> Image | None:
        """Set the CT window preset ``name`` (see ``volume.WINDOW_PRESETS``) on the target image."""
        key = str(name).lower()
        if key not in WINDOW_PRESETS:
            raise ValueError(f"unknown window {name!r}; expected one of {', '.join(WINDOW_PRESETS)}")
        layer = self.target_image_layer()
        if layer is None:
            show_info("CT view: open a CT image first; window presets apply to an image layer")
            return None
        lo, hi = WINDOW_PRESETS[key].limits
        # The contrast slider should span the scan's HU and the window (a window may
        # reach past the values, and a layer opened with a window has that as its range).
        rlo, rhi = layer.contrast_limits_range
        dlo, dhi = _data_range(layer)
        new_range = (min(lo, rlo, dlo), max(hi, rhi, dhi))
        if new_range != (rlo, rhi):
            layer.contrast_limits_range = new_range
        layer.contrast_limits = (lo, hi)
        self._update_window_label()
        return layer

    def _on_window_button(self, button) -> None:
        for name, b in self.window_buttons.items():
            if b is button:
                self.apply_window(name)

    def _update_window_label(self, event=None) -> None:
        layer = self.target_image_layer()
        if layer is not self._watched:
            if self._watched is not None:
                self._watched.events.contrast_limits.disconnect(self._update_window_label)
            self._watched = layer
            if layer is not None:
                layer.events.contrast_limits.connect(self._update_window_label)
        if layer is None:
            self.window_label.setText("no CT image")
        else:
            self.window_label.setText(f"{layer.name}: {window_text(layer.contrast_limits)}")

    # -- linked tri-planar ----------------------------------------------------------------
    def set_triplanar(self, on: bool) -> None:
        """Show (True) or remove (False) the linked coronal and sagittal views."""
        on = bool(on)
        if on and self.triplanar is None:
            views = TriPlanarViews(self.viewer)
            views.closed_by_user.connect(self._on_triplanar_closed)
            self.triplanar = views
            dock = self.viewer.window.add_dock_widget(
                views, name="CT tri-planar", area="right", add_vertical_stretch=False
            )
            self._triplanar_dock = dock
            main_window = dock.parentWidget()
            if isinstance(main_window, QMainWindow):
                # side viewers hold GL canvases: close them with the main window
                self._close_watcher = _CloseWatcher(self._on_triplanar_closed, self)
                main_window.installEventFilter(self._close_watcher)
                self._size_docks(main_window, dock)
            self._sync_plane_buttons()
        elif not on and self.triplanar is not None:
            views, dock = self.triplanar, self._triplanar_dock
            self.triplanar, self._triplanar_dock = None, None
            if self._close_watcher is not None:
                if dock is not None and dock.parentWidget() is not None:
                    dock.parentWidget().removeEventFilter(self._close_watcher)
                self._close_watcher.deleteLater()
                self._close_watcher = None
            views.teardown()
            if dock is not None:
                try:
                    self.viewer.window.remove_dock_widget(dock)
                except (LookupError, RuntimeError):
                    pass  # the user closed it already
                dock.deleteLater()
            views.deleteLater()
        if self.triplanar_button.isChecked() != on:
            self.triplanar_button.blockSignals(True)
            self.triplanar_button.setChecked(on)
            self.triplanar_button.blockSignals(False)

    def _on_triplanar_closed(self) -> None:
        self.set_triplanar(False)

    def _size_docks(self, main_window: QMainWindow, dock: QDockWidget) -> None:
        """Give the side views most of the right-hand column and a useful width."""
        own = self.parentWidget()
        while own is not None and not isinstance(own, QDockWidget):
            own = own.parentWidget()
        height = main_window.height()
        if own is not None and main_window.dockWidgetArea(own) == main_window.dockWidgetArea(dock):
            mine = own.sizeHint().height()
            main_window.resizeDocks([own, dock], [mine, max(height - mine, 200)], Qt.Orientation.Vertical)
        width = max(self.sizeHint().width(), int(main_window.width() * 0.36))
        main_window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)

    def closeEvent(self, event) -> None:
        self.set_triplanar(False)
        super().closeEvent(event)


def _disconnect_methods(obj_ref, specs) -> None:
    obj = obj_ref()
    if obj is not None:
        conns = [(emitter, getattr(obj, name)) for emitter, name in specs]
        if obj._watched is not None:
            conns.append((obj._watched.events.contrast_limits, obj._update_window_label))
        _disconnect_all(conns)


def _disconnect_all(conns) -> None:
    for emitter, callback in conns:
        try:
            emitter.disconnect(callback)
        except (ValueError, RuntimeError, TypeError):
            pass
    conns.clear()


class _CloseWatcher(QObject):
    """Calls back when the main window closes, so the side viewers are closed too."""

    def __init__(self, callback: Callable[[], None], parent: QObject):
        super().__init__(parent)
        self._callback = weakref.WeakMethod(callback)

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Close:
            callback = self._callback()
            if callback is not None:
                callback()
        return False


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
        self.crosshairs: dict[str, Vectors] = {}  # "main", "coronal", "sagittal"
        self._mirrors: dict[int, tuple[Layer, dict[str, Layer], list]] = {}
        self._connections: list[tuple[object, Callable]] = []
        self._updating = False
        self._torn_down = False
        self._bounds = None  # (low, high, step) of the last three axes, mm
        self._main_cross_removed = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        splitter = QSplitter(Qt.Orientation.Vertical)
        layout.addWidget(splitter)
        for view in SIDE_VIEWS:
            model = ViewerModel(title=f"CT {view}")
            camera = _camera(model)
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
        self._connect(_camera(main).events.zoom, self._update_widths)
        main.mouse_drag_callbacks.append(self._click_in_main)

        self._sync_layers()
        self._reset_side_views()
        # the canvases get their final size once the dock is laid out: fit them then
        QTimer.singleShot(0, self._fit_all)

    # -- public ---------------------------------------------------------------------------
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
        _disconnect_all(self._connections)
        for _layer, _mirrors, conns in self._mirrors.values():
            for emitter, callback in conns:
                emitter.disconnect(callback)
        self._mirrors.clear()
        for model, callback in (
            (self.viewer, self._click_in_main),
            *((m, self._drag_in_side_view) for m in self.models.values()),
        ):
            if callback in model.mouse_drag_callbacks:
                model.mouse_drag_callbacks.remove(callback)
        cross = self.crosshairs.pop("main", None)
        if cross is not None and cross in self.viewer.layers:
            self.viewer.layers.remove(cross)
        for model in self.models.values():
            model.layers.clear()
        self.crosshairs.clear()
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
        cross = self.crosshairs.get("main")
        if cross is not None and cross not in self.viewer.layers:
            # the user deleted the crosshair from the layer list: respect that
            self.crosshairs.pop("main")
            self._main_cross_removed = True
        self._sync_layers()

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

    # -- layers ---------------------------------------------------------------------------
    def _sync_layers(self) -> None:
        """Mirror the main viewer's Image and Labels layers into the side views, in order."""
        # A side viewer centres its sliders when it gets its first layer: that must not
        # move the shared point, so point events are ignored here and the main viewer's
        # point is copied out afterwards.
        self._updating = True
        try:
            self._sync_layers_quietly()
        finally:
            self._updating = False
        self._broadcast(self.viewer)

    def _sync_layers_quietly(self) -> None:
        main_layers = [layer for layer in self.viewer.layers if not is_crosshair(layer)]
        wanted = [layer for layer in main_layers if isinstance(layer, (Image, Labels))]
        wanted_ids = {id(layer) for layer in wanted}
        for key in [k for k in self._mirrors if k not in wanted_ids]:
            _layer, mirrors, conns = self._mirrors.pop(key)
            for emitter, callback in conns:
                emitter.disconnect(callback)
            for view, mirror in mirrors.items():
                if mirror in self.models[view].layers:
                    self.models[view].layers.remove(mirror)
        for layer in wanted:
            if id(layer) not in self._mirrors:
                self._add_mirror(layer)
        self._update_bounds(main_layers)
        for view, model in self.models.items():
            desired = [self._mirrors[id(layer)][1][view] for layer in wanted]
            if view in self.crosshairs:
                desired.append(self.crosshairs[view])
            for target, layer in enumerate(desired):
                current = model.layers.index(layer)
                if current != target:
                    model.layers.move(current, target)
            model.layers.selection.clear()  # no active layer: side views only navigate
        self._on_side_ndim()
        cross = self.crosshairs.get("main")
        if cross is not None:
            index = self.viewer.layers.index(cross)
            if index != len(self.viewer.layers) - 1:
                self.viewer.layers.move(index, len(self.viewer.layers))

    def _add_mirror(self, layer: Layer) -> None:
        mirrors: dict[str, Layer] = {}
        for view, model in self.models.items():
            data, state, kind = layer.as_layer_data_tuple()
            mirror = Layer.create(data, state, kind)  # shares the array: no copy
            model.layers.append(mirror)
            mirrors[view] = mirror
        conns: list = []
        props = ["visible", "opacity", "blending", "colormap", "name"]
        if isinstance(layer, Image):
            props += ["contrast_limits", "gamma", "interpolation2d"]
        else:
            props += ["contour", "show_selected_label", "selected_label"]
        for name in props:
            emitter = getattr(layer.events, name, None)
            if emitter is None:
                continue
            callback = self._make_prop_sync(layer, mirrors, name)
            emitter.connect(callback)
            conns.append((emitter, callback))
        data_sync = self._make_data_sync(layer, mirrors)
        for name in ("data", "paint"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(data_sync)
                conns.append((emitter, data_sync))
        self._mirrors[id(layer)] = (layer, mirrors, conns)

    @staticmethod
    def _make_prop_sync(layer: Layer, mirrors: dict[str, Layer], name: str):
        def sync(event=None):
            value = getattr(layer, name)
            for mirror in mirrors.values():
                if name == "contrast_limits":
                    mirror.contrast_limits_range = layer.contrast_limits_range
                setattr(mirror, name, value)

        return sync

    @staticmethod
    def _make_data_sync(layer: Layer, mirrors: dict[str, Layer]):
        def sync(event=None):
            for mirror in mirrors.values():
                if mirror.data is not layer.data:
                    mirror.data = layer.data
                else:
                    mirror.refresh()

        return sync

    # -- crosshair ------------------------------------------------------------------------
    def _update_bounds(self, content: list[Layer]) -> None:
        """World extent (mm) of the main viewer's content on the last three axes."""
        bounds = None
        if content and self.viewer.dims.ndim >= 3:
            extent = self.viewer.layers.get_extent(content)
            world = np.asarray(extent.world, dtype=float)
            if world.shape[1] >= 3 and np.all(np.isfinite(world[:, -3:])):
                step = np.asarray(extent.step, dtype=float)[-3:]
                bounds = (world[0, -3:], world[1, -3:], step)
        changed = (bounds is None) != (self._bounds is None) or (
            bounds is not None
            and not all(np.allclose(a, b) for a, b in zip(bounds, self._bounds, strict=True))
        )
        self._bounds = bounds
        if bounds is None:
            self._remove_crosshairs()
            return
        low, _high, step = bounds
        # A coarse isotropic grid for the crosshair: lines stay equally thick on
        # anisotropic scans, and the layer never refines the sliders' step (the minimum
        # scale over all layers).
        scale = np.full(3, float(step.max()))
        for key in ("main", *SIDE_VIEWS):
            if key == "main" and self._main_cross_removed:
                continue
            layer = self.crosshairs.get(key)
            if layer is None:
                layer = self._new_crosshair(scale, low)
                self.crosshairs[key] = layer
                self._add_crosshair(key, layer)
            else:
                if not np.allclose(layer.scale, scale):
                    layer.scale = scale
                if not np.allclose(layer.translate, low):
                    layer.translate = low
        if changed:
            self._reset_side_views()

    @staticmethod
    def _new_crosshair(scale, translate) -> Vectors:
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

    def _add_crosshair(self, key: str, layer: Vectors) -> None:
        if key == "main":
            selection = self.viewer.layers.selection
            active, selected = selection.active, set(selection)
            updating, self._updating = self._updating, True
            try:
                self.viewer.layers.append(layer)
            finally:
                self._updating = updating
            # adding a layer selects it: give the user's selection back
            selection.clear()
            selection.update(selected)
            selection.active = active
        else:
            self.models[key].layers.append(layer)

    def _remove_crosshairs(self) -> None:
        for key, layer in list(self.crosshairs.items()):
            model = self.viewer if key == "main" else self.models[key]
            if layer in model.layers:
                updating, self._updating = self._updating, True
                try:
                    model.layers.remove(layer)
                finally:
                    self._updating = updating
            del self.crosshairs[key]

    def crosshair_world_lines(self, key: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """The crosshair lines of a view ("main", "coronal", "sagittal") in world mm (z, y, x)."""
        layer = self.crosshairs.get(key)
        if layer is None or len(layer.data) == 0:
            return []
        out = []
        for start, proj in layer.data:
            a = np.asarray(layer.data_to_world(start), dtype=float)[-3:]
            b = np.asarray(layer.data_to_world(start + proj), dtype=float)[-3:]
            out.append((int(np.argmax(np.abs(b - a))), a, b))
        return out

    def _update_crosshairs(self, event=None) -> None:
        if self._torn_down or self._bounds is None:
            return
        low, high, _step = self._bounds
        for key, layer in self.crosshairs.items():
            model = self.viewer if key == "main" else self.models[key]
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
        self._update_widths()
        self._update_titles()

    def _update_widths(self, event=None) -> None:
        if self._torn_down:
            return
        for key, layer in self.crosshairs.items():
            model = self.viewer if key == "main" else self.models[key]
            zoom = float(_camera(model).zoom) or 1.0
            width = CROSSHAIR_PX / (zoom * float(np.asarray(layer.scale)[-1]))
            if not np.isclose(layer.edge_width, width):
                layer.edge_width = width

    def _update_titles(self) -> None:
        for view, model in self.models.items():
            text = view.capitalize()
            if model.dims.ndim >= 3:
                axis = model.dims.ndim - 3 + slice_axis(view)
                text += f"  {model.dims.current_step[axis] + 1}/{int(model.dims.nsteps[axis])}"
            overlay = _text_overlay(model)
            if overlay.text != text:
                overlay.text = text

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
        if getattr(event, "button", 1) not in (1, None) or event.modifiers:
            return
        self._point_from_event(model, event)
        yield
        while event.type == "mouse_move":
            self._point_from_event(model, event)
            yield

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
