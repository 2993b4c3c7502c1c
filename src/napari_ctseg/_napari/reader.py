"""napari reader hook: NIfTI files, DICOM files (with or without extension) and folders."""
from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info, show_warning

from ..errors import CTSegError
from ..io import is_scan_path, read_scan
from ._layers import image_layer_data


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
    """Read one scan into an Image layer; expected errors become a notification."""
    if isinstance(path, list):
        path = path[0]
    try:
        volume = read_scan(path)
    except CTSegError as exc:
        show_error(str(exc))
        return [(None,)]  # napari's sentinel for "read, nothing to show"
    if volume.series is not None:
        msg = f"{Path(path).name}: opened {volume.series.label()}"
        if volume.other_series:
            msg += "; other series here: " + "; ".join(s.label() for s in volume.other_series)
        show_info(msg)
    for warning in volume.warnings:
        show_warning(f"{volume.name}: {warning}")
    return [image_layer_data(volume)]
