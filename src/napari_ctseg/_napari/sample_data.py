"""File > Open Sample > napari-ctseg: the bundled full chest CT and the small chest-abdomen CT."""
from __future__ import annotations

from importlib.resources import as_file, files

from ..io import read_nifti
from ._layers import image_layer_data

SAMPLE = "sample_ct.nii.gz"
CHEST = "chest_ct.nii.gz"


def sample_path():
    """Path of the bundled sample CT (TotalSegmentator test data, CC BY 4.0)."""
    return files("napari_ctseg") / "data" / SAMPLE


def sample_ct():
    with as_file(sample_path()) as path:
        volume = read_nifti(path)
    volume.name = "sample CT"
    return [image_layer_data(volume)]


def chest_path():
    """Path of the bundled full chest CT (Lung-PET-CT-Dx A0001, TCIA, CC BY 4.0; downsampled)."""
    return files("napari_ctseg") / "data" / CHEST


def chest_ct():
    with as_file(chest_path()) as path:
        volume = read_nifti(path)
    volume.name = "chest CT (Lung-PET-CT-Dx A0001)"
    return [image_layer_data(volume)]
