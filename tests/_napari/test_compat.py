"""The napari internals behind napari_ctseg._napari._compat still exist in this napari, and
widgets follow layer renames (the public event the compat module names)."""
import numpy as np
from napari.layers import Image, Labels
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from napari_ctseg._napari import _compat


def test_napari_is_in_the_tested_range_and_pyproject_says_so():
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    assert Version(version("napari")) in SpecifierSet(_compat.NAPARI_TESTED)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert f"napari{_compat.NAPARI_TESTED}" in [d.replace(" ", "") for d in pyproject["project"]["dependencies"]]


def test_internals_exist(make_napari_viewer):
    from napari.utils._proxies import PublicOnlyProxy
    from qtpy.QtWidgets import QMainWindow

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((4, 8, 8), np.uint8))
    image = viewer.add_image(np.zeros((4, 8, 8), np.float32))
    assert _compat.paint_hook_available(labels)
    assert _compat.is_image_layer(image) and not _compat.is_image_layer(labels)
    assert _compat.unwrap(PublicOnlyProxy(labels)) is labels
    assert isinstance(_compat.qt_window(viewer), QMainWindow)
    seen = []
    _compat.layer_renamed(viewer.layers).connect(lambda e: seen.append(e))
    labels.name = "renamed"
    assert seen


def test_renaming_a_layer_refreshes_the_widgets_lists(make_napari_viewer):
    from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget
    from napari_ctseg._napari.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="ct")
    labels = viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="mask")
    segment, tools = SegmentWidget(viewer), MaskToolsWidget(viewer)
    image.name = "chest"
    labels.name = "my liver"
    assert [segment.image_combo.itemText(i) for i in range(segment.image_combo.count())] == ["chest"]
    assert tools.layer_combo.findText("my liver") >= 0 and tools.layer_combo.findText("mask") < 0
    assert tools.image_combo.findText("chest") >= 0
    assert isinstance(image, Image) and isinstance(labels, Labels)


def test_ct_view_window_label_follows_a_rename(make_napari_viewer):
    from napari_ctseg._napari.widgets.ct_view import CTViewWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 8, 8), np.float32), name="ct")
    widget = CTViewWidget(viewer)
    viewer.layers.selection.active = image
    image.name = "renamed chest"
    assert "renamed chest" in widget.window_label.text()
