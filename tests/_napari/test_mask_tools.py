"""Mask tools in a real napari viewer: each tool, napari's undo, HU-limited painting, saving.

The scan is the synthetic phantom of ``synthetic.make_hu_volume`` written as NIfTI with
an affine of (-0.8, -0.9, 2.0) mm: the display grid (z, y, x) is (12, 36, 40) at
(2.0, 0.9, 0.8) mm. Air is -1000 HU, the body 40 HU, the two lungs -850 HU.
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QMessageBox
from synthetic import make_hu_volume, write_nifti

from napari_ctseg.editing import corrections

from napari_ctseg.editing import tools as editing
from napari_ctseg._napari.widgets.mask_tools import PREVIEW_KEY, MaskToolsWidget

AFFINE = np.diag([-0.8, -0.9, 2.0, 1.0])
SPACING = (2.0, 0.9, 0.8)
REPO = Path(__file__).resolve().parents[2]
LUNG = (-1024.0, -200.0)


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    """The corrections store in a temporary XDG_DATA_HOME."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "napari-ctseg" / "corrections"


def open_scan(viewer, tmp_path):
    path = write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((40, 36, 12)), AFFINE)
    image = viewer.open(path, plugin="napari-ctseg")[0]
    assert image.data.shape == (12, 36, 40)
    return image, path


def starting_mask(shape):
    """Label 1: a block with a hole, a notch and an island; label 2 elsewhere."""
    mask = np.zeros(shape, np.uint8)
    mask[3:9, 8:28, 6:30] = 1
    mask[5, 15:18, 15:18] = 0        # a hole
    mask[4:8, 8:10, 12:16] = 0       # a notch from the side
    mask[0, 2:4, 2:4] = 1            # an island
    mask[10:12, 30:34, 30:38] = 2    # another label
    return mask


def add_mask(viewer, image, mask=None, target="liver", version="v1"):
    mask = starting_mask(image.data.shape) if mask is None else mask
    meta = {**image.metadata, "target": target, "model_version": version}
    return viewer.add_labels(mask, name=target, scale=image.scale, translate=image.translate, metadata=meta)


@pytest.fixture
def setup(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, path = open_scan(viewer, tmp_path)
    layer = add_mask(viewer, image)
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, image, layer, widget, path


def click(qtbot, button):
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def save(qtbot, widget):
    """Press Save corrected mask and wait for its worker thread."""
    click(qtbot, widget.save_button)
    qtbot.waitUntil(lambda: widget._save_worker is None, timeout=30_000)


# --- tools and undo ----------------------------------------------------------------------
def test_widget_follows_the_labels_layer_and_label(setup):
    viewer, image, layer, widget, path = setup
    assert widget.layer is layer and widget.layer_combo.currentText() == "liver"
    assert widget.image_combo.currentText() == image.name
    assert widget.spacing() == pytest.approx(SPACING)
    layer.selected_label = 2
    assert widget.label == 2
    widget.label_spin.setValue(1)
    assert layer.selected_label == 1
    assert widget.folder_edit.text() == str(path.parent.resolve())
    assert widget.name_edit.text() == "ct_liver_corrected.nii.gz"


def test_each_tool_changes_the_layer_and_undo_restores_it(setup, qtbot):
    viewer, image, layer, widget, path = setup
    widget.keep_spin.setValue(1)
    widget.radius_spin.setValue(1.0)
    widget.margin_spin.setValue(2.0)
    steps = [
        (widget.islands_button, lambda m: editing.remove_islands(m, 1, keep=1)),
        (widget.holes_button, lambda m: editing.fill_holes(m, 1, mode="slice")),
        (widget.smooth_button, lambda m: editing.smooth(m, 1, 1.0, SPACING, "close")),
        (widget.grow_button, lambda m: editing.grow(m, 1, 2.0, SPACING)),
        (widget.shrink_button, lambda m: editing.shrink(m, 1, 2.0, SPACING)),
    ]
    states = [layer.data.copy()]
    for button, expected in steps:
        before = layer.data.copy()
        want = expected(before).apply(before.copy())
        click(qtbot, button)
        assert not np.array_equal(layer.data, before), button.text()
        assert np.array_equal(layer.data, want), button.text()
        assert "Ctrl+Z" in widget.status.text()
        states.append(layer.data.copy())
    # one undo step per tool, each restoring the exact previous array; redo replays
    for state in reversed(states[:-1]):
        layer.undo()
        assert np.array_equal(layer.data, state)
    layer.redo()
    assert np.array_equal(layer.data, states[1])


def test_smooth_methods_and_hole_modes_from_the_controls(setup, qtbot):
    viewer, image, layer, widget, path = setup
    for method in ("open", "median"):
        widget.smooth_combo.setCurrentText(method)
        before = layer.data.copy()
        want = editing.smooth(before, 1, widget.radius_spin.value(), SPACING, method).apply(before.copy())
        click(qtbot, widget.smooth_button)
        assert np.array_equal(layer.data, want)
        layer.undo()
        assert np.array_equal(layer.data, before)
    widget.holes_combo.setCurrentIndex(1)  # in 3D: the block's hole is closed in 3D
    before = layer.data.copy()
    click(qtbot, widget.holes_button)
    assert layer.data[5, 16, 16] == 1
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_fill_between_slices_preview_apply_discard(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, _ = open_scan(viewer, tmp_path)
    mask = np.zeros(image.data.shape, np.uint8)
    yy, xx = np.ogrid[:36, :40]
    mask[2][(yy - 18) ** 2 + (xx - 20) ** 2 <= 25] = 1
    mask[9][(yy - 18) ** 2 + (xx - 20) ** 2 <= 100] = 1
    layer = add_mask(viewer, image, mask)
    widget = MaskToolsWidget(viewer)
    before = layer.data.copy()
    click(qtbot, widget.preview_button)
    preview = widget.preview_layer
    assert preview is not None and preview in viewer.layers and preview.metadata[PREVIEW_KEY]
    assert np.array_equal(layer.data, before)  # a preview changes nothing
    assert viewer.layers.selection.active is layer and widget.layer is layer
    # the preview sits on the filled slices, in world coordinates
    want = editing.interpolate_between_slices(before, 1, spacing=SPACING).apply(before.copy())
    filled = np.argwhere(want != before)
    world = preview.data_to_world(np.argwhere(preview.data > 0)[0])
    assert np.allclose(layer.world_to_data(world), filled[0])
    assert (preview.data > 0).sum() == len(filled)
    click(qtbot, widget.discard_button)
    assert widget.preview_layer is None and preview not in viewer.layers
    assert np.array_equal(layer.data, before)

    widget.preview_fill()
    click(qtbot, widget.apply_button)
    assert np.array_equal(layer.data, want)
    assert all(layer.data[k].any() for k in range(2, 10))
    assert not any(ly.metadata.get(PREVIEW_KEY) for ly in viewer.layers)
    layer.undo()
    assert np.array_equal(layer.data, before)


def test_tools_with_hu_limit_change_only_voxels_in_range(setup, qtbot):
    viewer, image, layer, widget, path = setup
    widget.hu_preset_combo.setCurrentIndex(widget.hu_preset_combo.findData("lung"))
    assert (widget.hu_low_spin.value(), widget.hu_high_spin.value()) == LUNG
    widget.hu_check.setChecked(True)
    before = layer.data.copy()
    widget.margin_spin.setValue(4.0)
    click(qtbot, widget.grow_button)
    changed = layer.data != before
    assert changed.any()
    hu = np.asarray(image.data)
    assert (hu[changed] <= -200).all()
    unlimited = editing.grow(before, 1, 4.0, SPACING)
    assert unlimited.n_changed(before) > changed.sum()
    layer.undo()
    assert np.array_equal(layer.data, before)


# --- napari's own painting under the HU limit -------------------------------------------------
def lung_edge_point(hu):
    """A (z, y, x) voxel in the lung with body tissue within 3 voxels in-plane."""
    z = 6
    lung = (hu[z] > -900) & (hu[z] < -700)  # the lungs are -850 HU, the air -1000
    for y, x in np.argwhere(lung):
        patch = hu[z, max(y - 3, 0):y + 4, max(x - 3, 0):x + 4]
        if (patch > -200).sum() > 10 and (patch < -700).sum() > 10:
            return z, int(y), int(x)
    raise AssertionError("no lung edge in the phantom")


def test_painting_is_limited_to_the_hu_range(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, _ = open_scan(viewer, tmp_path)
    layer = add_mask(viewer, image, np.zeros(image.data.shape, np.uint8))
    widget = MaskToolsWidget(viewer)
    hu = np.asarray(image.data)
    z, y, x = lung_edge_point(hu)
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    layer.brush_size = 7
    layer.mode = "paint"

    # without the limit the brush paints lung and body alike
    layer.paint((z, y, x), 1)
    painted = layer.data > 0
    assert (hu[painted] > -200).any() and (hu[painted] < -700).any()
    layer.undo()
    assert not layer.data.any()

    widget.set_hu_limit(*LUNG)
    layer.paint((z, y, x), 1)
    limited = layer.data > 0
    assert limited.any() and (hu[limited] <= -200).all()
    assert np.array_equal(limited, painted & (hu <= -200))
    layer.undo()  # one step, exact
    assert not layer.data.any()

    # the fill bucket and data_setitem (other tools) obey too; the eraser as well
    layer.fill((z, y, x), 3)  # the slice's whole background region: only its lung and air voxels
    expected = np.zeros(hu.shape, bool)
    expected[z] = hu[z] <= -200
    assert np.array_equal(layer.data == 3, expected)
    layer.undo()
    assert not layer.data.any()
    idx = (np.array([z, z]), np.array([y, 0]), np.array([x, 0]))
    layer.data_setitem(idx, 1)
    assert layer.data[z, y, x] == 1 and (layer.data[z, 0, 0] == 0) == (hu[z, 0, 0] > -200 or hu[z, 0, 0] < -1024)
    layer.undo()

    widget.hu_check.setChecked(False)
    layer.paint((z, y, x), 1)
    assert np.array_equal(layer.data > 0, painted)


def test_hu_limit_works_through_the_plugin_menu(make_napari_viewer, qtbot, tmp_path):
    """The manifest's widget, built by napari behind its public-only proxy."""
    viewer = make_napari_viewer()
    image, _ = open_scan(viewer, tmp_path)
    layer = add_mask(viewer, image, np.zeros(image.data.shape, np.uint8))
    dock, widget = viewer.window.add_plugin_dock_widget("napari-ctseg", "Mask tools")
    assert isinstance(widget, MaskToolsWidget)
    hu = np.asarray(image.data)
    z, y, x = lung_edge_point(hu)
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    layer.brush_size = 7
    widget.set_hu_limit(*LUNG)
    layer.paint((z, y, x), 1)
    assert layer.data.any() and (hu[layer.data > 0] <= -200).all()
    n = int(layer.data.sum())
    qtbot.waitUntil(lambda: f"({n:,} voxels)" in widget.volume_label.text(), timeout=2000)
    # fill between slices through the proxy: preview, apply, undo
    layer.data_setitem(tuple(np.array(v) for v in zip((z - 4, y, x))), 1)
    widget.preview_fill()
    assert widget.preview_layer is not None and len(viewer.layers) == 3
    widget.apply_fill()
    assert len(viewer.layers) == 2 and all(layer.data[k].any() for k in range(z - 4, z + 1))
    layer.undo()
    qtbot.waitUntil(lambda: f"({n + 1:,} voxels)" in widget.volume_label.text(), timeout=2000)


# --- live volume -------------------------------------------------------------------------
def test_volume_updates_on_paint_and_undo(setup, qtbot):
    viewer, image, layer, widget, path = setup
    voxel_ml = np.prod(SPACING) / 1000
    n = int((layer.data == 1).sum())
    assert widget.volume_ml() == pytest.approx(n * voxel_ml)
    assert f"{n * voxel_ml:,.2f} mL" in widget.volume_label.text()
    layer.brush_size = 5
    viewer.dims.set_point(0, layer.data_to_world((1, 0, 0))[0])
    layer.paint((1, 20, 20), 1)
    n2 = int((layer.data == 1).sum())
    assert n2 > n
    qtbot.waitUntil(lambda: f"{n2 * voxel_ml:,.2f} mL" in widget.volume_label.text(), timeout=2000)
    layer.undo()
    qtbot.waitUntil(lambda: f"{n * voxel_ml:,.2f} mL" in widget.volume_label.text(), timeout=2000)
    click(qtbot, widget.grow_button)
    qtbot.waitUntil(lambda: widget.volume_ml() == pytest.approx((layer.data == 1).sum() * voxel_ml),
                    timeout=2000)
    widget.label_spin.setValue(2)
    assert widget.volume_ml() == pytest.approx((layer.data == 2).sum() * voxel_ml)
    assert widget.volume_label.text().startswith("Label 2:")


# --- saving ------------------------------------------------------------------------------
def test_save_round_trip_and_corrections_record(setup, qtbot, store):
    viewer, image, layer, widget, path = setup
    scan_bytes = path.read_bytes()
    layer.brush_size = 3
    viewer.dims.set_point(0, layer.data_to_world((1, 0, 0))[0])
    layer.paint((1, 20, 20), 1)
    click(qtbot, widget.grow_button)  # touches slices around the label too
    edited = layer.data.copy()
    save(qtbot, widget)
    out = path.parent / "ct_liver_corrected.nii.gz"
    assert out.is_file()
    img = nib.load(out)
    scan = nib.load(path)
    assert np.allclose(img.affine, scan.affine) and img.shape == scan.shape
    assert img.header.get_data_dtype() == np.uint8
    from napari_ctseg._napari._layers import geometry_from_metadata

    geometry = geometry_from_metadata(image.metadata)
    assert np.array_equal(np.asarray(img.dataobj), geometry.to_source(edited))
    # reading it back with napari-ctseg lands on the display grid exactly
    from napari_ctseg.io import read_nifti

    assert np.array_equal(read_nifti(out).hu, edited)
    assert path.read_bytes() == scan_bytes

    (record,) = corrections.list_corrections("liver")
    assert record.scan_path == str(path.resolve()) and record.mask_path == str(out.resolve())
    assert record.model_version == "v1" and record.target == "liver"
    first = starting_mask(edited.shape)
    assert record.changed_slices == [z for z in range(edited.shape[0]) if not np.array_equal(first[z], edited[z])]
    assert 1 in record.changed_slices and record.created
    assert record.label_voxels == {"1": int((edited == 1).sum()), "2": int((edited == 2).sum())}
    assert Path(record.manifest_path).parent == store


def test_save_runs_in_a_worker_on_the_mask_as_it_was_when_pressed(setup, qtbot):
    viewer, image, layer, widget, path = setup
    layer.data_setitem((np.array([2]), np.array([3]), np.array([4])), 2)
    pressed = layer.data.copy()
    click(qtbot, widget.save_button)
    assert widget._save_worker is not None and not widget.save_button.isEnabled()
    layer.data_setitem((np.array([6]), np.array([6]), np.array([6])), 2)  # painting on meanwhile
    qtbot.waitUntil(lambda: widget._save_worker is None, timeout=30_000)
    assert widget.save_button.isEnabled() and "Saved" in widget.status.text()
    from napari_ctseg.io import read_nifti

    assert np.array_equal(read_nifti(path.parent / "ct_liver_corrected.nii.gz").hu, pressed)
    (record,) = corrections.list_corrections("liver")
    assert record.changed_slices == [2]


def test_save_never_overwrites_without_asking(setup, qtbot, monkeypatch):
    viewer, image, layer, widget, path = setup
    scan_bytes = path.read_bytes()
    out = widget.save_corrected()
    assert out is not None and out.is_file()
    first_bytes = out.read_bytes()
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), 1)  # a new edit

    asked = []

    def answer(reply):
        def question(*args, **kwargs):
            asked.append(args[2] if len(args) > 2 else "")
            return reply
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    save(qtbot, widget)
    assert len(asked) == 1 and out.name in asked[0]
    assert out.read_bytes() == first_bytes and "Not saved" in widget.status.text()
    assert widget.save_corrected(overwrite=False) is None and out.read_bytes() == first_bytes

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    save(qtbot, widget)
    assert len(asked) == 2 and out.read_bytes() != first_bytes
    assert np.asarray(nib.load(out).dataobj).max() == 2
    assert len(corrections.list_corrections()) == 1  # the same file: one record, replaced

    # the scan itself: refused even when asked to overwrite
    widget.name_edit.setText(path.name)
    assert widget.save_corrected(overwrite=True) is None
    assert path.read_bytes() == scan_bytes
    assert "scan" in widget.status.text()
    # a name without suffix gets .nii.gz
    widget.name_edit.setText("mine")
    assert widget.save_corrected() == path.parent / "mine.nii.gz"


def test_saving_a_new_labels_layer_uses_the_image_geometry(make_napari_viewer, tmp_path):
    """A layer made with napari's New labels (no metadata) saves on the chosen CT's geometry."""
    viewer = make_napari_viewer()
    image, path = open_scan(viewer, tmp_path)
    layer = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="Labels",
                              scale=image.scale, translate=image.translate)
    widget = MaskToolsWidget(viewer)
    assert widget.layer is layer and widget.name_edit.text() == "ct_Labels_corrected.nii.gz"
    layer.data_setitem((np.array([4]), np.array([5]), np.array([6])), 1)
    out = widget.save_corrected()
    assert np.allclose(nib.load(out).affine, AFFINE)
    (record,) = corrections.list_corrections()
    assert record.changed_slices == [4] and record.model_version == ""


# --- lifecycle ---------------------------------------------------------------------------
def test_closing_removes_hooks_and_preview(setup, qtbot):
    viewer, image, layer, widget, path = setup
    assert "_apply_mask_to_data" in vars(layer)
    widget.preview_fill()  # nothing to fill here: no preview
    widget.close_tools()
    assert not {"_apply_mask_to_data", "data_setitem", "undo", "redo"} & set(vars(layer))
    assert not any(isinstance(ly, Labels) and ly.metadata.get(PREVIEW_KEY) for ly in viewer.layers)


def test_widget_is_released(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    image, _ = open_scan(viewer, tmp_path)
    layer = add_mask(viewer, image)
    widget = MaskToolsWidget(viewer)
    widget.set_hu_limit(*LUNG)
    ref = weakref.ref(widget)
    del widget
    gc.collect()
    assert ref() is None
    layer.paint((5, 20, 20), 1)  # no callback into a dead widget; the limit is gone with it
    layer.undo()
    viewer.layers.selection.active = layer


# --- screenshot --------------------------------------------------------------------------
def test_screenshot_of_the_docked_widget(make_napari_viewer, qtbot, screenshots):
    """A PNG for people (in $CTSEG_SCREENSHOTS, else a temporary folder): the sample CT with a mask and the widget."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    viewer.open_sample("napari-ctseg", "sample_ct")
    image = viewer.layers[0]
    hu = np.asarray(image.data)
    from scipy import ndimage

    lungs = ndimage.binary_opening(hu < -400, iterations=2)
    pieces, _ = ndimage.label(lungs)
    # drop the air around the body: the pieces that touch the volume's sides
    outside = np.unique(np.concatenate([pieces[:, 0].ravel(), pieces[:, -1].ravel(),
                                        pieces[:, :, 0].ravel(), pieces[:, :, -1].ravel()]))
    mask = (~np.isin(pieces, outside) & lungs).astype(np.uint8)
    layer = viewer.add_labels(mask, name="lungs", scale=image.scale, translate=image.translate,
                              metadata={**image.metadata, "target": "lungs", "model_version": "v1"},
                              opacity=0.6)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-ctseg", "Mask tools")
    z = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
    viewer.dims.set_point(0, layer.data_to_world((z, 0, 0))[0])
    widget.hu_preset_combo.setCurrentIndex(widget.hu_preset_combo.findData("lung"))
    widget.hu_check.setChecked(True)
    qtbot.wait(50)
    viewer.reset_view()
    qtbot.wait(100)
    viewer.window._qt_window.grab().save(str(screenshots / "mask_tools.png"))
    assert "mL" in widget.volume_label.text()
