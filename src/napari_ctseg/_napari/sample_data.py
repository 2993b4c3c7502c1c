"""File > Open Sample > napari-ctseg: the bundled chest-abdomen CT."""
from __future__ import annotations

from importlib.resources import as_file, files

from ..io import read_nifti
from ._layers import image_layer_data

SAMPLE = "sample_ct.nii.gz"


def sample_path():
    """Path of the bundled sample CT (TotalSegmentator test data, CC BY 4.0)."""
    return files("napari_ctseg") / "data" / SAMPLE


def sample_ct():
    with as_file(sample_path()) as path:
        volume = read_nifti(path)
    volume.name = "sample CT"
    return [image_layer_data(volume)]
