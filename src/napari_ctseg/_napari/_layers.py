"""Turn core objects into napari layer data, and find the geometry behind a layer."""
from __future__ import annotations

from typing import Any

from napari_ctseg.io.volume import DEFAULT_WINDOW, METADATA_KEY, WINDOW_PRESETS, CTVolume, Geometry


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


OBJECT_KEY = "ctseg_dicom_object"
"""``layer.metadata`` key of what a Labels layer read from a DICOM SEG or RTSTRUCT holds
(``LabelMap.to_metadata()``: kind, file, segments with value, number, name, colour, codes)."""


def labels_layer_data(labelmap, volume: CTVolume) -> tuple[Any, dict, str]:
    """LayerData for a ``LabelMap`` read from a SEG/RTSTRUCT on ``volume``: the CT's scale,
    translate and geometry metadata (so Save writes it on the CT voxel for voxel), the
    object's colours and segment names."""
    import pandas as pd
    from napari.utils.colormaps import DirectLabelColormap

    meta = {METADATA_KEY: volume.geometry.to_metadata(), OBJECT_KEY: labelmap.to_metadata()}
    if volume.series is not None:
        meta[METADATA_KEY]["series"] = volume.series.label()
    colors = {0: "transparent", None: "transparent",
              **{s.value: "#{:02x}{:02x}{:02x}".format(*s.color) for s in labelmap.segments}}
    by_value = {s.value: s.name for s in labelmap.segments}
    names = ["background"] + [by_value.get(v, f"label {v}") for v in range(1, max(by_value, default=0) + 1)]
    return (
        labelmap.data,
        {
            "axis_labels": ("z", "y", "x"),
            "name": labelmap.name,
            "scale": volume.spacing,
            "translate": volume.geometry.origin,
            "colormap": DirectLabelColormap(color_dict=colors),
            "features": pd.DataFrame({"name": names}),
            "opacity": 0.6,
            "metadata": meta,
        },
        "labels",
    )


def geometry_from_metadata(metadata: dict | None) -> Geometry | None:
    """The source geometry recorded in a layer's metadata, if there is one."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    return Geometry.from_metadata(metadata[METADATA_KEY])
