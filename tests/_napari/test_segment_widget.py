"""Segment volume in a real napari viewer: layers, geometry, progress, cancel, device, bad weights."""
import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from napari.layers import Labels
from napari.utils.notifications import NotificationSeverity, notification_manager
from synthetic import make_hu_volume, write_nifti

from napari_ctseg._napari.widgets.segment import SegmentWidget




def _open(viewer, tmp_path, shape=(40, 36, 12)):
    path = write_nifti(tmp_path / "ct.nii.gz", make_hu_volume(shape), np.diag([-0.8, -0.9, 2.0, 1.0]))
    return viewer.open(path, plugin="napari-ctseg")[0]


def _run(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_segment_adds_labels_on_image_geometry(make_napari_viewer, qtbot, tmp_path, tiny_weights):
    viewer = make_napari_viewer()
    image = _open(viewer, tmp_path)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image_combo.currentText() == image.name
    assert widget.version_combos["liver"].currentData() == "t1"
    widget.device_combo.setCurrentIndex(1)  # CPU
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    assert widget.worker is not None and not widget.run_button.isEnabled()
    _run(qtbot, widget)
    labels = [ly for ly in viewer.layers if isinstance(ly, Labels)]
    assert [ly.name for ly in labels] == ["lungs", "liver", "infection"]
    for ly in labels:
        assert ly.data.shape == image.data.shape
        assert np.allclose(ly.scale, image.scale) and np.allclose(ly.translate, image.translate)
        assert ly.metadata["ctseg"]["affine"] == image.metadata["ctseg"]["affine"]
        assert ly.metadata["model_version"] == "t1"
    assert "mL" in widget.results_label.text() and "lung involved" in widget.results_label.text()
    assert widget.run_button.isEnabled() and widget.progress_bar.value() == widget.progress_bar.maximum()
    # Running again adds new layers; the first ones (maybe edited) stay.
    labels[1].data[0, 0, 0] = 1
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    _run(qtbot, widget)
    assert len([ly for ly in viewer.layers if isinstance(ly, Labels)]) == 6
    assert labels[1].data[0, 0, 0] == 1
    widget.copy_results()
    from qtpy.QtWidgets import QApplication
    assert "liver" in QApplication.clipboard().text()


def test_segmenting_runs_in_the_warm_worker_process_with_the_same_masks(make_napari_viewer, qtbot, tmp_path,
                                                                        tiny_weights):
    """The networks run in another process (the widget warms it when it is made); the layers
    hold what ``segment`` gives in this one."""
    import os

    from napari_ctseg._napari.widgets.segment import segment_worker, volume_from_layer
    from napari_ctseg.segmentation.inference import segment

    viewer = make_napari_viewer()
    image = _open(viewer, tmp_path)
    widget = SegmentWidget(viewer)
    qtbot.waitUntil(lambda: segment_worker().alive, timeout=10_000)
    widget.device_combo.setCurrentIndex(1)
    widget.start()
    _run(qtbot, widget)
    pid = segment_worker()._proc.pid
    assert pid != os.getpid()
    here = segment(volume_from_layer(image), ["lungs", "liver", "infection"], "cpu")
    for layer in (ly for ly in viewer.layers if isinstance(ly, Labels)):
        assert np.array_equal(layer.data, here.masks[layer.name])
    widget.start()  # a second run: the same process, still warm
    _run(qtbot, widget)
    assert segment_worker()._proc.pid == pid


def test_result_layers_are_added_one_per_event_loop_turn(make_napari_viewer, qtbot, tmp_path, tiny_weights):
    """napari builds a layer's visuals in the GUI thread, so the result layers arrive one per turn
    of the event loop (the window repaints between them), and the run ends with the last one."""
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer(show=True)
    _open(viewer, tmp_path)
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    turns = {"n": 0}
    ticker = QTimer()
    ticker.setInterval(0)
    ticker.timeout.connect(lambda: turns.__setitem__("n", turns["n"] + 1))
    seen = []
    viewer.layers.events.inserted.connect(
        lambda e: seen.append((e.value.name, turns["n"], widget.worker is None, widget.status.text())))
    ticker.start()
    widget.start()
    _run(qtbot, widget)
    ticker.stop()
    assert [name for name, *_ in seen] == ["lungs", "liver", "infection"]
    at = [n for _, n, *_ in seen]
    assert at[0] < at[1] < at[2]  # each in its own turn
    assert not any(done for _, _, done, _ in seen)  # the run is not over before its last layer
    assert all(not status.startswith("done") for *_, status in seen)
    assert widget.status.text().startswith("done") and widget.run_button.isEnabled()


def test_cancel_mid_run_leaves_no_layer(make_napari_viewer, qtbot, tmp_path, tiny_weights):
    viewer = make_napari_viewer()
    _open(viewer, tmp_path, shape=(40, 36, 300))
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    seen = []

    def first(report):
        seen.append(report)
        if len(seen) == 1:
            widget.cancel()

    widget.start()
    widget.worker.yielded.connect(first)
    _run(qtbot, widget)
    assert seen and seen[-1].done < seen[-1].total
    assert not [ly for ly in viewer.layers if isinstance(ly, Labels)]
    assert "cancelled" in widget.status.text()
    assert widget.run_button.isEnabled()


def test_cuda_choice_falls_back_to_cpu(make_napari_viewer, qtbot, tmp_path, tiny_weights, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    viewer = make_napari_viewer()
    _open(viewer, tmp_path)
    widget = SegmentWidget(viewer)
    assert "no GPU" in widget.device_combo.itemText(0)
    widget.device_combo.setCurrentIndex(2)  # CUDA
    for t in ("lungs", "infection"):
        widget.target_checks[t].setChecked(False)
    widget.start()
    _run(qtbot, widget)
    assert widget.result.device == "cpu"
    assert "CUDA is not available" in widget.status.text()
    assert [ly.name for ly in viewer.layers if isinstance(ly, Labels)] == ["liver"]


def test_corrupt_weights_refused_with_message(make_napari_viewer, qtbot, tmp_path, tiny_weights):
    path = tiny_weights / "liver" / "t1" / "model.pt"
    path.write_bytes(path.read_bytes()[:-20] + b"\0" * 20)
    viewer = make_napari_viewer()
    _open(viewer, tmp_path)
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    for t in ("lungs", "infection"):
        widget.target_checks[t].setChecked(False)
    start = len(notification_manager.records)
    widget.start()
    _run(qtbot, widget)
    errors = [n for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR]
    assert errors and "corrupt or was modified" in errors[-1].message
    assert not [ly for ly in viewer.layers if isinstance(ly, Labels)]


@pytest.fixture
def infection_everywhere(tmp_path, monkeypatch):
    """Tiny models as version t1, the infection one marking every pixel it may (so an empty
    result fails); the bundled weights are hidden."""
    from synthetic import write_tiny_weights

    root = tmp_path / "weights"
    write_tiny_weights(root, constant={"infection": 1})
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(root))
    monkeypatch.setattr("napari_ctseg.models.registry.bundled_weights_dir", lambda: tmp_path / "no_bundled")
    return root


def test_infection_uses_existing_lungs_layer(make_napari_viewer, qtbot, tmp_path, infection_everywhere):
    """Infection is searched inside the user's lungs layer, as it was when Segment was pressed
    (a copy: painting the layer during the run changes nothing)."""
    viewer = make_napari_viewer()
    image = _open(viewer, tmp_path)
    lungs = np.zeros(image.data.shape, np.uint8)
    lungs[3:8, 4:12, 16:25] = 1  # inside the square the model sees (the phantom's body crop)
    layer = viewer.add_labels(lungs.copy(), name="my lungs", scale=image.scale, metadata={"target": "lungs"})
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    widget.target_checks["lungs"].setChecked(False)
    widget.target_checks["liver"].setChecked(False)
    start = len(notification_manager.records)
    widget.start()
    layer.data[0:2] = 2  # painted after Segment was pressed, while it runs
    _run(qtbot, widget)
    assert "lungs" not in viewer.layers  # no lungs model ran
    inf = viewer.layers["infection"].data > 0
    # the card's steps: inside those lungs, less the slices that touch tissue above or below them
    from napari_ctseg.segmentation.postprocess import partial_volume_band

    box, band = partial_volume_band(lungs > 0, np.asarray(image.data), image.scale)
    expected = lungs > 0
    expected[box] &= ~band
    assert expected.any() and expected.sum() < (lungs > 0).sum()
    assert np.array_equal(inf, expected), (inf.sum(), expected.sum(), np.argwhere(inf ^ expected)[:5])
    # Those "lungs" lie on the phantom's soft tissue: the lung left unmarked is far too dense
    # for aerated lung, which the report says next to the figure, with one warning per run.
    text = widget.results_label.text().splitlines()
    at = next(i for i, line in enumerate(text) if line.startswith("lung involved by infection"))
    assert text[at + 1].startswith("  caution: diffuse increased lung density")
    cautions = [n for n in notification_manager.records[start:]
                if n.severity == NotificationSeverity.WARNING and "caution" in n.message]
    assert len(cautions) == 1 and "expiration" in cautions[0].message
    widget.copy_results()
    from qtpy.QtWidgets import QApplication
    assert "caution: diffuse increased lung density" in QApplication.clipboard().text()


def test_bundled_models_segment_the_sample(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ctseg", "sample_ct")
    image = viewer.layers[0]
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    widget.start()
    _run(qtbot, widget, timeout=120_000)
    lungs, liver = viewer.layers["lungs"].data, viewer.layers["liver"].data
    assert lungs.shape == liver.shape == image.data.shape
    assert np.count_nonzero(lungs == 1) > 0 and np.count_nonzero(lungs == 2) > 0
    assert np.count_nonzero(liver) > 0
    # Anatomy: the right lung is on the patient's right (low x in the display), the liver too.
    zr, yr, xr = np.argwhere(lungs == 1).mean(axis=0)
    zl, yl, xl = np.argwhere(lungs == 2).mean(axis=0)
    assert xr < xl
    assert np.argwhere(liver > 0).mean(axis=0)[2] < image.data.shape[2] / 2 + 5


def _rgba(hex_color):
    h = hex_color.lstrip("#")
    return np.array([int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0])


def test_colours_from_cards_legend_and_infection_above_lung_outlines(make_napari_viewer, qtbot, tmp_path,
                                                                     tiny_weights):
    from napari_ctseg.models.definition import colors
    from napari_ctseg.models.registry import get_card

    viewer = make_napari_viewer(show=True)
    image = _open(viewer, tmp_path, shape=(40, 60, 12))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    legend = widget.legend.text()
    for name, col in (("right lung", "#4f9ae0"), ("left lung", "#1f4e9c"), ("liver", "#c8782a"),
                      ("infection", "#ff1fd2")):
        assert name in legend and col in legend
    widget.device_combo.setCurrentIndex(1)
    widget.start()
    _run(qtbot, widget)
    layers = {ly.name: ly for ly in viewer.layers if isinstance(ly, Labels)}
    for target, layer in layers.items():
        for value, col in colors(get_card(target, "t1")).items():
            assert np.allclose(layer.colormap.map(value)[:3], _rgba(col)[:3], atol=0.01), (target, value)
    assert layers["lungs"].contour > 0 and layers["infection"].contour == 0
    names = [ly.name for ly in viewer.layers]
    assert names.index("infection") > names.index("lungs")  # drawn on top
    # Pixels: a lung outlined, infection filled inside it, the lung's inside not tinted.
    z = image.data.shape[0] // 2
    lungs = np.zeros(image.data.shape, np.uint8)
    lungs[:, 10:50, 1:11] = 1
    inf = np.zeros_like(lungs)
    inf[:, 20:40, 3:9] = 1
    layers["lungs"].data = lungs
    layers["infection"].data = inf
    layers["liver"].visible = False
    image.visible = False  # a black background: only the masks' colours remain
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float) / 255
    magenta = np.all(np.abs(shot - 0.75 * _rgba("#ff1fd2")[:3]) < 0.12, axis=-1)
    assert magenta.sum() > 50
    ys, xs = np.nonzero(magenta)
    between = shot[ys.min() - 3:ys.min() - 1, xs.min():xs.max()]  # lung inside, above the infection
    assert between.max() < 0.1  # not tinted: the lungs are an outline


def test_report_gives_infection_per_lung_and_slices(make_napari_viewer, qtbot, tmp_path, tiny_weights):
    viewer = make_napari_viewer()
    image = _open(viewer, tmp_path)
    lungs = np.zeros(image.data.shape, np.uint8)
    lungs[2:30, 5:30, 1:6] = 1
    lungs[2:30, 5:30, 6:11] = 2
    viewer.add_labels(lungs, name="my lungs", scale=image.scale, metadata={"target": "lungs"})
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    widget.target_checks["lungs"].setChecked(False)
    widget.target_checks["liver"].setChecked(False)
    widget.start()
    _run(qtbot, widget)
    inf = viewer.layers["infection"].data > 0
    voxel_ml = float(np.prod(image.scale)) / 1000
    per = widget.result.infection_by_lung
    for value, name in ((1, "right lung"), (2, "left lung")):
        k = int(np.count_nonzero(inf & (lungs == value)))
        assert per[name]["ml"] == pytest.approx(k * voxel_ml)
        assert per[name]["pct"] == pytest.approx(100 * k / np.count_nonzero(lungs == value))
        assert f"{name}: {k * voxel_ml:.1f} mL infected" in widget.results_label.text()
    zs = np.flatnonzero(inf.any(axis=(1, 2)))
    expected = (int(zs[0]), int(zs[-1]), zs.size) if zs.size else (0, 0, 0)
    assert widget.result.infection_slices == expected


def test_changed_slices_are_measured_from_when_segment_made_the_layer(make_napari_viewer, qtbot, tmp_path,
                                                                      tiny_weights, monkeypatch):
    """A slice painted with napari's brush before Mask tools ever saw the layer still counts as changed."""
    from napari_ctseg.editing import corrections
    from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    viewer = make_napari_viewer()
    image = _open(viewer, tmp_path)
    widget = SegmentWidget(viewer)
    widget.device_combo.setCurrentIndex(1)
    widget.target_checks["lungs"].setChecked(False)
    widget.target_checks["infection"].setChecked(False)
    widget.start()
    _run(qtbot, widget)
    layer = viewer.layers["liver"]
    before = layer.data.copy()
    layer.brush_size = 3
    layer.paint((7, 20, 20), 1)  # napari's brush, no Mask tools yet
    assert not np.array_equal(before[7], layer.data[7])
    tools = MaskToolsWidget(viewer)
    tools.layer_combo.setCurrentText("liver")
    assert tools.layer is layer
    assert tools.save_corrected() is not None
    (record,) = corrections.list_corrections("liver")
    assert record.changed_slices == [7]


def test_an_8bit_slice_is_segmented_through_the_8bit_path(make_napari_viewer, qtbot, tmp_path,
                                                          infection_everywhere):
    """A PNG/JPG export (2D, 8-bit, grey or RGB): infection runs on it and says what it assumed;
    lungs and liver say why they cannot (no HU)."""
    from PIL import Image as PILImage

    rgb = np.zeros((48, 40, 3), np.uint8)
    rgb[8:40, 6:34] = (120, 120, 120)
    PILImage.fromarray(rgb).save(tmp_path / "slice.png")
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.asarray(PILImage.open(tmp_path / "slice.png")), name="slice", rgb=True)
    widget = SegmentWidget(viewer)
    assert widget.image_combo.currentText() == "slice"
    widget.device_combo.setCurrentIndex(1)
    widget.start()
    _run(qtbot, widget)
    inf = viewer.layers["infection"]
    assert inf.data.shape == (48, 40) and inf.data.all()  # the constant model: everything
    assert "lungs" not in viewer.layers and "liver" not in viewer.layers
    status = widget.status.text()
    assert "-1024 + v/255" in status and "Hounsfield" in status, status
    assert "infection: 1920 pixels (100.0 % of the image" in widget.results_label.text()

    # only targets that need HU: refused with the reason, nothing added
    widget.target_checks["infection"].setChecked(False)
    widget.start()
    _run(qtbot, widget)
    assert "Hounsfield" in widget.status.text() and len(viewer.layers) == 2

    # a 2D layer that is not 8-bit
    viewer.add_image(np.full((20, 20), 900.0, np.float32), name="float slice")
    widget.image_combo.setCurrentText("float slice")
    widget.target_checks["infection"].setChecked(True)
    widget.start()
    assert widget.worker is None and "not an 8-bit export" in widget.status.text()
