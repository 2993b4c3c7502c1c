"""The warm-up when a widget opens (napari_ctseg._napari._warm): napari's Labels imports loaded,
the live objects frozen out of the garbage collector's walks, once per process."""
import gc
import sys

from napari_ctseg._napari import _warm


def test_warm_up_freezes_the_live_objects_once(monkeypatch):
    monkeypatch.setattr(_warm, "_warm", False)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    _warm.warm_up()
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # the process's live objects, out of the collector's walks
    assert "skimage.color" in sys.modules  # napari's label colormap needs it: loaded now, not at the first layer
    [object() for _ in range(10)]
    _warm.warm_up()  # once per process
    assert gc.get_freeze_count() == frozen


def test_removing_a_layer_thaws_what_the_warm_up_froze(monkeypatch, make_napari_viewer):
    """A scan open at the warm-up and closed later must be collectable: the freeze ends when a
    layer is removed."""
    import numpy as np

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((4, 8, 8), np.float32))
    monkeypatch.setattr(_warm, "_warm", False)
    gc.unfreeze()
    _warm.warm_up(viewer)
    assert gc.get_freeze_count() > 1000
    viewer.layers.remove(layer)
    assert gc.get_freeze_count() == 0
