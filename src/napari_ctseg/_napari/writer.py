"""napari writer hooks: a Labels layer as NIfTI on its scan's exact geometry, or as DICOM SEG
on the DICOM series it was made on (File > Save Selected Layers with a .dcm name), or as an RT
Structure Set there (a name ending ``rtstruct.dcm``: ``liver_rtstruct.dcm``)."""
from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error, show_info

from napari_ctseg.errors import CTSegError, MaskWriteError
from napari_ctseg.io import write_mask
from napari_ctseg._napari._layers import OBJECT_KEY, geometry_from_metadata


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


def write_labels_seg(path: str, data, meta: dict) -> list[str]:
    """Write a Labels layer to ``path`` (.dcm) as a DICOM SEG referencing the CT series it was
    made on (the geometry and UIDs from the layer's metadata, or from the one open CT it
    matches). Segment names: a SEG/RTSTRUCT layer's own, else the layer's ``features`` names
    (Segment volume's), else the target or layer name. The algorithm: the model and version
    (SEMIAUTOMATIC once slices were changed by hand), or manual. A name ending ``rtstruct.dcm``
    writes an RT Structure Set instead, with the same names, colours and algorithm. Refusals (a
    NIfTI scan, a series without Frame of Reference) are shown as a notification; nothing is written."""
    from napari_ctseg.io.dicom_objects import is_rtstruct_name, write_rtstruct, write_seg

    rtstruct = is_rtstruct_name(path)

    try:
        geometry = geometry_from_metadata(meta.get("metadata")) or _geometry_from_viewer(data, meta)
        mask = np.asarray(data)
        labels, colours = _segments_of(mask, meta)
        algorithm, corrected = _algorithm_of(mask, meta.get("metadata") or {})
        writer = write_rtstruct if rtstruct else write_seg
        written = writer(mask, labels, geometry, path, algorithm=algorithm, corrected=corrected, colours=colours)
    except CTSegError as exc:
        show_error(str(exc))
        return []
    show_info(f"saved {written.name} as {'RTSTRUCT' if rtstruct else 'DICOM SEG'} on series {geometry.dicom.series_uid}")
    return [str(written)]


def _segments_of(mask: np.ndarray, meta: dict) -> tuple[dict[int, str], dict[int, tuple]]:
    """{value: name} and {value: RGB} for a layer's labels."""
    metadata = meta.get("metadata") or {}
    obj = metadata.get(OBJECT_KEY) or {}
    if obj.get("segments"):
        segments = obj["segments"]
        return ({int(s["value"]): str(s["name"]) for s in segments},
                {int(s["value"]): tuple(s["color"]) for s in segments if s.get("color")})
    values = [int(v) for v in np.unique(mask) if v > 0]
    names: dict[int, str] = {}
    features = meta.get("features")
    if features is not None and "name" in getattr(features, "columns", ()):
        for value, name in zip(features.index, features["name"]):
            if int(value) > 0 and str(name) and str(name) != "background":
                names[int(value)] = str(name)
    base = str(metadata.get("target") or meta.get("name") or "label")
    for v in values:
        names.setdefault(v, base if len(values) == 1 and not names else f"{base} {v}")
    return names, {}


def _algorithm_of(mask: np.ndarray, metadata: dict) -> tuple[str, bool]:
    """("napari-ctseg <target> <version>", changed by hand?) for a model's mask, else ("manual", False)."""
    from napari_ctseg.editing.corrections import BASELINE_KEY, changed_slices

    target, version = metadata.get("target"), metadata.get("model_version")
    if not target or not version or metadata.get(OBJECT_KEY):
        return "manual", False
    baseline = metadata.get(BASELINE_KEY)
    return f"napari-ctseg {target} {version}", bool(baseline is not None and changed_slices(baseline, mask))


def _geometry_from_viewer(data, meta):
    import napari

    from napari_ctseg._napari._compat import is_image_layer
    from napari_ctseg._napari._layers import geometry_from_metadata as from_meta

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
