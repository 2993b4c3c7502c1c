"""Click to correct in Mask tools, in a real napari viewer: include and exclude clicks through
the viewer's own mouse callbacks, the edit in 3D, one undo step per click, the click markers."""
from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Points
from napari.utils._proxies import ReadOnlyWrapper
from qtpy.QtCore import Qt
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

from napari_ctseg._napari._compat import qt_window
from napari_ctseg._napari.widgets._mask_clicks import CLICKS_KEY
from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget

SPACING = (2.0, 1.0, 1.0)
SHAPE = (24, 64, 64)
CENTRE = (12, 32, 32)


class Event:
    """A mouse event as napari's canvas gives the viewer's callbacks (the attributes they read)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def organ_scan():
    """A 60 HU ball (radius 16 mm) in -100 HU fat; the model's mask misses its top 5 slices (10 mm)
    and has an extra blob in the fat."""
    z, y, x = np.indices(SHAPE)
    r = np.sqrt(((z - CENTRE[0]) * SPACING[0]) ** 2 + (y - CENTRE[1]) ** 2 + (x - CENTRE[2]) ** 2)
    organ = r <= 16
    rng = np.random.default_rng(0)
    hu = np.where(organ, 60.0, -100.0) + rng.normal(0, 8, SHAPE)
    mask = organ.astype(np.uint8)
    mask[CENTRE[0] + 4:] = 0
    mask[10:14, 50:58, 8:16] = 1  # extra, in fat
    return hu.astype(np.float32), mask, organ


def press_and_release(viewer, zyx, shift=False):
    pos = tuple(float(v) * s for v, s in zip(zyx, SPACING))
    mods = ["Shift"] if shift else []
    event = ReadOnlyWrapper(Event(type="mouse_press", is_dragging=False, modifiers=mods, position=pos,
                                  button=1, view_direction=None, dims_displayed=[1, 2]), exceptions=("handled",))
    mouse_press_callbacks(viewer, event)
    release = ReadOnlyWrapper(Event(type="mouse_release", is_dragging=False, modifiers=mods, position=pos,
                                    button=1, view_direction=None, dims_displayed=[1, 2]), exceptions=("handled",))
    mouse_release_callbacks(viewer, release)


@pytest.fixture
def setup(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    hu, mask, organ = organ_scan()
    viewer.add_image(hu, name="ct", scale=SPACING)
    layer = viewer.add_labels(mask, name="liver", scale=SPACING)
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, layer, widget, organ


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.clicks.busy, timeout=30000)


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_include_and_exclude_clicks_correct_the_mask_in_3d(qtbot, setup, screenshots):
    viewer, layer, widget, organ = setup
    assert widget.layer is layer and widget.selected_image() is not None
    start = np.array(layer.data, copy=True)
    qtbot.mouseClick(widget.clicks.toggle_button, Qt.MouseButton.LeftButton)
    assert widget.clicks.active and layer.mode == "pan_zoom"

    # an include click in the missing cap, on the axial slice through it
    viewer.dims.set_point(0, (CENTRE[0] + 6) * SPACING[0])
    press_and_release(viewer, (CENTRE[0] + 6, CENTRE[1], CENTRE[2]))
    wait_idle(qtbot, widget)
    after_include = np.array(layer.data, copy=True)
    added = (after_include == 1) & (start == 0)
    assert len(np.unique(np.nonzero(added)[0])) >= 3  # several slices: 3D, not the clicked one
    assert dice(after_include == 1, organ) > dice(start == 1, organ) + 0.05
    assert not (added & ~organ).any() or np.count_nonzero(added & ~organ) < 0.05 * np.count_nonzero(added)

    # Shift+click: an exclude click on the extra blob
    press_and_release(viewer, (12, 54, 12), shift=True)
    wait_idle(qtbot, widget)
    after_exclude = np.array(layer.data, copy=True)
    assert not after_exclude[10:14, 50:58, 8:16].any()
    assert (after_exclude[organ & (start == 1)] == 1).all()  # the organ is untouched

    # the markers: one per click, include green, exclude magenta
    points = next(ly for ly in viewer.layers if isinstance(ly, Points) and ly.metadata.get(CLICKS_KEY) == "liver")
    assert len(points.data) == 2
    colours = np.asarray(points.face_color)
    assert colours[0][1] > colours[0][0] and colours[1][0] > colours[1][1]
    assert viewer.layers.selection.active is layer

    # on the canvas: the include marker (green) on the slice through the cap, with the mask
    viewer.dims.set_point(0, (CENTRE[0] + 6) * SPACING[0])
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    green = (shot[..., 1] > 150) & (shot[..., 0] < 120) & (shot[..., 2] < 150)
    assert green.sum() > 10
    qt_window(viewer).grab().save(str(screenshots / "mask_clicks.png"))

    # one undo step per click
    layer.undo()
    assert np.array_equal(layer.data, after_include)
    layer.undo()
    assert np.array_equal(layer.data, start)


def test_a_drag_pans_and_paint_mode_is_left_alone(qtbot, setup):
    viewer, layer, widget, organ = setup
    start = np.array(layer.data, copy=True)
    widget.clicks.set_active(True)
    pos = tuple(float(v) * s for v, s in zip((CENTRE[0] + 6, CENTRE[1], CENTRE[2]), SPACING))
    press = ReadOnlyWrapper(Event(type="mouse_press", is_dragging=False, modifiers=[], position=pos, button=1,
                                  view_direction=None, dims_displayed=[1, 2]), exceptions=("handled",))
    mouse_press_callbacks(viewer, press)
    moved = tuple(p + 5.0 for p in pos)
    from napari.utils.interactions import mouse_move_callbacks

    mouse_move_callbacks(viewer, ReadOnlyWrapper(Event(type="mouse_move", is_dragging=True, modifiers=[],
                                                       position=moved, button=1, view_direction=None,
                                                       dims_displayed=[1, 2]), exceptions=("handled",)))
    mouse_release_callbacks(viewer, ReadOnlyWrapper(Event(type="mouse_release", is_dragging=False, modifiers=[],
                                                          position=moved, button=1, view_direction=None,
                                                          dims_displayed=[1, 2]), exceptions=("handled",)))
    layer.mode = "paint"
    press_and_release(viewer, (CENTRE[0] + 6, CENTRE[1], CENTRE[2]))
    wait_idle(qtbot, widget)
    assert np.array_equal(layer.data, start)
    assert not widget.clicks.seconds  # nothing was computed


def test_an_exclude_click_on_the_3d_view_takes_the_label_surface_under_the_cursor(qtbot, setup):
    """In the 3D view a Shift+click removes the piece of the label that the ray under the cursor
    meets first (the extra blob seen from above); a plain click there says to include on a 2D view."""
    viewer, layer, widget, organ = setup
    start = np.array(layer.data, copy=True)
    widget.clicks.set_active(True)
    viewer.dims.ndisplay = 3
    qtbot.wait(50)

    def click3d(yx, shift):
        pos = (0.0, float(yx[0]) * SPACING[1], float(yx[1]) * SPACING[2])  # above the volume, looking down z
        mods = ["Shift"] if shift else []
        kw = dict(is_dragging=False, modifiers=mods, position=pos, button=1, view_direction=(1.0, 0.0, 0.0),
                  dims_displayed=[0, 1, 2])
        mouse_press_callbacks(viewer, ReadOnlyWrapper(Event(type="mouse_press", **kw), exceptions=("handled",)))
        mouse_release_callbacks(viewer, ReadOnlyWrapper(Event(type="mouse_release", **kw), exceptions=("handled",)))

    click3d((54, 12), shift=False)
    wait_idle(qtbot, widget)
    assert "only exclude" in widget.status.text() and np.array_equal(layer.data, start)
    click3d((54, 12), shift=True)
    wait_idle(qtbot, widget)
    after = np.asarray(layer.data)
    assert not after[10:14, 50:58, 8:16].any()  # the blob the ray met first
    assert (after[organ & (start == 1)] == 1).all()
    points = next(ly for ly in viewer.layers if isinstance(ly, Points) and ly.metadata.get(CLICKS_KEY) == "liver")
    assert tuple(np.asarray(points.data[-1], int)) == (10, 54, 12)  # on the blob's top face
    click3d((5, 5), shift=True)  # a ray that meets no label voxel
    wait_idle(qtbot, widget)
    assert "no voxel of label 1" in widget.status.text()


def test_a_click_outside_the_volume_says_so(qtbot, setup):
    viewer, layer, widget, organ = setup
    widget.clicks.set_active(True)
    assert not widget.clicks.click_at((0, 0, 200))
    assert "outside the volume" in widget.status.text()


def test_clicks_follow_a_guidance_aware_version(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """A layer whose target has a guidance-aware version: the clicks go to its network (in the
    warm child process), which here follows them exactly (``synthetic.follower_network``)."""
    from synthetic import write_follower_version

    sigma = 6.0
    write_follower_version(tmp_path / "w", sigma_mm=sigma)
    monkeypatch.setattr("napari_ctseg.models.registry.bundled_weights_dir", lambda: tmp_path / "no_bundled")
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(tmp_path / "w"))
    viewer = make_napari_viewer(show=True)
    hu, mask, organ = organ_scan()
    viewer.add_image(hu, name="ct", scale=SPACING)
    layer = viewer.add_labels(mask, name="liver", scale=SPACING, metadata={"target": "liver", "model_version": "g1"})
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    start = np.array(layer.data, copy=True)
    qtbot.mouseClick(widget.clicks.toggle_button, Qt.MouseButton.LeftButton)
    assert widget.clicks.guided_card().version == "g1"
    combo = widget.clicks.method_combo
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "Random walker (classical)", "liver g1 network (guidance-aware)"]
    assert "liver g1's network" in widget.status.text()
    at = (CENTRE[0] + 6, CENTRE[1], CENTRE[2])
    viewer.dims.set_point(0, at[0] * SPACING[0])
    press_and_release(viewer, at)
    wait_idle(qtbot, widget)
    added = (np.asarray(layer.data) == 1) & (start == 0)
    z, y, x = np.indices(SHAPE)
    d = np.sqrt(((z - at[0]) * SPACING[0]) ** 2 + ((y - at[1]) * SPACING[1]) ** 2 + ((x - at[2]) * SPACING[2]) ** 2)
    radius = sigma * np.sqrt(2 * np.log(2))
    assert added[(d < radius - 1.5) & (start == 0)].all()
    assert not added[d > radius + 1.5].any()
    assert len(np.unique(np.nonzero(added)[0])) >= 5  # in 3D
    layer.undo()
    assert np.array_equal(layer.data, start)
    # without a child process (a thread of the viewer, the network loaded there once): the same edit
    widget.clicks.process.close()
    widget.clicks.process = None
    widget.clicks.clear_points()
    press_and_release(viewer, at)
    wait_idle(qtbot, widget)
    assert np.array_equal((np.asarray(layer.data) == 1) & (start == 0), added)
    layer.undo()
    combo.setCurrentIndex(0)  # the random walker instead
    assert widget.clicks.guided_card() is None


def test_choosing_a_network_in_the_method_list_loads_it_in_the_child(qtbot, make_napari_viewer, tmp_path,
                                                                      monkeypatch):
    """Turning clicks on with the random walker chosen loads no network; choosing a
    guidance-aware version in the list loads it in the child then, not at its first click."""
    from synthetic import write_follower_version

    write_follower_version(tmp_path / "w", sigma_mm=6.0)
    monkeypatch.setattr("napari_ctseg.models.registry.bundled_weights_dir", lambda: tmp_path / "no_bundled")
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(tmp_path / "w"))
    viewer = make_napari_viewer(show=True)
    hu, mask, _ = organ_scan()
    viewer.add_image(hu, name="ct", scale=SPACING)
    viewer.add_labels(mask, name="liver", scale=SPACING, metadata={"target": "liver", "model_version": "g1"})
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    clicks = widget.clicks
    clicks.refresh_methods()
    clicks.method_combo.setCurrentIndex(0)  # the random walker
    qtbot.mouseClick(clicks.toggle_button, Qt.MouseButton.LeftButton)
    if clicks.process is None:
        pytest.skip("no child processes here")
    assert clicks.process.loaded_models().result(timeout=120) == []
    clicks.method_combo.setCurrentIndex(1)
    card = clicks.guided_card()
    assert card.version == "g1"
    assert clicks.process.loaded_models().result(timeout=120) == [str(card.path)]


def drag(viewer, zyxs):
    """A press, moves and a release, as napari's canvas hands them out: to the viewer's mouse
    callbacks, then to the active layer's (a brush stroke on a Labels layer in paint mode)."""
    from napari.utils.interactions import mouse_move_callbacks

    pos = [tuple(float(v) * s for v, s in zip(zyx, SPACING)) for zyx in zyxs]
    kw = dict(modifiers=[], button=1, view_direction=None, dims_displayed=[1, 2], dims_point=None)
    targets = (viewer, viewer.layers.selection.active)

    def send(fn, type_, p, dragging):
        event = ReadOnlyWrapper(Event(type=type_, is_dragging=dragging, position=p, **kw), exceptions=("handled",))
        for target in targets:
            fn(target, event)

    send(mouse_press_callbacks, "mouse_press", pos[0], False)
    for p in pos[1:]:
        send(mouse_move_callbacks, "mouse_move", p, True)
    send(mouse_release_callbacks, "mouse_release", pos[-1], False)


def test_scribble_strokes_correct_the_mask_in_3d_one_undo_step_each(qtbot, setup, screenshots):
    from napari_ctseg._napari.widgets._mask_prompts import SCRIBBLES_KEY

    viewer, layer, widget, organ = setup
    start = np.array(layer.data, copy=True)
    clicks = widget.clicks
    qtbot.mouseClick(clicks.toggle_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(clicks.scribble_button, Qt.MouseButton.LeftButton)
    assert clicks.scribbling and not clicks.active  # one or the other
    scribbles = next(ly for ly in viewer.layers if ly.metadata.get(SCRIBBLES_KEY) == "liver")
    assert viewer.layers.selection.active is scribbles and scribbles.mode == "paint"
    assert scribbles.selected_label == 1 and widget.layer is layer  # Mask tools stays on the mask
    assert scribbles.data.shape == layer.data.shape

    # an include stroke across the missing cap, on the axial slice through it
    z = CENTRE[0] + 6
    viewer.dims.set_point(0, z * SPACING[0])
    drag(viewer, [(z, CENTRE[1], x) for x in range(CENTRE[2] - 6, CENTRE[2] + 7, 2)])
    wait_idle(qtbot, widget)
    after_include = np.array(layer.data, copy=True)
    added = (after_include == 1) & (start == 0)
    assert len(np.unique(np.nonzero(added)[0])) >= 3  # in 3D
    assert dice(after_include == 1, organ) > dice(start == 1, organ) + 0.05
    assert np.count_nonzero(added & ~organ) < 0.05 * np.count_nonzero(added)
    assert set(np.unique(scribbles.data)) == {0, 3}  # applied: shown dimmer
    assert "include stroke" in widget.status.text()

    # an exclude stroke over the extra blob
    widget.clicks.exclude_radio.setChecked(True)
    assert scribbles.selected_label == 2
    viewer.dims.set_point(0, 12 * SPACING[0])
    drag(viewer, [(12, y, 12) for y in range(51, 58, 2)])
    wait_idle(qtbot, widget)
    after_exclude = np.array(layer.data, copy=True)
    assert np.count_nonzero(after_exclude[10:14, 50:58, 8:16]) < 0.1 * 4 * 8 * 8
    assert (after_exclude[organ & (start == 1)] == 1).all()

    # on the canvas: the applied include stroke, green, on its slice
    viewer.dims.set_point(0, z * SPACING[0])
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    green = (shot[..., 1] > 120) & (shot[..., 1] > shot[..., 0] + 40) & (shot[..., 1] > shot[..., 2] + 20)
    assert green.sum() > 10
    qt_window(viewer).grab().save(str(screenshots / "mask_scribbles.png"))

    # one undo step per stroke
    layer.undo()
    assert np.array_equal(layer.data, after_include)
    layer.undo()
    assert np.array_equal(layer.data, start)
    # a stroke written by a script (napari's data_setitem, which reports it as a paint too) is
    # applied once, as a brush stroke is (its recolouring is not taken for another stroke)
    widget.clicks.include_radio.setChecked(True)
    idx = tuple(np.array([(z, CENTRE[1], x) for x in range(CENTRE[2] - 4, CENTRE[2] + 5)]).T)
    scribbles.data_setitem(idx, 1)
    wait_idle(qtbot, widget)
    assert np.all(scribbles.data[idx] == 3)
    assert dice(np.asarray(layer.data) == 1, organ) > dice(start == 1, organ) + 0.05
    layer.undo()  # one stroke, one step
    assert np.array_equal(layer.data, start)
    # Clear clicks clears the strokes; off: the mask is selected again
    qtbot.mouseClick(clicks.clear_button, Qt.MouseButton.LeftButton)
    assert not scribbles.data.any()
    qtbot.mouseClick(clicks.scribble_button, Qt.MouseButton.LeftButton)
    assert not clicks.scribbling and viewer.layers.selection.active is layer and scribbles.mode == "pan_zoom"


def test_a_box_adds_the_structure_inside_it_in_3d_one_undo_step(qtbot, setup, screenshots):
    """Box on, napari's rectangle tool: a box dragged around the organ on one axial slice segments
    it in 3D on an empty layer of the user's own, in the warm child, one undo step."""
    from napari.layers import Shapes

    from napari_ctseg._napari.widgets._mask_prompts import BOXES_KEY

    viewer, _, widget, organ = setup
    mine = viewer.add_labels(np.zeros(SHAPE, np.uint8), name="tumour", scale=SPACING)
    widget.layer_combo.setCurrentText("tumour")
    assert widget.layer is mine
    clicks = widget.clicks
    qtbot.mouseClick(clicks.scribble_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(clicks.box_button, Qt.MouseButton.LeftButton)
    assert clicks.boxing and not clicks.scribbling and not clicks.active  # one at a time
    boxes = next(ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.metadata.get(BOXES_KEY) == "tumour")
    assert viewer.layers.selection.active is boxes and boxes.mode == "add_rectangle"

    # a box around the organ's cross-section on the middle axial slice
    z = CENTRE[0]
    viewer.dims.set_point(0, z * SPACING[0])
    drag(viewer, [(z, CENTRE[1] - 16 + k, CENTRE[2] - 16 + k) for k in range(0, 33, 4)])
    assert len(boxes.data) == 1 and boxes.shape_type == ["rectangle"]
    wait_idle(qtbot, widget)
    got = np.asarray(mine.data) == 1
    assert dice(got, organ) > 0.9
    assert len(np.unique(np.nonzero(got)[0])) >= 0.8 * len(np.unique(np.nonzero(organ)[0]))  # in 3D
    assert "box changed" in widget.status.text()
    assert np.asarray(boxes.edge_color)[0][3] < 1  # applied: dimmer

    # on the canvas: the box's yellow outline and the new label
    qt_window(viewer).grab().save(str(screenshots / "mask_box.png"))
    for ly in (mine, viewer.layers["liver"]):  # the outline alone over the grey CT
        ly.visible = False
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    yellow = (shot[..., 0] > 90) & (shot[..., 0] > shot[..., 2] + 50) & (shot[..., 1] > shot[..., 2] + 30)
    assert yellow.sum() > 20
    for ly in (mine, viewer.layers["liver"]):
        ly.visible = True

    mine.undo()  # one box, one step
    assert not np.asarray(mine.data).any()
    qtbot.mouseClick(clicks.clear_button, Qt.MouseButton.LeftButton)
    assert len(boxes.data) == 0
    qtbot.mouseClick(clicks.box_button, Qt.MouseButton.LeftButton)
    assert not clicks.boxing and viewer.layers.selection.active is mine and boxes.mode == "pan_zoom"


def test_an_exclude_box_takes_the_structure_inside_it_out_of_the_label(qtbot, make_napari_viewer, screenshots):
    """Box on with Exclude chosen: a box dragged around a neighbour the mask leaked into (a 10 HU
    ball beside the 60 HU organ) takes it out in 3D, the organ kept; magenta; one undo step."""
    from napari.layers import Shapes

    from napari_ctseg._napari.widgets._mask_prompts import BOXES_KEY

    hu, _, organ = organ_scan()
    z, y, x = np.indices(SHAPE)
    neighbour = (((z - 12) * SPACING[0]) ** 2 + (y - 32) ** 2 + (x - 56) ** 2 <= 8 ** 2) & ~organ
    hu = np.where(neighbour, 10.0 + np.random.default_rng(5).normal(0, 8, SHAPE), hu).astype(np.float32)
    mask = (organ | neighbour).astype(np.uint8)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(hu, name="ct", scale=SPACING)
    layer = viewer.add_labels(mask, name="liver", scale=SPACING)
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    clicks = widget.clicks
    qtbot.mouseClick(clicks.box_button, Qt.MouseButton.LeftButton)
    clicks.exclude_radio.setChecked(True)
    boxes = next(ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.metadata.get(BOXES_KEY) == "liver")

    viewer.dims.set_point(0, 12 * SPACING[0])
    drag(viewer, [(12, 24 + k, 48 + k) for k in range(0, 17, 4)])
    wait_idle(qtbot, widget)
    got = np.asarray(layer.data) == 1
    assert np.count_nonzero(got & neighbour) < 0.1 * np.count_nonzero(neighbour)  # taken out ...
    assert len(np.unique(np.nonzero(neighbour & ~got)[0])) >= 5  # ... in 3D, on slices nobody drew
    assert np.count_nonzero(organ & ~got) <= 0.005 * np.count_nonzero(organ)  # the organ kept (its interface aside)
    assert "exclude box changed" in widget.status.text()
    edge = np.asarray(boxes.edge_color)[0]
    assert edge[0] > edge[1] and edge[2] > edge[1] and edge[3] < 1  # magenta, dimmer once applied
    qt_window(viewer).resize(1500, 1000)
    viewer.reset_view()
    qtbot.wait(50)
    qt_window(viewer).grab().save(str(screenshots / "mask_box_exclude.png"))
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    magenta = (shot[..., 0] > shot[..., 1] + 30) & (shot[..., 2] > shot[..., 1] + 25)
    assert magenta.sum() > 20  # the box's outline, drawn (dimmer once applied)
    layer.undo()  # one box, one step
    assert np.array_equal(layer.data, mask)


def test_clicks_correct_the_lungs_and_the_infection_layers_too(qtbot, make_napari_viewer, screenshots):
    """The other targets' layers: an include click on the left lung (label 2) fixes its missing base
    in 3D and leaves the right lung alone; on an infection layer, an include click on a ground-glass
    lesion inside the lung adds the lesion, not the lung around it."""
    shape, sp = (24, 64, 96), (2.0, 1.0, 1.0)
    z, y, x = np.indices(shape)
    right = ((z - 12) * 2 / 20) ** 2 + ((y - 32) / 22) ** 2 + ((x - 26) / 18) ** 2 <= 1
    left = ((z - 12) * 2 / 20) ** 2 + ((y - 32) / 22) ** 2 + ((x - 70) / 18) ** 2 <= 1
    lesion = ((z - 12) * 2) ** 2 + (y - 30) ** 2 + (x - 72) ** 2 <= 7 ** 2
    rng = np.random.default_rng(3)
    hu = np.where(right | left, -850.0, 40.0)
    hu = np.where(lesion, -450.0, hu) + rng.normal(0, 12, shape)
    lungs = np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)
    lungs[16:][left[16:]] = 0  # the left lung's lower slices are missing
    viewer = make_napari_viewer(show=True)
    viewer.add_image(hu.astype(np.float32), name="ct", scale=sp)
    lungs_layer = viewer.add_labels(lungs, name="lungs", scale=sp)
    infection = viewer.add_labels(np.zeros(shape, np.uint8), name="infection", scale=sp)
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)

    widget.layer_combo.setCurrentText("lungs")
    widget.label_spin.setValue(2)
    widget.clicks.set_active(True)
    before = np.array(lungs_layer.data, copy=True)
    viewer.dims.set_point(0, 18 * sp[0])
    press_and_release(viewer, (18, 32, 70))
    qtbot.waitUntil(lambda: not widget.clicks.busy, timeout=30000)
    after = np.asarray(lungs_layer.data)
    truth = np.where(right, 1, np.where(left, 2, 0))
    assert dice(after == 2, left) > dice(before == 2, left) + 0.05 and dice(after == 2, left) > 0.95
    assert len(np.unique(np.nonzero((after == 2) & (before == 0))[0])) >= 3  # in 3D
    assert np.array_equal(after == 1, before == 1)  # the right lung is untouched
    assert np.mean(after[truth == 0] == 0) > 0.99

    widget.layer_combo.setCurrentText("infection")
    widget.label_spin.setValue(1)
    widget.clicks.set_active(True)
    viewer.dims.set_point(0, 12 * sp[0])
    press_and_release(viewer, (12, 30, 72))
    qtbot.waitUntil(lambda: not widget.clicks.busy, timeout=30000)
    got = np.asarray(infection.data) == 1
    assert dice(got, lesion) > 0.8 and np.count_nonzero(got & ~lesion) < 0.3 * np.count_nonzero(lesion)
    lungs_layer.opacity = 0.3
    viewer.reset_view()
    qt_window(viewer).grab().save(str(screenshots / "mask_clicks_lungs_infection.png"))
    infection.undo()
    assert not np.asarray(infection.data).any()


def side_view_pixel(tri, view, zyx):
    """The canvas pixel (a QPoint) of voxel ``zyx`` on a tri-planar side view."""
    from qtpy.QtCore import QPoint

    from napari_ctseg._napari.widgets._crosshair import camera as camera_of

    model = tri.models[view]
    camera = camera_of(model)
    native = tri.qt_viewers[view].canvas.native
    h, w = native.height(), native.width()
    rows, cols = model.dims.displayed  # coronal (z, x), sagittal (z, y)
    row_mm, col_mm = zyx[rows] * SPACING[rows], zyx[cols] * SPACING[cols]
    px = w / 2 + (col_mm - camera.center[-1]) * camera.zoom
    py = h / 2 + (row_mm - camera.center[-2]) * camera.zoom
    assert 0 <= px < w and 0 <= py < h
    return QPoint(int(round(px)), int(round(py)))


def click_side_view(qtbot, tri, view, zyx, shift=False):
    """A real mouse click (Qt, through napari's canvas) on voxel ``zyx`` of a tri-planar side view."""
    modifier = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    qtbot.mouseClick(tri.qt_viewers[view].canvas.native, Qt.MouseButton.LeftButton, modifier,
                     side_view_pixel(tri, view, zyx))


def drag_side_view(qtbot, tri, view, zyxs):
    """A real mouse drag (Qt's press, moves with the button held, release) through voxels ``zyxs``."""
    from qtpy.QtCore import QEvent, QPointF
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    native = tri.qt_viewers[view].canvas.native
    points = [side_view_pixel(tri, view, zyx) for zyx in zyxs]
    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    qtbot.mousePress(native, left, none, points[0])
    for p in points[1:]:
        local = QPointF(p)
        move = QMouseEvent(QEvent.Type.MouseMove, local, native.mapToGlobal(local), Qt.MouseButton.NoButton,
                           left, none)
        QApplication.sendEvent(native, move)
        qtbot.wait(5)
    qtbot.mouseRelease(native, left, none, points[-1])


def test_clicks_on_the_triplanar_side_views(qtbot, setup, screenshots):
    """CT view's tri-planar layout: an include click on the coronal view and a Shift+click on the
    sagittal view correct the mask in 3D as on the main view; the markers show in the side views."""
    from napari_ctseg._napari.widgets.ct_view import CTViewWidget

    viewer, layer, widget, organ = setup
    start = np.array(layer.data, copy=True)
    ct_view = CTViewWidget(viewer)
    viewer.window.add_dock_widget(ct_view, name="CT view", area="right")
    qtbot.mouseClick(ct_view.triplanar_button, Qt.MouseButton.LeftButton)
    tri = ct_view.triplanar
    qtbot.wait(100)
    for view in ("coronal", "sagittal"):  # docked beside Mask tools, not squeezed under it
        assert tri.qt_viewers[view].canvas.native.height() > 150
    qtbot.mouseClick(widget.clicks.toggle_button, Qt.MouseButton.LeftButton)
    assert widget.clicks.active and viewer.layers.selection.active is layer

    # the coronal view through the organ's centre: an include click in its missing cap
    tri.set_cursor_point(tuple(v * s for v, s in zip(CENTRE, SPACING)))
    cap = (CENTRE[0] + 6, CENTRE[1], CENTRE[2])
    click_side_view(qtbot, tri, "coronal", cap)
    wait_idle(qtbot, widget)
    after_include = np.array(layer.data, copy=True)
    added = (after_include == 1) & (start == 0)
    assert len(np.unique(np.nonzero(added)[0])) >= 3 and len(np.unique(np.nonzero(added)[1])) >= 3  # in 3D
    assert dice(after_include == 1, organ) > dice(start == 1, organ) + 0.05
    points = next(ly for ly in viewer.layers if isinstance(ly, Points) and ly.metadata.get(CLICKS_KEY) == "liver")
    assert len(points.data) == 1
    assert np.abs(points.data[0] - np.asarray(cap)).max() <= 1  # where the click was, on the main grid
    assert tuple(viewer.dims.current_step[-3:])[0] == points.data[0][0]  # the main view went to its slice

    # the marker is mirrored into the side views (green), and drawn on the coronal slice through it
    mirrored = [ly for ly in tri.models["coronal"].layers if isinstance(ly, Points)]
    assert len(mirrored) == 1 and len(mirrored[0].data) == 1
    assert np.asarray(mirrored[0].face_color)[0][1] > np.asarray(mirrored[0].face_color)[0][0]
    qtbot.wait(50)
    shot = tri.qt_viewers["coronal"].screenshot(flash=False)[..., :3].astype(int)
    assert ((shot[..., 1] > 150) & (shot[..., 0] < 120) & (shot[..., 2] < 150)).sum() > 4

    # Shift+click on the sagittal view through the extra blob: an exclude click
    tri.set_cursor_point(tuple(v * s for v, s in zip((12, 54, 12), SPACING)))
    click_side_view(qtbot, tri, "sagittal", (12, 54, 12), shift=True)
    wait_idle(qtbot, widget)
    after_exclude = np.array(layer.data, copy=True)
    assert not after_exclude[10:14, 50:58, 8:16].any()
    assert (after_exclude[organ & (start == 1)] == 1).all()
    assert len(points.data) == 2 and len(mirrored[0].data) == 2
    assert np.asarray(points.face_color)[1][0] > np.asarray(points.face_color)[1][1]  # magenta
    tri.set_cursor_point(tuple(v * s for v, s in zip(cap, SPACING)))
    qtbot.wait(50)
    qt_window(viewer).grab().save(str(screenshots / "mask_clicks_triplanar.png"))

    layer.undo()  # one undo step per click, wherever it was made
    assert np.array_equal(layer.data, after_include)

    # Box on: a box dragged on the coronal view around the organ adds it to an empty layer in 3D
    from napari.layers import Shapes

    from napari_ctseg._napari.widgets._mask_prompts import BOXES_KEY

    mine = viewer.add_labels(np.zeros(SHAPE, np.uint8), name="tumour", scale=SPACING)
    widget.layer_combo.setCurrentText("tumour")
    qtbot.mouseClick(widget.clicks.box_button, Qt.MouseButton.LeftButton)
    assert widget.clicks.boxing
    qtbot.wait(50)
    tri.set_cursor_point(tuple(v * s for v, s in zip(CENTRE, SPACING)))
    cursor = tuple(viewer.dims.current_step[-3:])
    corners = [(CENTRE[0] - 9 + k, CENTRE[1], CENTRE[2] - 17 + 2 * k) for k in range(0, 19, 3)]
    drag_side_view(qtbot, tri, "coronal", corners)
    boxes = next(ly for ly in viewer.layers if isinstance(ly, Shapes) and ly.metadata.get(BOXES_KEY) == "tumour")
    assert len(boxes.data) == 1 and boxes.shape_type == ["rectangle"]
    assert np.ptp(np.asarray(boxes.data[0])[:, 1]) == 0  # drawn on the coronal slice
    assert tuple(viewer.dims.current_step[-3:]) == cursor  # the drag drew, it did not move the cursor
    wait_idle(qtbot, widget)
    got = np.asarray(mine.data) == 1
    assert dice(got, organ) > 0.85
    assert len(np.unique(np.nonzero(got)[1])) >= 0.8 * len(np.unique(np.nonzero(organ)[1]))  # coronal slices nobody drew
    mirrored = [ly for ly in tri.models["coronal"].layers if isinstance(ly, Shapes) and ly.metadata.get(BOXES_KEY)]
    assert len(mirrored) == 1 and len(mirrored[0].data) == 1  # the box shown where it was drawn
    qt_window(viewer).grab().save(str(screenshots / "mask_box_triplanar.png"))
    mine.undo()
    assert not np.asarray(mine.data).any()

    # Scribble on, Exclude: a stroke painted on the sagittal view across the extra blob removes it in 3D
    from napari_ctseg._napari.widgets._mask_prompts import SCRIBBLES_KEY

    widget.layer_combo.setCurrentText("liver")
    qtbot.mouseClick(widget.clicks.scribble_button, Qt.MouseButton.LeftButton)
    widget.clicks.exclude_radio.setChecked(True)
    assert widget.clicks.scribbling and not widget.clicks.boxing
    before = np.array(layer.data, copy=True)
    assert before[10:14, 50:58, 8:16].all()
    tri.set_cursor_point(tuple(v * s for v, s in zip((12, 54, 12), SPACING)))
    cursor = tuple(viewer.dims.current_step[-3:])
    qtbot.wait(50)
    drag_side_view(qtbot, tri, "sagittal", [(12, 51 + k, 12) for k in range(0, 7)])
    assert tuple(viewer.dims.current_step[-3:]) == cursor  # the stroke painted, it did not move the cursor
    wait_idle(qtbot, widget)
    scribbles = next(ly for ly in viewer.layers if ly.metadata.get(SCRIBBLES_KEY) == "liver")
    assert np.unique(np.nonzero(scribbles.data)[2]).tolist() == [12]  # painted on the sagittal slice x = 12
    after = np.asarray(layer.data)
    assert not after[10:14, 50:58, 8:16].any()  # removed, on slices of z and x nobody painted
    assert (after[organ] == before[organ]).all()
    layer.undo()  # the stroke, one step
    assert np.array_equal(layer.data, before)
