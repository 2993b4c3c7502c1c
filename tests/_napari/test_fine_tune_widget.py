"""Fine-tune and Models widgets in a real viewer, and the whole journey of issue 6.

open the sample -> Segment volume -> edit (paint, fill between slices) -> Save corrected
mask -> Fine-tune a few steps -> the new version in the Models list -> segment again with
it -> roll back.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_ctseg.editing import corrections
from napari_ctseg._napari.widgets.fine_tune import FineTuneWidget
from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget
from napari_ctseg._napari.widgets.models import ModelsWidget
from napari_ctseg._napari.widgets.segment import SegmentWidget
from napari_ctseg.models import registry
from napari_ctseg.models.registry import active_version, list_versions, sha256_file, user_weights_dir

REPO = Path(__file__).resolve().parents[2]


def click(qtbot, button):
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def wait_idle(qtbot, widget, timeout=180_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def bundled_digests():
    root = registry.bundled_weights_dir()
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_correction(tmp_path, tiny_weights):
    """A synthetic scan and corrected liver mask, recorded in the corrections store."""
    from training.test_fine_tuning import display_z, write_corrected_case

    scan, mask = write_corrected_case(tmp_path / "scan", lesion_hu=40)
    corrections.record_correction(scan, mask, "liver", "t1", display_z(range(2, 10)), {"1": 100})
    return scan, mask


def test_cancel_stops_within_a_step_and_leaves_the_active_version(make_napari_viewer, qtbot, tiny_correction):
    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.target_combo.setCurrentText("liver")
    assert widget.corrections_list.count() == 1 and len(widget.selected_corrections()) == 1
    assert "8 slices changed" in widget.corrections_list.item(0).text()
    widget.epochs_spin.setValue(50)
    widget.steps_spin.setValue(20)
    steps = []
    widget.worker = None
    click(qtbot, widget.start_button)
    worker = widget.worker
    worker.yielded.connect(lambda r: steps.append(r) if r.kind == "step" else None)
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=60_000)
    click(qtbot, widget.cancel_button)
    n_at_cancel = len(steps)
    wait_idle(qtbot, widget)
    assert len(steps) <= n_at_cancel + 1  # within one step
    assert widget.card is None and "cancelled" in widget.status.text()
    assert active_version("liver") == "t1" and [c.version for c in list_versions("liver")] == ["t1"]
    folder = user_weights_dir() / "liver"
    assert not folder.exists() or not any(folder.iterdir())  # no partial run left
    assert widget.start_button.isEnabled()


@pytest.mark.parametrize("job, says", [
    ("synthetic:fine_tune_that_dies", "ended unexpectedly (exit code 3)"),
    ("synthetic:fine_tune_out_of_memory", "MemoryError: cannot allocate 12.5 GiB"),
])
def test_a_crash_in_training_leaves_napari_running(make_napari_viewer, qtbot, tiny_correction, job, says):
    """The training's process dies (or runs out of memory): napari goes on, the widget says so
    in one line, and Start works again."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer = make_napari_viewer()
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.target_combo.setCurrentText("liver")
    widget.job_name = job  # resolved by name in the child, like the real one
    start = len(notification_manager.records)
    for attempt in range(2):
        click(qtbot, widget.start_button)
        assert widget.worker is not None and not widget.start_button.isEnabled()
        wait_idle(qtbot, widget, timeout=60_000)
        status = widget.status.text()
        assert status.startswith("failed: ") and says in status and "\n" not in status, status
        assert "the active version is unchanged" in status
        assert widget.start_button.isEnabled() and not widget.cancel_button.isEnabled()
        assert widget.card is None and active_version("liver") == "t1"
    errors = [n for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR]
    assert len(errors) == 2 and says in errors[-1].message and "\n" not in errors[-1].message
    # napari itself goes on: it takes a new layer and draws it
    layer = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="after the crash")
    assert viewer.layers[-1] is layer
    assert viewer.screenshot(canvas_only=True).shape[-1] == 4


def test_models_widget_switches_and_removes(make_napari_viewer, qtbot, tiny_correction):
    viewer = make_napari_viewer()
    tune = FineTuneWidget(viewer)
    models = ModelsWidget(viewer)
    segment = SegmentWidget(viewer)
    tune.target_combo.setCurrentText("liver")
    tune.epochs_spin.setValue(1)
    tune.steps_spin.setValue(2)
    tune.lr_spin.setValue(0.0)  # cannot improve: kept as a candidate
    click(qtbot, tune.start_button)
    wait_idle(qtbot, tune)
    assert tune.card is not None and tune.card.version == "t1-ft1"
    assert "candidate" in tune.status.text() and "not better" in tune.status.text()
    # the Models list and Segment volume learnt about it at once
    row = models.rows[models.row_of("liver", "t1-ft1")]
    assert row["source"] == "fine-tuned" and not row["active"] and row["status"] == "candidate"
    assert segment.version_combos["liver"].findData("t1-ft1") >= 0
    assert segment.version_combos["liver"].currentData() == "t1"
    click(qtbot, models.use_button("liver", "t1-ft1"))
    assert active_version("liver") == "t1-ft1"
    assert segment.version_combos["liver"].currentData() == "t1-ft1"
    assert models.rows[models.row_of("liver", "t1-ft1")]["active"]
    models.table.selectRow(models.row_of("liver", "t1"))
    models.remove_selected(confirm=False)  # not a fine-tuned version: refused
    assert [c.version for c in list_versions("liver")] == ["t1", "t1-ft1"]
    models.table.selectRow(models.row_of("liver", "t1-ft1"))
    models.remove_selected(confirm=False)
    assert [c.version for c in list_versions("liver")] == ["t1"] and active_version("liver") == "t1"
    assert segment.version_combos["liver"].currentData() == "t1"


def _paint_disc(layer, z, centre, radius, label=1):
    yy, xx = np.nonzero(np.ones(layer.data.shape[1:], bool))
    keep = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    layer.data_setitem((np.full(keep.sum(), z), yy[keep], xx[keep]), label)


def test_whole_journey_in_a_real_viewer(make_napari_viewer, qtbot, tmp_path):
    digests = bundled_digests()
    base = active_version("liver")  # the bundled default
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-ctseg", "sample_ct")
    image = viewer.layers[0]

    # 1. Segment volume: liver only, on the CPU
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment volume")
    for t, check in segment.target_checks.items():
        check.setChecked(t == "liver")
    segment.device_combo.setCurrentIndex(1)
    click(qtbot, segment.run_button)
    wait_idle(qtbot, segment)
    liver = viewer.layers["liver"]
    assert liver.metadata["model_version"] == base and np.count_nonzero(liver.data) > 0

    # 2. Edit: say the model got slices z0+1..z1-1 wrong: wipe them, paint an extra region on
    #    z0 and z1 through the layer's API, and fill between slices from z0 and z1
    tools = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(tools, name="Mask tools")
    viewer.layers.selection.active = liver
    assert tools.layer is liver
    z = np.nonzero(liver.data.reshape(liver.data.shape[0], -1).any(axis=1))[0]
    z0, z1 = int(z[len(z) // 2]) - 3, int(z[len(z) // 2]) + 3
    inner = np.argwhere(liver.data[z0 + 1:z1] > 0)
    liver.data_setitem((inner[:, 0] + z0 + 1, inner[:, 1], inner[:, 2]), 0)
    ys, xs = np.nonzero(liver.data[z0])
    centre = (int(ys.mean()), int(xs.max()) + 4)  # a bulge beside the liver the model found
    _paint_disc(liver, z0, centre, 5)
    _paint_disc(liver, z1, centre, 5)
    before = liver.data.copy()
    click(qtbot, tools.preview_button)
    click(qtbot, tools.apply_button)
    filled = liver.data != before
    assert set(np.nonzero(filled.reshape(filled.shape[0], -1).any(axis=1))[0]) == set(range(z0 + 1, z1))

    # 3. Save corrected mask (into a temporary folder) -> the corrections store
    tools.folder_edit.setText(str(tmp_path))
    saved = tools.save_corrected()
    assert saved is not None and saved.parent == tmp_path
    (record,) = corrections.list_corrections("liver")
    assert set(range(z0, z1 + 1)) <= set(record.changed_slices) and record.model_version == base

    # 4. Fine-tune a few steps
    tune = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(tune, name="Fine-tune")
    models = ModelsWidget(viewer)
    viewer.window.add_dock_widget(models, name="Models")
    tune.target_combo.setCurrentText("liver")
    assert tune.base_combo.currentData() == base and len(tune.selected_corrections()) == 1
    tune.epochs_spin.setValue(2)
    tune.steps_spin.setValue(2)
    tune.device_combo.setCurrentIndex(1)
    click(qtbot, tune.start_button)
    wait_idle(qtbot, tune)
    card = tune.card
    assert card is not None and card.version == f"{base}-ft1", tune.status.text()
    assert tune.plot.epochs and len(tune.plot.step_loss) == 4

    # 5. The new version is in the Models list (and Segment volume's choice)
    row = models.rows[models.row_of("liver", f"{base}-ft1")]
    assert row["source"] == "fine-tuned"
    assert row["active"] == bool(card.extra["fine_tune"]["promoted"])
    if not row["active"]:
        click(qtbot, models.use_button("liver", f"{base}-ft1"))
    assert active_version("liver") == f"{base}-ft1"

    # 6. Segment again with it
    assert segment.version_combos["liver"].currentData() == f"{base}-ft1"
    click(qtbot, segment.run_button)
    wait_idle(qtbot, segment)
    again = viewer.layers[-1]
    assert again is not liver and again.metadata["model_version"] == f"{base}-ft1"

    # 7. Roll back in one click
    click(qtbot, models.use_button("liver", base))
    assert active_version("liver") == base
    assert segment.version_combos["liver"].currentData() == base
    assert bundled_digests() == digests  # the bundled weights were never touched


def _colour_pixels(image, colour, tol=40) -> int:
    """How many pixels of a QImage are within ``tol`` of ``colour`` (a QColor)."""
    from qtpy.QtGui import QImage

    img = image.convertToFormat(QImage.Format.Format_RGB32)
    ptr = img.constBits()
    ptr.setsize(img.sizeInBytes())
    arr = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)[:, :img.width(), :3]
    want = np.array([colour.blue(), colour.green(), colour.red()])  # BGRA in memory
    return int((np.abs(arr.astype(int) - want).max(axis=2) <= tol).sum())


def test_screenshot_fine_tune_mid_run_with_live_plot(make_napari_viewer, qtbot, tmp_path, screenshots):
    """fine_tune.png (in $CTSEG_SCREENSHOTS, else a temporary folder): the sample, its corrected liver, Fine-tune mid-run
    with the live plot, and the Models list; the plot's curves are checked on its pixels."""
    from napari_ctseg.segmentation.inference import segment
    from napari_ctseg.io import read_scan, write_mask
    from napari_ctseg._napari.widgets.fine_tune import TrainingPlot

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    viewer.open_sample("napari-ctseg", "sample_ct")
    image = viewer.layers[0]
    volume = read_scan(image.metadata["ctseg"]["source_path"])
    liver = segment(volume, ["liver"], "cpu").masks["liver"]
    z = np.nonzero(liver.reshape(liver.shape[0], -1).any(axis=1))[0]
    changed = [int(v) for v in z[::2]]
    corrected = liver.copy()
    for v in changed:  # the user's edit: one pixel row more along the liver's edge
        corrected[v] |= np.roll(liver[v], 1, axis=1)
    path = write_mask(tmp_path / "sample_liver_corrected.nii.gz", corrected, volume.geometry)
    corrections.record_correction(volume.geometry.source_path, path, "liver", active_version("liver"), changed, {"1": 1})
    layer = viewer.add_labels(corrected, name="liver (corrected)", scale=image.scale,
                              translate=image.translate, opacity=0.5)
    viewer.dims.set_point(0, layer.data_to_world((int(np.median(z)), 0, 0))[0])
    _, models = viewer.window.add_plugin_dock_widget("napari-ctseg", "Models")
    _, tune = viewer.window.add_plugin_dock_widget("napari-ctseg", "Fine-tune")
    tune.target_combo.setCurrentText("liver")
    tune.epochs_spin.setValue(12)
    tune.steps_spin.setValue(3)
    tune.device_combo.setCurrentIndex(1)
    epochs = []
    click(qtbot, tune.start_button)
    tune.worker.yielded.connect(lambda r: epochs.append(r) if r.kind == "epoch" else None)
    qtbot.waitUntil(lambda: len(epochs) >= 4, timeout=300_000)  # a wait, not a speed check
    viewer.reset_view()
    qtbot.wait(200)
    viewer.window._qt_window.grab().save(str(screenshots / "fine_tune.png"))
    plot = tune.plot.grab().toImage()
    for key in ("loss", "corrections", "validation"):
        assert _colour_pixels(plot, TrainingPlot.COLORS[key], tol=30) > 30, key
    assert "left" in tune.eta_label.text()
    click(qtbot, tune.cancel_button)
    wait_idle(qtbot, tune)
    assert "cancelled" in tune.status.text()
