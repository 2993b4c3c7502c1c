"""Widgets take the model registry they are given: a registry of a test's own folders is all they
see and all they write to (napari itself builds them with ``ModelRegistry.default()``)."""
from pathlib import Path

from qtpy.QtCore import Qt

from napari_ctseg._napari.widgets.fine_tune import FineTuneWidget
from napari_ctseg._napari.widgets.models import ModelsWidget
from napari_ctseg._napari.widgets.segment import SegmentWidget
from napari_ctseg.models.registry import ModelRegistry


def test_widgets_use_the_registry_they_are_given(make_napari_viewer, qtbot, tiny_weights, tmp_path,
                                                 private_user_data):
    import shutil

    own = tmp_path / "own"
    shutil.copytree(Path(tiny_weights) / "liver", own / "liver")
    shutil.copytree(Path(tiny_weights) / "liver" / "t1", own / "liver" / "t2")
    reg = ModelRegistry([own], user_dir=tmp_path / "user")
    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer, registry=reg)
    models = ModelsWidget(viewer, registry=reg)
    tune = FineTuneWidget(viewer, registry=reg)
    # Only what this registry holds: one target, two versions (the tiny_weights fixture's
    # CTSEG_WEIGHTS_DIR has all three targets; the default registry would show them).
    assert list(segment.target_checks) == ["liver"]
    assert [tune.target_combo.itemText(i) for i in range(tune.target_combo.count())] == ["liver"]
    assert [(r["target"], r["version"]) for r in models.rows] == [("liver", "t1"), ("liver", "t2")]
    assert segment.version_combos["liver"].currentData() == "t2"
    qtbot.mouseClick(models.use_button("liver", "t1"), Qt.MouseButton.LeftButton)
    assert reg.active_version("liver") == "t1"
    assert (tmp_path / "user" / "active_models.json").is_file()
    assert not (private_user_data / "weights" / "active_models.json").exists()
    assert segment.version_combos["liver"].currentData() == "t1"
    assert ModelRegistry.default().targets() == ["lungs", "liver", "infection"]
