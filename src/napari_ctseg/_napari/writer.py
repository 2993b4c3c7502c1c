"""napari writer hook: a Labels layer as NIfTI on its scan's exact geometry."""
from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info

from ..errors import CTSegError, MaskWriteError
from ..io import write_mask
from ._layers import geometry_from_metadata


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer to ``path`` (.nii/.nii.gz) on the source scan's geometry.

    The geometry comes from the layer's metadata, or else from the one open CT image whose
    shape, scale and translate the layer shares. Refusals are shown as a notification.
    """
    try:
        geometry = geometry_from_metadata(meta.get("metadata")) or _geometry_from_viewer(data, meta)
        written = write_mask(path, np.asarray(data), geometry)
    except CTSegError as exc:
        show_error(str(exc))
        return []
    show_info(f"saved {written.name} on the geometry of {geometry.source_path or 'the scan'}")
    return [str(written)]


def _geometry_from_viewer(data, meta):
    import napari

    from ._compat import is_image_layer
    from ._layers import geometry_from_metadata as from_meta

    viewer = napari.current_viewer()
    candidates = []
    if viewer is not None:
        for layer in viewer.layers:
            geometry = from_meta(layer.metadata)
            if geometry is None or not is_image_layer(layer):
                continue
            if tuple(layer.data.shape) == tuple(np.shape(data)) and np.allclose(
                layer.scale, meta.get("scale", layer.scale)
            ) and np.allclose(layer.translate, meta.get("translate", layer.translate)):
                candidates.append(geometry)
    if len(candidates) == 1:
        return candidates[0]
    name = meta.get("name", "layer")
    if not candidates:
        raise MaskWriteError(
            f"'{name}' ({'x'.join(map(str, np.shape(data)))}) matches no CT scan opened with "
            "napari-ctseg: make the mask from an opened scan (same shape, scale and translate)"
        )
    raise MaskWriteError(f"'{name}' matches several open scans; copy one scan's metadata to it first")
