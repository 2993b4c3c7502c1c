"""The viewer's first Labels layer, made cheaper: ``warm_up`` runs once per process, when one of
the plugin's widgets opens.

napari builds a layer in the GUI thread. The first Labels layer of a session cost 0.54-0.71 s
there on the 2-core VM (512x512x119, Xvfb; ``benchmarks/layers_gui.py --cold``, 2026-12-03), the
later ones 0.10-0.15 s: the first one imports scikit-image's colour module and scipy.linalg (its
colormap and transforms), and a collection of the cyclic garbage collector's oldest generation,
which walks every object of the process (napari, Qt, the plugin: some 230 000), fell inside it
(0.1-0.2 s; the same pauses fall inside later layer adds and clicks, at random). ``warm_up``
builds one tiny Labels layer (never added to a viewer: only its imports matter) and then
freezes the objects alive at that moment out of the collector's walks (``gc.freeze``; they are
freed as usual when their references go, only a cycle among them would stay, so the first layer
removed from the viewer ends the freeze: a closed scan's layer sits in cycles): the first layer
then cost 0.17-0.23 s, and the longest stall while three layers went in fell from 604-722 ms to
191-236 ms (three runs each). The warm-up itself costs 0.1-0.7 s, when the widget opens (the
first napari layer model of the session, more when nothing had loaded napari's layers yet).
"""
from __future__ import annotations

import gc

import numpy as np

_warm = False


def warm_up(viewer=None) -> None:
    """Once per process: napari's Labels imports loaded, the live objects frozen out of the
    garbage collector's walks (see the module's docstring), until a layer is removed from
    ``viewer``: a scan open at the warm-up and closed later would otherwise never be freed (a
    layer's events hold it in cycles), so the collector walks them all again from then on."""
    global _warm
    if _warm:
        return
    _warm = True
    from napari.layers import Labels

    Labels(np.zeros((1, 1, 1), np.uint8))
    gc.freeze()  # no full collection first: it would cost 0.2 s to free the ~2 000 objects of garbage there are
    if viewer is not None:
        viewer.layers.events.removed.connect(thaw)


def thaw(event=None) -> None:
    """The objects frozen at the warm-up back under the collector's walks (a layer was removed:
    what it held may be garbage now)."""
    gc.unfreeze()
