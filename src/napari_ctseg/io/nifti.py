"""NIfTI: read a CT into HU, write a mask on the source scan's exact geometry."""
from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from napari_ctseg._files import replaced_atomically, same_file as _same_file
from napari_ctseg.errors import MaskWriteError, ScanReadError
from napari_ctseg.io.volume import CTVolume, Geometry
from napari_ctseg.io._common import build_volume, hu_dtype
from napari_ctseg.io._memory import check_fits

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, ImageFileError,
                HeaderDataError, MemoryError)


def is_nifti_path(path) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def scan_name(path) -> str:
    """The scan's name: the file name without .nii/.nii.gz."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_nifti(path) -> CTVolume:
    """Read a NIfTI CT into HU on the display grid (z, y, x); see ``napari_ctseg.io.volume``.

    Scaling (scl_slope/scl_inter) is applied. 2D images become one-slice volumes; a 4D
    image with one volume is squeezed, with several the first is shown and a warning says so.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ScanReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ScanReadError(f"{name}: the file is empty")
    try:
        img = nib.load(path, mmap=False)
    except _READ_ERRORS as exc:
        raise ScanReadError(f"{name}: not a readable NIfTI file ({_reason(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanReadError(f"{name}: not a NIfTI image ({type(img).__name__})")

    warnings: list[str] = []
    shape = tuple(int(s) for s in img.shape)
    index: tuple = ()
    if len(shape) < 2:
        raise ScanReadError(f"{name}: a {len(shape)}D array is not an image")
    if len(shape) > 3:
        extra = shape[3:]
        if any(s > 1 for s in extra):
            warnings.append(
                f"the file holds {int(np.prod(extra))} volumes ({'x'.join(map(str, shape))}); "
                "showing the first one"
            )
        index = (slice(None),) * 3 + (0,) * len(extra)
    if any(s == 0 for s in shape[:3]):
        raise ScanReadError(f"{name}: the image has no voxels (shape {shape})")

    slope, inter = img.dataobj.slope, img.dataobj.inter
    slope = 1.0 if not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if not np.isfinite(inter) else float(inter)
    raw_dtype = img.get_data_dtype()
    scaled_integral = raw_dtype.kind in "iu" and slope.is_integer() and inter.is_integer()
    check_fits(name, shape[:3], 2 if scaled_integral else 4)

    try:
        raw = np.asarray(img.dataobj.get_unscaled()[index] if index else img.dataobj.get_unscaled())
    except _READ_ERRORS as exc:
        raise ScanReadError(f"{name}: the image data could not be read ({_reason(exc)})") from None
    if raw.ndim == 2:
        raw = raw[:, :, np.newaxis]
    if raw.dtype.kind not in "iuf" or raw.dtype.kind == "c":
        raise ScanReadError(f"{name}: unsupported voxel type {raw.dtype}")

    hu = _apply_scaling(raw, slope, inter)
    del raw
    affine = img.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        zooms = img.header.get_zooms()[:3]
        affine = np.diag([*(z if z > 0 else 1.0 for z in zooms), 1.0])
        warnings.append("the file's affine is not usable; voxel sizes from the header are used")
    return build_volume(hu, affine, name=scan_name(path), source_path=str(path.resolve()),
                        source_kind="nifti", nifti_header=bytes(img.header.binaryblock),
                        warnings=warnings)


def _apply_scaling(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    if raw.dtype.kind in "iu" and slope.is_integer() and inter.is_integer() and raw.size:
        lo, hi = float(raw.min()) * slope + inter, float(raw.max()) * slope + inter
        lo, hi = min(lo, hi), max(lo, hi)
        target = hu_dtype(lo, hi, integral=True)
        hu = raw.astype(target, copy=raw.dtype != target)
    else:
        hu = raw.astype(np.float32, copy=raw.dtype != np.float32)
    if not hu.flags.writeable:
        hu = hu.copy()
    # In place: the range was checked above, so int16 cannot overflow.
    if slope != 1.0:
        hu *= hu.dtype.type(slope)
    if inter != 0.0:
        hu += hu.dtype.type(inter)
    return hu


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (EOFError,)) or "end-of-stream" in text or "Compressed file ended" in text:
        return "the file is truncated"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)) or "gzip" in text.lower():
        return f"the gzip data is corrupt: {text}"
    if "Expected" in text and "bytes" in text:
        return f"the file is truncated: {text}"
    return text


def mask_dtype(mask: np.ndarray) -> np.dtype:
    """The smallest integer type that holds the mask's labels."""
    if mask.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(mask.min()), int(mask.max())
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise MaskWriteError(f"labels {lo}..{hi} do not fit in a 32-bit integer")


def write_mask(path, mask: np.ndarray, geometry: Geometry) -> Path:
    """Write a display-grid (z, y, x) label mask onto the source scan's exact geometry.

    The file has the source's shape, affine, qform and sform (codes included), an integer
    type and no scaling. It is written to a temporary file in the same folder and renamed,
    so a failure leaves no partial file. The source scan itself is never overwritten.
    Returns the path written.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise MaskWriteError(f"{path.name}: a mask is written as .nii or .nii.gz")
    if geometry.source_path and _same_file(path, geometry.source_path):
        raise MaskWriteError(
            f"{path.name}: this is the scan itself; choose another file name (the scan is never overwritten)"
        )
    if not np.issubdtype(np.asarray(mask).dtype, np.integer) and np.asarray(mask).dtype != bool:
        mask = np.asarray(mask)
        if not np.array_equal(mask, np.round(mask)):
            raise MaskWriteError(f"{path.name}: the mask holds non-integer values; labels must be integers")
    try:
        source_mask = geometry.to_source(np.asarray(mask))
    except ValueError as exc:
        raise MaskWriteError(f"{path.name}: {exc}") from None
    dtype = mask_dtype(source_mask)
    data = np.ascontiguousarray(source_mask, dtype=dtype)

    if geometry.nifti_header is not None:
        # The source's own header class: NIfTI-2 (540 bytes) or NIfTI-1 (348 bytes).
        raw = bytes(geometry.nifti_header)
        nifti2 = len(raw) >= 540 and 540 in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
        header_cls, image_cls = ((nib.Nifti2Header, nib.Nifti2Image) if nifti2 else
                                 (nib.Nifti1Header, nib.Nifti1Image))
        header = header_cls.from_fileobj(io.BytesIO(raw))
        if tuple(int(s) for s in header.get_data_shape()[:3]) != tuple(geometry.source_shape) \
                or len(header.get_data_shape()) != 3:
            header.set_data_shape(geometry.source_shape)
        # affine=None keeps the header's qform and sform, codes included, exactly.
        img = image_cls(data, None, header=header)
    else:
        img = nib.Nifti1Image(data, geometry.affine)
        img.set_qform(geometry.affine, code=1)
        img.set_sform(geometry.affine, code=1)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0
    img.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    img.header["descrip"] = b"napari-ctseg mask"

    suffix = ".nii.gz" if str(path).lower().endswith(".nii.gz") else ".nii"
    try:
        with replaced_atomically(path, suffix) as tmp:
            nib.save(img, tmp)
    except OSError as exc:
        raise MaskWriteError(f"{path}: could not write the mask ({exc.strerror or exc})") from None
    return path


