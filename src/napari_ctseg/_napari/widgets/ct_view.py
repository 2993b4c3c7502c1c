"""CT view dock widget: anatomical planes, CT window presets, linked tri-planar views.

The geometry contract (``napari_ctseg.io.volume``): every CT Image layer holds (z, y, x) with
axes pointing to Inferior, Posterior and patient Left, and ``scale`` = spacing in mm. The
plane buttons therefore only set ``viewer.dims.order`` (``napari_ctseg.io.planes``); nothing
is resampled.

The widget holds the controls; the linked tri-planar mode (the main viewer axial, plus a
dock with coronal and sagittal napari views sharing one cursor point and a crosshair) is
``_triplanar.TriPlanarViews``, which this widget adds and removes.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
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
    QVBoxLayout,
    QWidget,
)

from napari_ctseg.io.planes import PLANES, dims_order, plane_of_order, slice_axis
from napari_ctseg.io.volume import WINDOW_PRESETS
from napari_ctseg._napari._compat import layer_renamed, unwrap
from napari_ctseg._napari.widgets._crosshair import CROSSHAIR_KEY, CROSSHAIR_NAME, CROSSHAIR_PX, SIDE_VIEWS, is_crosshair  # noqa: F401
from napari_ctseg._napari.widgets._triplanar import TriPlanarViews, disconnect_all

_PLANE_TIPS = {
    "axial": "Axial slices (z): anterior up, the patient's right on the screen's left",
    "coronal": "Coronal slices (y): superior up, the patient's right on the screen's left",
    "sagittal": "Sagittal slices (x): superior up, anterior on the screen's left",
}




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
                self._close_watcher = _CloseWatcher(self._on_triplanar_closed, self, self._on_dock_added)
                main_window.installEventFilter(self._close_watcher)
                # once the docks added just before are shown (napari shows them a moment later)
                QTimer.singleShot(0, lambda: self._size_docks(main_window, dock)
                                  if self._triplanar_dock is dock else None)
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

    def _on_dock_added(self) -> None:
        """Another widget docked while the side views are on (Mask tools opened from the menu):
        placed again once napari has shown it, so they are not squeezed under it."""
        dock = self._triplanar_dock
        if dock is None or not isinstance(dock.parentWidget(), QMainWindow):
            return
        main_window = dock.parentWidget()
        QTimer.singleShot(50, lambda: self._size_docks(main_window, dock) if self._triplanar_dock is dock else None)

    def _size_docks(self, main_window: QMainWindow, dock: QDockWidget) -> None:
        """Give the side views most of the right-hand column under the other docked widgets
        when they are short (this one alone), else a full-height column of their own beside
        them (under Mask tools they would get a few pixels); and a useful width."""
        if dock.isFloating() or main_window.dockWidgetArea(dock) == Qt.DockWidgetArea.NoDockWidgetArea:
            return  # the user undocked the side views: where they are is theirs
        area = main_window.dockWidgetArea(dock)
        # shown, or to be shown with the window (not a tab behind another)
        others = [d for d in main_window.findChildren(QDockWidget)
                  if d is not dock and d.isVisibleTo(main_window) and main_window.dockWidgetArea(d) == area]
        height = main_window.height()
        heights = [d.sizeHint().height() for d in others]
        stacked = not others or height - sum(heights) >= 0.55 * height  # under short ones (or alone)
        if others and stacked:
            main_window.resizeDocks([*others, dock], [*heights, height - sum(heights)], Qt.Orientation.Vertical)
        elif others:  # placed again, as a column of its own
            main_window.removeDockWidget(dock)
            main_window.addDockWidget(area, dock, Qt.Orientation.Horizontal)
            dock.show()
        # a useful width; a column of its own beside the others leaves the main view less
        share = 0.3 if stacked else 0.25
        width = max(self.sizeHint().width(), int(main_window.width() * share))
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
        disconnect_all(conns)


class _CloseWatcher(QObject):
    """Calls back when the main window closes, so the side viewers are closed too; and when a
    dock widget is added to it (``on_dock``), so the side views keep a column of their own."""

    def __init__(self, callback: Callable[[], None], parent: QObject, on_dock: Callable[[], None] | None = None):
        super().__init__(parent)
        self._callback = weakref.WeakMethod(callback)
        self._on_dock = weakref.WeakMethod(on_dock) if on_dock is not None else None

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.Close:
            callback = self._callback()
            if callback is not None:
                callback()
        elif event.type() == QEvent.Type.ChildAdded and isinstance(event.child(), QDockWidget) \
                and self._on_dock is not None:
            on_dock = self._on_dock()
            if on_dock is not None:
                on_dock()
        return False

