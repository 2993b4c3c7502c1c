"""Turn core objects into napari layer data, and find the geometry behind a layer."""
from __future__ import annotations

from typing import Any

from ..volume import DEFAULT_WINDOW, METADATA_KEY, WINDOW_PRESETS, CTVolume, Geometry


def image_layer_data(volume: CTVolume) -> tuple[Any, dict, str]:
    """LayerData for a CT: HU array, scale = spacing (mm), a CT window, geometry metadata."""
    meta = {METADATA_KEY: volume.geometry.to_metadata()}
    if volume.series is not None:
        meta[METADATA_KEY]["series"] = volume.series.label()
        meta[METADATA_KEY]["other_series"] = [s.label() for s in volume.other_series]
    return (
        volume.hu,
        {
            "axis_labels": ("z", "y", "x"),
            "name": volume.name,
            "scale": volume.spacing,
            "translate": volume.geometry.origin,
            "colormap": "gray",
            "contrast_limits": WINDOW_PRESETS[DEFAULT_WINDOW].limits,
            "metadata": meta,
        },
        "image",
    )


def geometry_from_metadata(metadata: dict | None) -> Geometry | None:
    """The source geometry recorded in a layer's metadata, if there is one."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    return Geometry.from_metadata(metadata[METADATA_KEY])
