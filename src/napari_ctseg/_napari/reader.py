"""napari reader hook: NIfTI files, DICOM files (with or without extension) and folders.

A DICOM folder opens its CT series and, as Labels layers on it, the DICOM SEG and RT
Structure Sets beside it that refer to that series; a SEG/RTSTRUCT file opens with its
series from the same folder (``io.dicom_objects.open_with_objects``).
"""
from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning

from napari_ctseg.errors import CTSegError
from napari_ctseg.io import is_scan_path
from napari_ctseg.io.dicom_objects import open_with_objects
from napari_ctseg._napari._layers import image_layer_data, labels_layer_data


def napari_get_reader(path):
    """Return a reader for a single NIfTI/DICOM file or a folder, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        if not is_scan_path(path):
            return None
    except OSError:
        return None
    return read_ct


def read_ct(path):
    """Read one scan into an Image layer, plus a Labels layer per SEG/RTSTRUCT label map on
    it; expected errors become a notification."""
    if isinstance(path, list):
        path = path[0]
    try:
        volume, label_maps, problems = open_with_objects(path)
    except CTSegError as exc:
        show_error(str(exc))
        return [(None,)]  # napari's sentinel for "read, nothing to show"
    if volume.series is not None:
        msg = f"{Path(path).name}: opened {volume.series.label()}"
        if volume.other_series:
            msg += "; other series here: " + "; ".join(s.label() for s in volume.other_series)
        if label_maps:
            files = sorted({Path(m.source_path).name for m in label_maps})
            msg += f"; with {len(label_maps)} mask layer(s) from {', '.join(files)}"
        show_info(msg)
    for warning in volume.warnings:
        show_warning(f"{volume.name}: {warning}")
    for problem in problems:
        show_error(f"not shown: {problem}")
    seen = set()
    for labelmap in label_maps:
        for warning in labelmap.warnings:
            if (labelmap.source_path, warning) not in seen:
                seen.add((labelmap.source_path, warning))
                show_warning(f"{Path(labelmap.source_path).name}: {warning}")
    return [image_layer_data(volume)] + [labels_layer_data(m, volume) for m in label_maps]
