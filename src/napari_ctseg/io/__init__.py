"""Read CT scans (NIfTI, DICOM) into ``CTVolume`` and write masks back on their geometry."""
from __future__ import annotations

from pathlib import Path

from napari_ctseg.errors import NotAScanError, ScanReadError
from napari_ctseg.io.volume import CTVolume
from napari_ctseg.io.nifti import is_nifti_path, read_nifti, write_mask

__all__ = ["read_scan", "write_mask", "is_scan_path", "read_nifti"]


def is_scan_path(path) -> bool:
    """Whether napari-ctseg should try to open ``path`` (cheap: name or first bytes)."""
    from napari_ctseg.io.dicom import is_dicom_file

    p = Path(path)
    if p.is_dir():
        return True
    if is_nifti_path(p):
        return True
    return p.is_file() and is_dicom_file(p)


def read_scan(path) -> CTVolume:
    """Open a NIfTI file, a DICOM file or a folder of DICOM files as a CT in HU.

    A DICOM file opens the whole series it belongs to (from its folder). Raises a
    ``ScanReadError`` with a message for the user when the path holds no usable scan.
    """
    from napari_ctseg.io.dicom import is_dicom_file, read_dicom

    p = Path(path)
    if not p.exists():
        raise ScanReadError(f"{p}: no such file or folder")
    if p.is_dir():
        return read_dicom(p)
    if is_nifti_path(p):
        return read_nifti(p)
    if is_dicom_file(p):
        return read_dicom(p)
    raise NotAScanError(f"{p.name}: not a NIfTI (.nii, .nii.gz) or DICOM file")
