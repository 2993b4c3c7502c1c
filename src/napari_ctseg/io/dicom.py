"""DICOM: a file or a folder of files (extension or not) into a CT in HU.

Geometry follows the standard DICOM-to-NIfTI convention (the one SimpleITK's series
reader gives): voxel axes (column, row, slice), slices in increasing position along the
slice normal (row cosines x column cosines), affine from ImageOrientationPatient,
ImagePositionPatient and PixelSpacing, converted from LPS to RAS.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from napari_ctseg.errors import NotAScanError, ScanReadError
from napari_ctseg.io.volume import CTVolume, DicomSeries, SeriesInfo
from napari_ctseg.io._common import build_volume
from napari_ctseg.io._memory import check_fits

DICOMDIR_UID = "1.2.840.10008.1.3.10"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Two slice steps differing by more than this (mm, plus 1 %) count as uneven spacing.
SPACING_TOLERANCE_MM = 0.01
TILT_TOLERANCE_DEG = 0.5
MAX_FILES = 100_000
# DICOM objects that carry no CT image even when they hold pixel data (a dose grid, a
# segmentation, contours, reports, plans, presentation states, key objects, registrations).
NON_IMAGE_MODALITIES = {"RTDOSE", "RTSTRUCT", "RTPLAN", "RTRECORD", "SEG", "SR", "PR", "KO", "REG",
                        "RWV", "PLAN", "DOC"}


def dicom_kind(path) -> str | None:
    """'preamble' (the 'DICM' marker), 'bare' (a data set starting at group 0008/0002), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "preamble"
    # Files without the 128-byte preamble (older exports) start directly with a tag.
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00") and head[3:4] == b"\x00":
        return "bare"
    return None


def is_dicom_file(path) -> bool:
    """Recognise DICOM by content, whatever the file name."""
    return dicom_kind(path) is not None


@dataclass
class _Slice:
    path: Path
    ds: pydicom.Dataset
    position: np.ndarray | None  # ImagePositionPatient (LPS mm)
    orientation: tuple | None  # ImageOrientationPatient rounded


def _non_image_kind(ds: pydicom.Dataset) -> str | None:
    """What a DICOM object is when it is not an image we can show (None for an image)."""
    if getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", None) == DICOMDIR_UID:
        return "DICOMDIR"
    if "DirectoryRecordSequence" in ds:
        return "DICOMDIR"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in NON_IMAGE_MODALITIES:
        return modality
    if not ("PixelData" in ds and "Rows" in ds and "Columns" in ds):
        return f"{modality} without pixel data" if modality else "without pixel data"
    return None


def _is_image(ds: pydicom.Dataset) -> bool:
    return _non_image_kind(ds) is None


def _scan_files(root: Path) -> tuple[list[tuple[Path, str]], int]:
    """DICOM-looking files below root (recursively) with their kind, and the number of other files."""
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            p = Path(dirpath) / fname
            kind = dicom_kind(p)
            if kind:
                found.append((p, kind))
                if len(found) > MAX_FILES:
                    raise ScanReadError(f"{root}: more than {MAX_FILES} DICOM files; open one series folder")
            else:
                others += 1
    return found, others


def _read_all(files: list[tuple[Path, str]]) -> tuple[list[_Slice], dict[str, int], list[str]]:
    """The image files read (headers and pixel data, not decoded), what the other DICOM
    objects are (kind -> count) and the files that could not be read (name and why)."""
    slices, non_image, unreadable = [], defaultdict(int), []
    for p, kind in files:
        try:
            ds = pydicom.dcmread(p, force=kind == "bare")
            what = _non_image_kind(ds)
            if what is not None:
                non_image[what] += 1
                continue
            pos = ds.get("ImagePositionPatient")
            iop = ds.get("ImageOrientationPatient")
            slices.append(_Slice(
                path=p, ds=ds,
                position=np.asarray([float(v) for v in pos]) if pos is not None and len(pos) == 3 else None,
                orientation=tuple(round(float(v), 4) for v in iop) if iop is not None and len(iop) == 6 else None,
            ))
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
            unreadable.append(f"{p.name} ({_one_line(exc)})")
    return slices, dict(non_image), unreadable


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _series_info(uid: str, group: list[_Slice]) -> SeriesInfo:
    ds = group[0].ds
    return SeriesInfo(
        uid=uid,
        description=str(ds.get("SeriesDescription", "") or "").strip(),
        modality=str(ds.get("Modality", "") or "").strip(),
        n_slices=len(group),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
    )


def list_series(folder) -> list[SeriesInfo]:
    """The image series in a folder, largest first (reads headers only)."""
    files, _ = _scan_files(Path(folder))
    series: dict[str, int] = defaultdict(int)
    infos: dict[str, SeriesInfo] = {}
    for p, kind in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=kind == "bare")
        except Exception:  # noqa: BLE001 - an unreadable file is simply not listed
            continue
        if "Rows" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        series[uid] += 1
        infos.setdefault(uid, SeriesInfo(uid, str(ds.get("SeriesDescription", "") or ""),
                                         str(ds.get("Modality", "") or ""), 0,
                                         int(ds.get("Rows", 0)), int(ds.get("Columns", 0))))
    for uid, n in series.items():
        infos[uid].n_slices = n
    return sorted(infos.values(), key=lambda s: -s.n_slices)


def read_dicom(path) -> CTVolume:
    """Read a DICOM series into HU on the display grid (z, y, x).

    ``path`` is a folder (the largest CT series in it is chosen, the others are listed in
    ``CTVolume.other_series``) or one DICOM file (its series, from the same folder, is read).
    RescaleSlope/RescaleIntercept are applied per slice; slices are ordered by position
    along the slice normal, never by file name or InstanceNumber.
    """
    path = Path(path)
    wanted: Path | None = None
    if path.is_dir():
        folder = path
    else:
        folder, wanted = path.parent, path
    files, other_files = _scan_files(folder)
    if wanted is not None and wanted not in {p for p, _ in files}:
        kind = dicom_kind(wanted)
        if kind is None:
            raise NotAScanError(f"{wanted.name}: not a DICOM file")
        files.insert(0, (wanted, kind))
    if not files:
        if other_files == 0:
            raise NotAScanError(f"{folder}: the folder is empty")
        raise NotAScanError(f"{folder}: no DICOM files here ({other_files} other file(s)); "
                            "open a NIfTI file or a folder of DICOM images")
    slices, non_image, unreadable = _read_all(files)
    if not slices:
        if non_image:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(non_image.items()))
            what = f"only DICOM objects that are not CT images ({kinds})"
        elif unreadable:
            what = f"{len(unreadable)} DICOM file(s) could not be read: {unreadable[0]}"
        else:
            what = "no readable DICOM file"
        name = wanted.name if wanted is not None else str(folder)
        raise NotAScanError(f"{name}: no DICOM image here: {what}")
    try:
        return _volume_from(path, folder, wanted, slices, non_image, unreadable)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # A malformed value (NumberOfFrames "1A", a text PixelSpacing, ...): say which, in one line.
        raise ScanReadError(f"{wanted.name if wanted is not None else folder}: a DICOM value could not "
                            f"be read ({_one_line(exc)}); the export may be damaged") from None


def _volume_from(path: Path, folder: Path, wanted: Path | None, slices: list[_Slice],
                 non_image: dict[str, int], unreadable: list[str]) -> CTVolume:
    groups: dict[str, list[_Slice]] = defaultdict(list)
    for s in slices:
        groups[str(s.ds.get("SeriesInstanceUID", "unknown"))].append(s)
    infos = {uid: _series_info(uid, g) for uid, g in groups.items()}
    warnings: list[str] = []
    shown = {k: n for k, n in non_image.items() if k != "DICOMDIR"}
    if shown:
        warnings.append("also here, not images and not shown: "
                        + ", ".join(f"{n} {k}" for k, n in sorted(shown.items())))
    if unreadable:
        warnings.append(f"{len(unreadable)} file(s) could not be read and were skipped: "
                        + ", ".join(unreadable[:3]) + (" ..." if len(unreadable) > 3 else ""))

    if wanted is not None:
        chosen_uid = next((uid for uid, g in groups.items() if any(s.path == wanted for s in g)), None)
        if chosen_uid is None:
            raise NotAScanError(f"{wanted.name}: not a DICOM image (no pixel data)")
    else:
        ct = [uid for uid in groups if infos[uid].modality.upper() == "CT"]
        pool = ct or list(groups)
        if not ct:
            modalities = sorted({infos[u].modality or "?" for u in groups})
            warnings.append(f"no CT series here (modality {', '.join(modalities)}); opened the largest series")
        chosen_uid = max(pool, key=lambda uid: (infos[uid].n_slices, uid))
    others = sorted((infos[u] for u in groups if u != chosen_uid), key=lambda s: -s.n_slices)
    group = groups.pop(chosen_uid)
    groups.clear()  # let the other series' pixel data go

    group, mixed_warning = _consistent_subset(group)
    if mixed_warning:
        warnings.append(mixed_warning)
    series = _series_info(chosen_uid, group)
    ds0 = group[0].ds
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    if int(ds0.get("NumberOfFrames", 1) or 1) > 1:
        raise ScanReadError(f"{group[0].path.name}: multi-frame (enhanced) DICOM is not supported yet; "
                            "convert it to NIfTI or classic single-frame DICOM")

    row_spacing, col_spacing = _pixel_spacing(ds0, warnings)
    affine, ordered = _geometry(group, rows, cols, row_spacing, col_spacing, warnings)
    n = len(ordered)
    reference = _series_reference(ordered, rows, cols, row_spacing, col_spacing)
    slopes = [float(s.ds.get("RescaleSlope", 1) or 1) for s in ordered]
    inters = [float(s.ds.get("RescaleIntercept", 0) or 0) for s in ordered]
    integral = all(v.is_integer() for v in slopes + inters)
    name = f"{folder.name}" + (f" ({series.description})" if series.description else "")
    check_fits(name, (cols, rows, n), 2 if integral else 4)

    # Filled slice by slice: (slice, row, column) in memory, seen as (column, row, slice).
    stack = np.empty((n, rows, cols), dtype=np.int16 if integral else np.float32)
    for k, s in enumerate(ordered):
        try:
            pixels = s.ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            raise ScanReadError(f"{s.path.name}: the pixel data could not be decoded ({exc}); "
                                "compressed DICOM needs pylibjpeg with its libjpeg/openjpeg plugins") from None
        if pixels.shape != (rows, cols):
            raise ScanReadError(f"{s.path.name}: pixel data is {pixels.shape}, expected {(rows, cols)}")
        if stack.dtype == np.int16 and _fits_int16(pixels, slopes[k], inters[k]):
            # The whole stored range maps inside int16: rescale in place, no temporaries.
            np.multiply(pixels, int(slopes[k]), out=stack[k], casting="unsafe")
            stack[k] += np.int16(inters[k])
        else:
            hu = pixels.astype(np.float64 if not integral else np.int32) * slopes[k] + inters[k]
            if stack.dtype == np.int16 and (hu.min() < -32768 or hu.max() > 32767):
                stack = stack.astype(np.float32)
            stack[k] = hu
        s.ds = None  # release the file's bytes as we go
    source = stack.transpose(2, 1, 0)
    volume = build_volume(source, affine, name=name, source_path=str(path.resolve()),
                          source_kind="dicom", warnings=warnings)
    volume.geometry.dicom = reference
    volume.series = series
    volume.other_series = others
    volume.other_objects = dict(shown)
    return volume


def _series_reference(ordered: list[_Slice], rows: int, cols: int, row_spacing: float,
                      col_spacing: float) -> DicomSeries:
    """The UIDs, positions and files of the slices in source order (what SEG/RTSTRUCT refer to)."""
    ds0 = ordered[0].ds
    have_positions = all(s.position is not None for s in ordered)
    iop = ds0.get("ImageOrientationPatient")
    return DicomSeries(
        study_uid=str(ds0.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds0.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "") or ""),
        sop_class_uid=str(ds0.get("SOPClassUID", "") or ""),
        sop_instance_uids=[str(s.ds.get("SOPInstanceUID", "") or "") for s in ordered],
        positions=[[float(v) for v in s.position] for s in ordered] if have_positions else [],
        orientation=[float(v) for v in iop] if iop is not None and len(iop) == 6 else [],
        pixel_spacing=[row_spacing, col_spacing],
        rows=rows, columns=cols,
        files=[str(s.path.resolve()) for s in ordered],
    )


def _fits_int16(pixels: np.ndarray, slope: float, inter: float) -> bool:
    if pixels.dtype.kind not in "iu" or pixels.size == 0:
        return False
    ends = (float(pixels.min()) * slope + inter, float(pixels.max()) * slope + inter)
    return -32768 <= min(ends) and max(ends) <= 32767


def _consistent_subset(group: list[_Slice]) -> tuple[list[_Slice], str | None]:
    """Keep the largest set of slices sharing orientation and size (a 'mixed' series otherwise)."""
    keyed: dict[tuple, list[_Slice]] = defaultdict(list)
    for s in group:
        keyed[(s.orientation, int(s.ds.Rows), int(s.ds.Columns))].append(s)
    if len(keyed) == 1:
        return group, None
    best = max(keyed.values(), key=len)
    return best, (f"the series mixes {len(keyed)} image sizes or orientations; showing the "
                  f"{len(best)} of {len(group)} images that share one")


def _pixel_spacing(ds, warnings) -> tuple[float, float]:
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if ps is None or len(ps) != 2 or float(ps[0]) <= 0 or float(ps[1]) <= 0:
        warnings.append("no PixelSpacing: 1 mm pixels assumed")
        return 1.0, 1.0
    return float(ps[0]), float(ps[1])


def _geometry(group, rows, cols, row_spacing, col_spacing, warnings):
    """Affine (RAS) for voxel axes (column, row, slice) and the slices in that order."""
    have_geometry = all(s.position is not None and s.orientation is not None for s in group)
    if not have_geometry:
        if len(group) > 1:
            warnings.append("slices lack ImagePositionPatient/ImageOrientationPatient: ordered by "
                            "InstanceNumber, and positions are not known")
        ordered = sorted(group, key=lambda s: int(s.ds.get("InstanceNumber", 0) or 0))
        thickness = float(group[0].ds.get("SliceThickness", 1) or 1)
        affine = LPS_TO_RAS @ np.diag([col_spacing, row_spacing, thickness, 1.0])
        return affine, ordered

    iop = np.asarray([float(v) for v in group[0].ds.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_cos, col_cos)
    dist = np.array([float(s.position @ normal) for s in group])
    order = np.argsort(dist, kind="stable")
    ordered = [group[i] for i in order]
    dist = dist[order]
    keep = np.concatenate([[True], np.diff(dist) > 1e-4])
    if not keep.all():
        warnings.append(f"{int((~keep).sum())} image(s) repeat a slice position and were left out")
        ordered = [s for s, k in zip(ordered, keep) if k]
        dist = dist[keep]

    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 3] = ordered[0].position
    n = len(ordered)
    if n > 1:
        steps = np.diff(dist)
        step_vec = (ordered[-1].position - ordered[0].position) / (n - 1)
        med = float(np.median(steps))
        if steps.max() - steps.min() > SPACING_TOLERANCE_MM + 0.01 * med:
            gaps = int(np.sum(np.round(steps / med) - 1).clip(0))
            if gaps:
                warnings.append(f"about {gaps} slice(s) appear to be missing (gaps up to {steps.max():.2f} mm "
                                f"between slices {med:.2f} mm apart); shown at an even "
                                f"{float(np.linalg.norm(step_vec)):.3f} mm spacing")
            else:
                warnings.append(f"uneven slice spacing ({steps.min():.3f}..{steps.max():.3f} mm); "
                                f"shown at an even {float(np.linalg.norm(step_vec)):.3f} mm spacing")
        cos_tilt = abs(float(step_vec @ normal)) / max(float(np.linalg.norm(step_vec)), 1e-12)
        tilt = float(np.degrees(np.arccos(min(1.0, cos_tilt))))
        if tilt > TILT_TOLERANCE_DEG:
            warnings.append(f"gantry tilt of {tilt:.1f} degrees: shown unsheared on the nearest axes; "
                            "masks are saved on the true (sheared) geometry")
        lps[:3, 2] = step_vec
    else:
        thickness = float(ordered[0].ds.get("SliceThickness", 0) or 0) or \
            float(ordered[0].ds.get("SpacingBetweenSlices", 0) or 0) or 1.0
        lps[:3, 2] = normal * thickness
    return LPS_TO_RAS @ lps, ordered
