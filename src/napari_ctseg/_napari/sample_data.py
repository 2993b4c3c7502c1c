"""File > Open Sample > napari-ctseg: the bundled full chest CT and the small chest-abdomen CT."""
from __future__ import annotations

from importlib.resources import as_file, files

from napari_ctseg.io import read_nifti
from napari_ctseg.io.volume import WINDOW_PRESETS
from napari_ctseg._napari._layers import image_layer_data

SAMPLE = "sample_ct.nii.gz"
CHEST = "chest_ct.nii.gz"


def sample_path():
    """Path of the bundled sample CT (TotalSegmentator test data, CC BY 4.0)."""
    return files("napari_ctseg") / "data" / SAMPLE


def chest_path():
    """Path of the bundled full chest CT (Lung-PET-CT-Dx A0001, TCIA, CC BY 4.0; downsampled)."""
    return files("napari_ctseg") / "data" / CHEST


def _open(resource, name: str, window: str | None = None):
    with as_file(resource) as path:
        volume = read_nifti(path)
    volume.name = name
    data, kwargs, kind = image_layer_data(volume)
    if window is not None:
        kwargs["contrast_limits"] = WINDOW_PRESETS[window].limits
    return [(data, kwargs, kind)]


def sample_ct():
    return _open(sample_path(), "sample CT")


def chest_ct():
    """The full chest, shown in the lung window."""
    return _open(chest_path(), "chest CT (Lung-PET-CT-Dx A0001)", window="lung")
