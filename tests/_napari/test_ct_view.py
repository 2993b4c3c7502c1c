"""CT view widget under a real napari viewer: planes, window presets, linked tri-planar.

The phantom is a (z, y, x) = (40, 100, 140) HU volume at (3, 0.7, 0.7) mm, so each plane
has its own physical shape (axial 70 x 98 mm, coronal 120 x 98 mm, sagittal 120 x 70 mm).
Water (0 HU) fills it; bone-bright (1000 HU) markers sit at the patient's right (a rod
along z), anteriorly (a plate along z) and superiorly (a slab); a -700 HU "lung" block
tests the windows. Pixel checks read the canvas screenshots, located by the volume's
bounding box (the canvas background is black).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from qtpy.QtCore import Qt
import pytest

from napari_ctseg.io import planes
from napari_ctseg._napari._layers import image_layer_data
from napari_ctseg._napari.widgets._crosshair import camera as camera_of
from napari_ctseg._napari.widgets.ct_view import CROSSHAIR_KEY, CTViewWidget, window_text
from napari_ctseg.io import read_nifti
from napari_ctseg.io.volume import WINDOW_PRESETS

SHAPE = (40, 100, 140)
SPACING = (3.0, 0.7, 0.7)
REPO = Path(__file__).resolve().parents[2]

# Marker boxes in display voxels (z, y, x) slices; x index 0 is the patient's right.
RIGHT_ROD = (slice(None), slice(45, 60), slice(5, 20))
ANTERIOR_PLATE = (slice(None), slice(3, 12), slice(50, 90))
SUPERIOR_SLAB = (slice(1, 5), slice(40, 60), slice(60, 80))
LUNG = (slice(10, 30), slice(35, 70), slice(75, 120))


def phantom_hu() -> np.ndarray:
    hu = np.zeros(SHAPE, dtype=np.int16)
    hu[LUNG] = -700
    for box in (RIGHT_ROD, ANTERIOR_PLATE, SUPERIOR_SLAB):
        hu[box] = 1000
    return hu


def write_phantom(path: Path) -> Path:
    """Save the phantom as a RAS NIfTI; the reader reorients it to (I, P, L)."""
    display = phantom_hu()
    # display (z=I, y=P, x=L) -> RAS source (i=R, j=A, k=S): reverse axes, flip each
    source = display.transpose(2, 1, 0)[::-1, ::-1, ::-1]
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(source), affine), str(path))
    return path


@pytest.fixture
def phantom_path(tmp_path):
    return write_phantom(tmp_path / "phantom.nii.gz")


def open_phantom(viewer, path):
    data, kwargs, _kind = image_layer_data(read_nifti(path))
    return viewer.add_image(data, **kwargs)


def make_widget(viewer, qtbot) -> CTViewWidget:
    widget = CTViewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CT view", area="right")
    qtbot.wait(10)
    return widget


def gray(shot: np.ndarray) -> np.ndarray:
    return shot[..., :3].astype(float).mean(axis=-1)


def volume_box(shot: np.ndarray, threshold: float = 20) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the non-black pixels: the volume's footprint."""
    rows = np.flatnonzero((gray(shot) > threshold).any(axis=1))
    cols = np.flatnonzero((gray(shot) > threshold).any(axis=0))
    assert rows.size and cols.size, "nothing drawn on the canvas"
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def region(shot, box, rows, cols, inset=0.25) -> np.ndarray:
    """Pixels of a sub-box given as fractions of the volume box, shrunk by ``inset``."""
    r0, r1, c0, c1 = box
    (a, b), (c, d) = rows, cols
    a, b = a + (b - a) * inset, b - (b - a) * inset
    c, d = c + (d - c) * inset, d - (d - c) * inset
    h, w = r1 - r0, c1 - c0
    return shot[int(r0 + a * h) : int(np.ceil(r0 + b * h)), int(c0 + c * w) : int(np.ceil(c0 + d * w))]


def frac(box_slice: slice, n: int) -> tuple[float, float]:
    start, stop, _ = box_slice.indices(n)
    return start / n, stop / n


def mirror(f: tuple[float, float]) -> tuple[float, float]:
    return 1 - f[1], 1 - f[0]


BRIGHT = 200  # 1000 HU in the abdomen window is white; water is ~98


# -- pure helpers -----------------------------------------------------------------------
def test_plane_orders_and_crosshair_lines():
    assert planes.dims_order("axial", 3) == (0, 1, 2)
    assert planes.dims_order("coronal", 3) == (1, 0, 2)
    assert planes.dims_order("sagittal", 4, current=(0, 1, 2, 3)) == (0, 3, 1, 2)
    assert planes.plane_of_order((0, 3, 1, 2)) == "sagittal"
    assert planes.plane_of_order((0, 2, 1)) is None
    with pytest.raises(ValueError):
        planes.dims_order("oblique", 3)
    lines = planes.crosshair_lines((5, 6, 7), (0, 0, 0), (10, 20, 30), displayed=(0, 2))
    assert [axis for axis, _, _ in lines] == [0, 2]
    (_, s0, e0), (_, s2, e2) = lines
    assert s0.tolist() == [0, 6, 7] and e0.tolist() == [10, 6, 7]
    assert s2.tolist() == [5, 6, 0] and e2.tolist() == [5, 6, 30]
    # coronal view: the horizontal line (along x) is where the axial plane cuts it
    assert planes.line_plane(2, (0, 2)) == "axial"
    assert planes.line_plane(0, (0, 2)) == "sagittal"
    assert planes.snap_to_grid([4.4, -3, 100], [0, 0, 0], [3, 0.7, 0.7], [9, 7, 7]).tolist() == pytest.approx(
        [3.0, 0.0, 7.0]
    )
    assert window_text(WINDOW_PRESETS["lung"].limits).endswith("(lung)")


# -- planes -----------------------------------------------------------------------------
def test_plane_buttons_orientation_and_aspect(make_napari_viewer, qtbot, phantom_path):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(phantom_path), plugin="napari-ctseg")  # the plugin's reader
    np.testing.assert_array_equal(layer.data, phantom_hu())  # its (I, P, L) contract
    assert tuple(layer.scale) == pytest.approx(SPACING)
    widget = make_widget(viewer, qtbot)

    shots, boxes = {}, {}
    for plane in planes.PLANES:
        qtbot.mouseClick(widget.plane_buttons[plane], Qt.MouseButton.LeftButton)
        assert widget.plane_buttons[plane].isChecked()
        assert widget.current_plane() == plane
        shots[plane] = viewer.screenshot(canvas_only=True, flash=False)
        boxes[plane] = volume_box(shots[plane])

    # the canvas shows different things, not just different properties
    assert not np.array_equal(shots["axial"], shots["coronal"])
    assert not np.array_equal(shots["coronal"], shots["sagittal"])

    # aspect ratio follows the spacing (mm), not the voxel counts
    mm = {"axial": (70.0, 98.0), "coronal": (120.0, 98.0), "sagittal": (120.0, 70.0)}
    for plane, (h_mm, w_mm) in mm.items():
        r0, r1, c0, c1 = boxes[plane]
        assert (r1 - r0) / (c1 - c0) == pytest.approx(h_mm / w_mm, rel=0.05), plane

    nz, ny, nx = SHAPE
    g = {p: gray(s) for p, s in shots.items()}
    # axial: patient's right on the screen's left, anterior up
    rod = (frac(RIGHT_ROD[1], ny), frac(RIGHT_ROD[2], nx))
    assert region(g["axial"], boxes["axial"], *rod).mean() > BRIGHT
    assert region(g["axial"], boxes["axial"], rod[0], mirror(rod[1])).mean() < BRIGHT / 2
    plate = (frac(ANTERIOR_PLATE[1], ny), frac(ANTERIOR_PLATE[2], nx))
    assert region(g["axial"], boxes["axial"], *plate).mean() > BRIGHT
    assert region(g["axial"], boxes["axial"], mirror(plate[0]), plate[1]).mean() < BRIGHT / 2
    # coronal: superior up, patient's right on the screen's left
    slab = (frac(SUPERIOR_SLAB[0], nz), frac(SUPERIOR_SLAB[2], nx))
    assert region(g["coronal"], boxes["coronal"], *slab).mean() > BRIGHT
    assert region(g["coronal"], boxes["coronal"], mirror(slab[0]), slab[1]).mean() < BRIGHT / 2
    rod_c = ((0.1, 0.9), frac(RIGHT_ROD[2], nx))
    assert region(g["coronal"], boxes["coronal"], *rod_c).mean() > BRIGHT
    assert region(g["coronal"], boxes["coronal"], rod_c[0], mirror(rod_c[1])).mean() < BRIGHT / 2
    # sagittal: superior up, anterior on the screen's left
    slab_s = (frac(SUPERIOR_SLAB[0], nz), frac(SUPERIOR_SLAB[1], ny))
    assert region(g["sagittal"], boxes["sagittal"], *slab_s).mean() > BRIGHT
    assert region(g["sagittal"], boxes["sagittal"], mirror(slab_s[0]), slab_s[1]).mean() < BRIGHT / 2
    plate_s = ((0.1, 0.9), frac(ANTERIOR_PLATE[1], ny))
    assert region(g["sagittal"], boxes["sagittal"], *plate_s).mean() > BRIGHT
    assert region(g["sagittal"], boxes["sagittal"], plate_s[0], mirror(plate_s[1])).mean() < BRIGHT / 2

    # a slider at 0 moves to the middle slice; otherwise the cursor point is kept
    viewer.dims.set_current_step(1, 0)
    widget.show_plane("coronal")
    assert viewer.dims.current_step[1] == SHAPE[1] // 2
    viewer.dims.set_current_step(2, 33)
    widget.show_plane("sagittal")
    assert viewer.dims.current_step[2] == 33
    # the buttons follow an order set elsewhere
    viewer.dims.order = (0, 1, 2)
    assert widget.plane_buttons["axial"].isChecked()
    assert not widget.plane_buttons["sagittal"].isChecked()


# -- windows ----------------------------------------------------------------------------
def test_window_presets_change_gray_levels(make_napari_viewer, qtbot, phantom_path):
    viewer = make_napari_viewer(show=True)
    image = open_phantom(viewer, phantom_path)
    widget = make_widget(viewer, qtbot)
    widget.show_plane("axial")
    viewer.dims.set_current_step(0, 20)
    ny, nx = SHAPE[1:]
    lung = (frac(LUNG[1], ny), frac(LUNG[2], nx))
    water = ((0.75, 0.95), (0.2, 0.4))

    qtbot.mouseClick(widget.window_buttons["lung"], Qt.MouseButton.LeftButton)
    assert tuple(image.contrast_limits) == WINDOW_PRESETS["lung"].limits
    assert "L -500 / W 1400 HU" in widget.window_label.text()
    shot = gray(viewer.screenshot(canvas_only=True, flash=False))
    box = volume_box(shot[..., None].repeat(3, -1))
    lung_gray = region(shot, box, *lung).mean()
    # -700 HU in (-1200, 200): (500 / 1400) of the gray ramp, i.e. mid-gray
    assert 255 * 500 / 1400 - 20 < lung_gray < 255 * 500 / 1400 + 20
    assert region(shot, box, *water).mean() == pytest.approx(255 * 1200 / 1400, abs=20)

    qtbot.mouseClick(widget.window_buttons["abdomen"], Qt.MouseButton.LeftButton)
    assert "L 40 / W 350 HU" in widget.window_label.text()
    shot = gray(viewer.screenshot(canvas_only=True, flash=False))
    assert region(shot, box, *lung).mean() < 10  # below the window: black
    assert region(shot, box, *water).mean() == pytest.approx(255 * 135 / 350, abs=20)

    # with a Labels layer active, the window goes to the topmost image
    labels = viewer.add_labels(np.zeros(SHAPE, dtype=np.uint8), scale=image.scale, translate=image.translate)
    viewer.layers.selection.active = labels
    widget.apply_window("bone")
    assert tuple(image.contrast_limits) == WINDOW_PRESETS["bone"].limits
    assert "(bone)" in widget.window_label.text()
    image.contrast_limits = (-100, 100)
    assert "L 0 / W 200 HU" in widget.window_label.text()  # the label follows manual changes


# -- linked tri-planar ------------------------------------------------------------------
def world(viewer, index3) -> np.ndarray:
    """World position (mm) of voxel ``index3`` (z, y, x) on the viewer's grid."""
    rng = viewer.dims.range[-3:]
    return np.array([r.start + i * r.step for r, i in zip(rng, index3, strict=True)])


def is_gray(shot: np.ndarray) -> np.ndarray:
    rgb = shot[..., :3].astype(int)
    return (rgb.max(axis=-1) - rgb.min(axis=-1) < 12) & (rgb.mean(axis=-1) > 20)


def gray_box(shot) -> tuple[int, int, int, int]:
    """Footprint of the gray volume, ignoring coloured crosshair lines and title text."""
    mask = is_gray(shot)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert rows.size and cols.size, "no volume drawn"
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def colour_line(shot, colour: str, box) -> tuple[float, float]:
    """Median (row, col) of the crosshair pixels of one colour inside the volume box."""
    r0, r1, c0, c1 = box
    rgb = shot[r0:r1, c0:c1, :3].astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if colour == "red":  # the axial plane
        mask = (r > 180) & (g < 120) & (b < 120)
    elif colour == "green":  # the coronal plane
        mask = (g > 180) & (r < 140) & (b < 140)
    else:  # yellow: the sagittal plane
        mask = (r > 180) & (g > 150) & (b < 100)
    rows, cols = np.nonzero(mask)
    assert rows.size > 10, f"no {colour} crosshair line on the canvas"
    return float(np.median(rows)) / (r1 - r0), float(np.median(cols)) / (c1 - c0)


def line_through(lines, axis, point) -> np.ndarray:
    """The crosshair line running along ``axis``; checks it passes through ``point``."""
    (start, end), = [(s, e) for a, s, e in lines if a == axis]
    others = [k for k in range(3) if k != axis]
    np.testing.assert_allclose(start[others], point[others], atol=1e-6)
    np.testing.assert_allclose(end[others], point[others], atol=1e-6)
    return start


def test_triplanar_links_the_views(make_napari_viewer, qtbot, phantom_path):
    from qtpy.QtCore import QPoint

    viewer = make_napari_viewer(show=True)
    image = open_phantom(viewer, phantom_path)
    widget = make_widget(viewer, qtbot)
    widget.show_plane("coronal")
    names_before = [layer.name for layer in viewer.layers]

    qtbot.mouseClick(widget.triplanar_button, Qt.MouseButton.LeftButton)
    tri = widget.triplanar
    assert tri is not None and widget.triplanar_button.isChecked()
    qtbot.wait(50)
    assert widget.current_plane() == "axial"  # the main view becomes the axial one
    for view in ("coronal", "sagittal"):
        model = tri.models[view]
        mirrored = [layer for layer in model.layers if not layer.metadata.get(CROSSHAIR_KEY)]
        assert len(mirrored) == 1 and mirrored[0].data is image.data  # shared, not copied
        assert planes.plane_of_order(model.dims.order) == view
        assert tri.qt_viewers[view].isVisible()
    cross = viewer.layers[-1]
    assert cross.metadata.get(CROSSHAIR_KEY) and not isinstance(cross, type(image))
    assert viewer.layers.selection.active is image  # adding the crosshair kept the selection
    assert viewer.dims.nsteps[-3:] == SHAPE  # and did not change the sliders

    # one cursor point: set it, every view follows and every crosshair passes through it
    target = (12, 30, 100)
    tri.set_cursor_point(world(viewer, target))
    for model in (viewer, *tri.models.values()):
        assert tuple(model.dims.current_step[-3:]) == target
    p = world(viewer, target)
    main_lines = tri.crosshair_world_lines("main")
    assert sorted(a for a, _, _ in main_lines) == [1, 2]  # axial view: along y and x
    line_through(main_lines, 2, p)
    line_through(tri.crosshair_world_lines("coronal"), 0, p)
    line_through(tri.crosshair_world_lines("sagittal"), 1, p)

    # pixels: in the coronal view the red line (axial plane) sits at z, the yellow at x
    coronal = tri.qt_viewers["coronal"]
    shot = coronal.screenshot(flash=False)
    box = gray_box(shot)
    assert (box[1] - box[0]) / (box[3] - box[2]) == pytest.approx(120 / 98, rel=0.06)
    row, _ = colour_line(shot, "red", box)
    assert row == pytest.approx((target[0] + 0.5) / SHAPE[0], abs=0.03)
    _, col = colour_line(shot, "yellow", box)
    assert col == pytest.approx((target[2] + 0.5) / SHAPE[2], abs=0.03)

    # changing the slice in the main view moves the slices and crosshairs of the others
    viewer.dims.set_current_step(0, 30)
    assert tri.models["coronal"].dims.current_step[0] == 30
    assert tri.models["sagittal"].dims.current_step[0] == 30
    line_through(tri.crosshair_world_lines("coronal"), 2, world(viewer, (30, 30, 100)))
    qtbot.wait(10)
    row, _ = colour_line(coronal.screenshot(flash=False), "red", box)
    assert row == pytest.approx((30 + 0.5) / SHAPE[0], abs=0.03)

    # ... and scrolling the coronal view's slider moves the main view's crosshair
    tri.models["coronal"].dims.set_current_step(1, 70)
    assert viewer.dims.current_step[1] == 70
    assert tri.models["sagittal"].dims.current_step[1] == 70
    here = world(viewer, (30, 70, 100))
    line_through(tri.crosshair_world_lines("main"), 2, here)
    line_through(tri.crosshair_world_lines("sagittal"), 0, here)
    qtbot.wait(10)
    main_shot = viewer.screenshot(canvas_only=True, flash=False)
    row, _ = colour_line(main_shot, "green", gray_box(main_shot))
    assert row == pytest.approx((70 + 0.5) / SHAPE[1], abs=0.03)

    # a click in the sagittal view sets z and y there (x, its slice, stays)
    sagittal = tri.qt_viewers["sagittal"]
    model = tri.models["sagittal"]
    camera = model.scene.camera if hasattr(model, "scene") else model.camera
    h, w = model.canvas.size
    dz_px, dy_px = -0.25 * h, -0.3 * w  # up and to the left of the canvas centre
    z_mm = camera.center[-2] + dz_px / camera.zoom  # rows show z, columns y
    y_mm = camera.center[-1] + dy_px / camera.zoom
    expect_z = np.clip(np.round((z_mm - viewer.dims.range[0].start) / SPACING[0]), 0, SHAPE[0] - 1)
    expect_y = np.clip(np.round((y_mm - viewer.dims.range[1].start) / SPACING[1]), 0, SHAPE[1] - 1)
    native = sagittal.canvas.native
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=QPoint(int(w / 2 + dy_px), int(h / 2 + dz_px)))
    qtbot.wait(10)
    z, y, x = viewer.dims.current_step[-3:]
    assert abs(z - expect_z) <= 1 and abs(y - expect_y) <= 1 and x == 100
    assert (z, y) != (30, 70)
    assert tuple(tri.models["coronal"].dims.current_step[-3:]) == (z, y, x)

    # a click (no drag) in the main view sets y and x
    main_canvas = viewer.window._qt_viewer.canvas
    mh, mw = viewer.canvas.size if hasattr(viewer, "canvas") else main_canvas.size
    qtbot.mouseClick(main_canvas.native, Qt.MouseButton.LeftButton, pos=QPoint(int(mw * 0.5), int(mh * 0.5)))
    qtbot.wait(10)
    z2, y2, x2 = viewer.dims.current_step[-3:]
    assert z2 == z and abs(y2 - 49.5) <= 1 and abs(x2 - 69.5) <= 1
    assert tuple(tri.models["sagittal"].dims.current_step[-3:]) == (z2, y2, x2)

    # a drag in the sagittal view moves the cursor with it, never the view (napari would pan a
    # view without an active layer)
    from qtpy.QtCore import QEvent, QPointF
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    centre = tuple(camera.center)
    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    qtbot.mousePress(native, left, none, QPoint(int(w / 2), int(h / 2)))
    for k in range(1, 6):
        p = QPointF(w / 2 - 8 * k, h / 2 - 6 * k)
        QApplication.sendEvent(native, QMouseEvent(QEvent.Type.MouseMove, p, native.mapToGlobal(p),
                                                   Qt.MouseButton.NoButton, left, none))
        qtbot.wait(5)
    qtbot.mouseRelease(native, left, none, QPoint(int(w / 2 - 40), int(h / 2 - 30)))
    assert tuple(camera.center) == centre
    z3, y3, x3 = viewer.dims.current_step[-3:]
    for got, axis, px in ((z3, 0, -30), (y3, 1, -40)):  # rows show z, columns y
        mm = camera.center[axis - 2] + px / camera.zoom
        want = np.clip(np.round((mm - viewer.dims.range[axis].start) / SPACING[axis]), 0, SHAPE[axis] - 1)
        assert abs(got - want) <= 1, axis
    assert x3 == x2 and (z3, y3) != (z2, y2)

    # labels added meanwhile are shown in the side views too, sharing the array
    labels = viewer.add_labels(np.zeros(SHAPE, dtype=np.uint8), scale=image.scale, translate=image.translate)
    assert viewer.layers[-1] is cross  # the crosshair stays on top
    # the mirrors follow in the next passes of the event loop, one at a time
    qtbot.waitUntil(lambda: all(any(layer.data is labels.data for layer in model.layers)
                                for model in tri.models.values()), timeout=5000)
    viewer.layers.remove(labels)
    for model in tri.models.values():
        assert not any(layer.data is labels.data for layer in model.layers)

    # off: the extra views, their dock and the crosshair go; the user's layers stay
    qtbot.mouseClick(widget.triplanar_button, Qt.MouseButton.LeftButton)
    assert widget.triplanar is None and not widget.triplanar_button.isChecked()
    assert [layer.name for layer in viewer.layers] == names_before
    assert not any(layer.metadata.get(CROSSHAIR_KEY) for layer in viewer.layers)
    assert tri._click_in_main not in viewer.mouse_drag_callbacks
    assert "CT tri-planar" not in viewer.window.dock_widgets
    viewer.dims.set_current_step(0, 5)  # nothing left listening breaks
    assert tri.models["coronal"].dims.current_step[0] != 5


def test_triplanar_off_releases_the_side_viewers(make_napari_viewer, qtbot, phantom_path):
    """No QtViewer (GL canvas) outlives the toggle. (napari's fixture checks the close case.)"""
    import gc
    import weakref

    viewer = make_napari_viewer()
    open_phantom(viewer, phantom_path)
    widget = make_widget(viewer, qtbot)
    widget.set_triplanar(True)
    refs = [weakref.ref(v) for v in widget.triplanar.qt_viewers.values()]
    n_refs = len(refs)
    widget.set_triplanar(False)
    gc.collect()
    released = [ref() is None for ref in refs]
    assert n_refs == 2 and all(released)


def test_triplanar_dock_close_button_turns_it_off(make_napari_viewer, qtbot, phantom_path):
    viewer = make_napari_viewer()
    open_phantom(viewer, phantom_path)
    widget = make_widget(viewer, qtbot)
    widget.set_triplanar(True)
    dock = widget._triplanar_dock
    dock.destroyOnClose()  # what the dock title bar's "x" does
    assert widget.triplanar is None and not widget.triplanar_button.isChecked()
    assert len(viewer.layers) == 1
    widget.set_triplanar(True)  # and it can come back
    assert widget.triplanar is not None and len(viewer.layers) == 2


def test_screenshots_of_the_docked_widget(make_napari_viewer, qtbot, screenshots):
    """PNGs for people (in $CTSEG_SCREENSHOTS, else a temporary folder): normal and tri-planar mode on the sample."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-ctseg", "sample_ct")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-ctseg", "CT view")
    assert isinstance(widget, CTViewWidget)  # the manifest's widget, built by napari
    qtbot.wait(50)
    window = viewer.window._qt_window

    widget.show_plane("axial")
    qtbot.wait(20)
    window.grab().save(str(screenshots / "ct_view_axial.png"))
    widget.show_plane("coronal")
    widget.apply_window("lung")
    qtbot.wait(20)
    window.grab().save(str(screenshots / "ct_view_coronal_lung.png"))

    widget.apply_window("abdomen")
    qtbot.mouseClick(widget.triplanar_button, Qt.MouseButton.LeftButton)
    assert widget.triplanar is not None
    qtbot.wait(100)
    window.grab().save(str(screenshots / "ct_view_triplanar.png"))
    for view, qt_viewer in widget.triplanar.qt_viewers.items():
        shot = qt_viewer.screenshot(flash=False)
        assert is_gray(shot).mean() > 0.1, f"{view} view shows nothing"


def test_triplanar_keeps_the_cursor_and_follows_new_layers(make_napari_viewer, qtbot, phantom_path):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot)
    widget.set_triplanar(True)  # on an empty viewer: nothing to mirror yet
    tri = widget.triplanar
    assert all(len(model.layers) == 0 for model in tri.models.values())
    image = open_phantom(viewer, phantom_path)
    qtbot.waitUntil(lambda: all(any(layer.data is image.data for layer in m.layers) for m in tri.models.values()),
                    timeout=5000)
    for view, m in tri.models.items():  # each side view fitted to the volume it got
        rows, cols = m.dims.displayed
        centre = camera_of(m).center[-2:]
        for axis, c in zip((rows, cols), centre):
            lo, hi = image.extent.world[:, axis]
            assert lo <= c <= hi, view
    viewer.dims.current_step = (7, 20, 110)
    widget.set_triplanar(False)
    widget.set_triplanar(True)  # turning it on must not re-centre the cursor
    tri = widget.triplanar
    assert tuple(viewer.dims.current_step) == (7, 20, 110)
    assert tuple(tri.models["sagittal"].dims.current_step) == (7, 20, 110)
    image.contrast_limits = (-300, 300)  # display settings follow
    assert all(
        tuple(layer.contrast_limits) == (-300, 300)
        for m in tri.models.values()
        for layer in m.layers
        if layer.data is image.data
    )
    # a mask painted in the main view is redrawn in the side views (same array)
    labels = viewer.add_labels(np.zeros(SHAPE, dtype=np.uint8), scale=image.scale, translate=image.translate)
    qtbot.waitUntil(lambda: sum(layer.data is labels.data for m in tri.models.values() for layer in m.layers) == 2,
                    timeout=5000)
    mirrors = [layer for m in tri.models.values() for layer in m.layers if layer.data is labels.data]
    assert len(mirrors) == 2
    redrawn = []
    for mirror in mirrors:
        mirror.events.set_data.connect(lambda event=None: redrawn.append(1))
    labels.paint((7, 20, 110), 1)
    assert labels.data[7, 20, 110] == 1 and len(redrawn) >= 2
    viewer.layers.remove(labels)
    viewer.layers.remove(image)
    assert all(len(m.layers) == 0 for m in tri.models.values())
    assert len(viewer.layers) == 0  # the crosshair goes with the last layer


def test_widget_is_released_and_stops_listening(make_napari_viewer, phantom_path):
    import gc
    import weakref

    viewer = make_napari_viewer()
    open_phantom(viewer, phantom_path)
    widget = CTViewWidget(viewer)
    ref = weakref.ref(widget)
    del widget
    gc.collect()
    assert ref() is None
    viewer.dims.order = (1, 0, 2)  # no callback into a dead widget
    viewer.layers[0].contrast_limits = (0, 10)


def test_a_widget_docked_after_the_triplanar_views_does_not_squeeze_them(make_napari_viewer, qtbot, phantom_path):
    """Mask tools opened (docked on the right) while the side views are on: they move to a column of
    their own instead of sharing theirs with it."""
    from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget

    viewer = make_napari_viewer(show=True)
    open_phantom(viewer, phantom_path)
    widget = make_widget(viewer, qtbot)
    qtbot.mouseClick(widget.triplanar_button, Qt.MouseButton.LeftButton)
    qtbot.wait(100)
    tri = widget.triplanar
    tools = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(tools, name="Mask tools", area="right")
    qtbot.waitUntil(lambda: all(q.canvas.native.height() > 150 for q in tri.qt_viewers.values()), timeout=5000)
    from qtpy.QtWidgets import QDockWidget

    window = viewer.window._qt_window
    tools_dock, tri_dock = tools, widget._triplanar_dock
    while not isinstance(tools_dock, QDockWidget):
        tools_dock = tools_dock.parentWidget()
    assert window.dockWidgetArea(tri_dock) == window.dockWidgetArea(tools_dock)
    assert tools_dock.geometry().right() <= tri_dock.geometry().left() + 5  # side by side, not stacked
