"""CT slices as TIFF: a 16-bit slice in HU, or a stack of them (tifffile, which napari ships).

Some data sets ship CT as TIFF rather than DICOM or NIfTI (the Kaggle "Finding Lungs in CT
Data" set: 512 x 512 signed 16-bit slices in HU). A TIFF carries no patient orientation and
often no pixel size, so what is assumed is said in the volume's warnings:

* the rows run from the patient's front to back and the columns from right to left, as an
  axial DICOM slice is shown (radiological view); pages, if several, run from head to feet;
* the pixel size is the file's XResolution/YResolution when its ResolutionUnit is centimetre or
  inch (or ImageJ's unit is mm, cm or micron), else 1 mm; the slice thickness is ImageJ's ``spacing`` when there is one, else 1 mm;
* values are HU as stored (no offset is guessed; ``build_volume``'s HU check warns when the
  values do not look like HU, for example unsigned slices stored with a +1024 offset).

An 8-bit TIFF is not a CT in HU (a mask, or a screen export): ``NotAScanError`` says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ctseg.errors import NotAScanError, ScanReadError
from napari_ctseg.io._common import build_volume
from napari_ctseg.io.volume import CTVolume

SUFFIXES = (".tif", ".tiff")
_UNIT_MM = {2: 25.4, 3: 10.0}  # ResolutionUnit: inch, centimetre


def is_tiff_path(path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


_IMAGEJ_UNIT_MM = {"mm": 1.0, "cm": 10.0, "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3}


def _pixel_mm(page, imagej: dict) -> tuple[float, float] | None:
    """(row, column) pixel size in mm from the resolution tags (and ImageJ's unit), or None."""
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    unit = int(getattr(unit, "value", 0) or 0)
    per_unit = _UNIT_MM.get(unit) or _IMAGEJ_UNIT_MM.get(str(imagej.get("unit", "")).lower())
    if per_unit is None:
        return None
    out = []
    for name in ("YResolution", "XResolution"):
        tag = tags.get(name)
        if tag is None:
            return None
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        res = float(num) / float(den or 1)
        if not res > 0:
            return None
        out.append(per_unit / res)
    return out[0], out[1]


def read_tiff(path) -> CTVolume:
    """A TIFF slice or stack in HU as a ``CTVolume`` (see the module docstring for what is assumed)."""
    import tifffile

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ScanReadError(f"{path}: no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = np.asarray(series.asarray())
            ij = tif.imagej_metadata or {}
            pixel = _pixel_mm(tif.pages[0], ij)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise ScanReadError(f"{name}: not a readable TIFF file ({exc})") from None
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4:
        raise NotAScanError(f"{name}: a colour image, not a CT slice in HU")
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or min(data.shape) == 0:
        raise NotAScanError(f"{name}: a TIFF of shape {data.shape} is not a slice or a stack of slices")
    if data.dtype.itemsize < 2 or data.dtype.kind not in "iuf":
        raise NotAScanError(f"{name}: a {data.dtype} TIFF is not a CT in HU (a mask or a screen export?); "
                            "CT slices in HU are 16-bit")
    warnings = []
    if pixel is None:
        pixel = (1.0, 1.0)
        warnings.append(f"{name}: the TIFF gives no pixel size; 1 mm is assumed (volumes in mL are then "
                        "only relative)")
    thickness = float(ij.get("spacing", 0) or 0)
    if not thickness > 0:
        thickness = 1.0
        if data.shape[0] > 1:
            warnings.append(f"{name}: the TIFF gives no slice spacing; 1 mm is assumed")
    warnings.append(f"{name}: a TIFF has no patient orientation: rows are taken as front to back, columns "
                    "as right to left (radiological view), pages as head to feet")
    hu = data.astype(np.int16) if data.dtype.kind in "iu" and data.dtype.itemsize == 2 \
        and data.min() >= -32768 and data.max() <= 32767 else data.astype(np.float32)
    # source layout (i, j, k) = (column, row, page); RAS+ (x to the patient's right, y to the
    # front, z to the head): columns run to the patient's left (-x), rows to the back (-y),
    # pages to the feet (-z)
    source = np.ascontiguousarray(hu.transpose(2, 1, 0))
    affine = np.diag([-pixel[1], -pixel[0], -thickness, 1.0])
    return build_volume(source, affine, name=path.name.split(".")[0], source_path=str(path.resolve()),
                        source_kind="tiff", warnings=warnings)
