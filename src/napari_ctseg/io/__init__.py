"""Read CT scans (NIfTI, DICOM, 16-bit TIFF) into ``CTVolume`` and write masks back on their geometry."""
from __future__ import annotations

from pathlib import Path

from napari_ctseg.errors import NotAScanError, ScanReadError
from napari_ctseg.io.volume import CTVolume
from napari_ctseg.io.nifti import is_nifti_path, read_nifti, write_mask
from napari_ctseg.io.tiff import is_tiff_path, read_tiff

__all__ = ["read_scan", "write_mask", "is_scan_path", "read_nifti", "read_tiff"]


def is_scan_path(path) -> bool:
    """Whether napari-ctseg should try to open ``path`` (cheap: name or first bytes)."""
    from napari_ctseg.io.dicom import is_dicom_file

    p = Path(path)
    if p.is_dir():
        return True
    if is_nifti_path(p):
        return True
    if is_tiff_path(p):
        return p.is_file() and _tiff_is_16_bit(p)
    return p.is_file() and is_dicom_file(p)


def _tiff_is_16_bit(path: Path) -> bool:
    """A TIFF of 16 bits or more per sample (a CT in HU; 8-bit TIFFs are left to napari's reader)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].dtype is not None and tif.pages[0].dtype.itemsize >= 2
    except Exception:  # noqa: BLE001 - any unreadable file is not ours to open
        return False


def read_scan(path) -> CTVolume:
    """Open a NIfTI file, a DICOM file or a folder of DICOM files, or a 16-bit TIFF slice or stack, as a CT in HU.

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
    if is_tiff_path(p):
        return read_tiff(p)
    if is_dicom_file(p):
        return read_dicom(p)
    raise NotAScanError(f"{p.name}: not a NIfTI (.nii, .nii.gz), DICOM or 16-bit TIFF (.tif) file")
