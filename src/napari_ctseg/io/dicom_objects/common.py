"""What DICOM SEG and RTSTRUCT files hold, found in a folder, and the label maps reading gives (shared by the readers)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
import warnings

from pydicom.errors import InvalidDicomError
import numpy as np
import pydicom

from napari_ctseg.errors import DicomObjectError
from napari_ctseg.io.volume import CTVolume, DicomSeries, Geometry

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
OBJECT_KINDS = ("SEG", "RTSTRUCT")
FALLBACK_RGB = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (67, 99, 216), (245, 130, 49),
                (145, 30, 180), (70, 240, 240))
ORIENTATION_TOLERANCE = 1e-3
# Patient and study attributes a SEG must carry (type 2: present, possibly empty); highdicom
# copies them from the source images, which exports often strip.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "StudyID", "AccessionNumber", "ReferringPhysicianName")
_READ_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
                IndexError)


@dataclass
class Segment:
    """One segment (SEG) or ROI (RTSTRUCT) of a ``LabelMap``."""

    value: int  # its voxel value in LabelMap.data
    number: int  # SegmentNumber (SEG) or ROINumber (RTSTRUCT) in the file
    name: str
    color: tuple[int, int, int]  # RGB 0..255
    category: dict | None = None  # SEG: {"scheme", "value", "meaning"} of the property category
    type: dict | None = None  # SEG: the property type, alike
    algorithm: str = ""  # SEG: "AUTOMATIC napari-ctseg lungs v2", "MANUAL", ...

    def to_dict(self) -> dict:
        return {"value": self.value, "number": self.number, "name": self.name, "color": list(self.color),
                "category": self.category, "type": self.type, "algorithm": self.algorithm}


@dataclass
class LabelMap:
    """Segments of a SEG or RTSTRUCT that do not overlap, on the CT's display grid."""

    data: np.ndarray  # uint8 (z, y, x), 0 = background
    segments: list[Segment]
    source_path: str
    kind: str  # "SEG" or "RTSTRUCT"
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """A layer name from the segment names ("Lung L, Lung R", "Body")."""
        names = [s.name for s in self.segments]
        text = ", ".join(names)
        if len(text) > 60:
            shown = []
            for n in names:
                if len(", ".join([*shown, n])) > 50:
                    break
                shown.append(n)
            text = ", ".join(shown or names[:1]) + f" (+{len(names) - max(1, len(shown))})"
        return text or Path(self.source_path).name

    def labels(self) -> dict[int, str]:
        return {s.value: s.name for s in self.segments}

    def to_metadata(self) -> dict:
        """Plain types for a layer's metadata."""
        return {"kind": self.kind, "source_path": self.source_path,
                "segments": [s.to_dict() for s in self.segments]}


@dataclass
class DicomObject:
    """A SEG or RTSTRUCT file found in a folder, and what it refers to."""

    path: Path
    kind: str  # "SEG" or "RTSTRUCT"
    series_uids: list[str]  # the series it references (may be empty)
    frame_of_reference_uid: str
    label: str = ""

    def refers_to(self, series: DicomSeries | None) -> bool:
        """Whether this object is for ``series``: by its series references, or, when it has
        none, by the frame of reference."""
        if series is None:
            return False
        if self.series_uids:
            return series.series_uid in self.series_uids
        return bool(self.frame_of_reference_uid) and self.frame_of_reference_uid == series.frame_of_reference_uid


# ---------------------------------------------------------------------------------------------
# finding objects


def object_kind(ds: pydicom.Dataset) -> str | None:
    """'SEG', 'RTSTRUCT' or None, from the SOP class (or the modality)."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class == SEG_SOP_CLASS:
        return "SEG"
    if sop_class == RTSTRUCT_SOP_CLASS:
        return "RTSTRUCT"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    return modality if modality in OBJECT_KINDS else None


def _referenced_series(ds: pydicom.Dataset, kind: str) -> tuple[list[str], str]:
    """(series UIDs, frame of reference UID) that a SEG or RTSTRUCT names."""
    if kind == "SEG":
        uids = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", []) if "SeriesInstanceUID" in s]
        return uids, str(ds.get("FrameOfReferenceUID", "") or "")
    uids, frames = [], []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        if fr.get("FrameOfReferenceUID"):
            frames.append(str(fr.FrameOfReferenceUID))
        for study in fr.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    uids.append(str(series.SeriesInstanceUID))
    return uids, (frames[0] if frames else str(ds.get("FrameOfReferenceUID", "") or ""))


def describe_object(path) -> DicomObject | None:
    """What a SEG/RTSTRUCT file refers to (None when the file is neither)."""
    from napari_ctseg.io.dicom import dicom_kind

    path = Path(path)
    kind = dicom_kind(path)
    if kind is None:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=kind == "bare")
    except _READ_ERRORS:
        return None
    what = object_kind(ds)
    if what is None:
        return None
    uids, frame = _referenced_series(ds, what)
    label = str(ds.get("SeriesDescription", "") or ds.get("StructureSetLabel", "") or ds.get("ContentLabel", "") or "")
    return DicomObject(path=path, kind=what, series_uids=uids, frame_of_reference_uid=frame, label=label.strip())


def find_objects(folder) -> list[DicomObject]:
    """The DICOM SEG and RTSTRUCT files below ``folder`` (by content: no extension needed),
    each with the series it references."""
    from napari_ctseg.io.dicom import _scan_files

    files, _ = _scan_files(Path(folder))
    found = []
    for path, kind in files:
        try:  # the two tags first: most files in a series folder are images
            head = pydicom.dcmread(path, stop_before_pixels=True, force=kind == "bare",
                                   specific_tags=["SOPClassUID", "Modality"])
        except _READ_ERRORS:
            continue
        if object_kind(head) is None:
            continue
        obj = describe_object(path)
        if obj is not None:
            found.append(obj)
    return found


# ---------------------------------------------------------------------------------------------
# the CT's slices


class _Slices:
    """The CT series' slices: index by SOP Instance UID, by position, and pixel coordinates."""

    def __init__(self, ct, what: str):
        geometry = ct.geometry if isinstance(ct, CTVolume) else ct
        if not isinstance(geometry, Geometry) or geometry.dicom is None:
            raise DicomObjectError(f"{what}: the CT was not read from DICOM (a NIfTI file has no DICOM UIDs); "
                                   "open the DICOM series it refers to")
        self.geometry, self.ref = geometry, geometry.dicom
        ref = self.ref
        self.rows, self.columns = int(ref.rows), int(ref.columns)
        self.index = {uid: k for k, uid in enumerate(ref.sop_instance_uids) if uid}
        self.n = len(ref.sop_instance_uids)
        self.has_positions = bool(ref.positions) and len(ref.orientation) == 6
        if self.has_positions:
            iop = np.asarray(ref.orientation, float)
            self.row_cos, self.col_cos = iop[:3], iop[3:]
            self.normal = np.cross(self.row_cos, self.col_cos)
            self.positions = np.asarray(ref.positions, float)
            self.dist = self.positions @ self.normal
        self.row_spacing, self.col_spacing = (float(v) for v in ref.pixel_spacing)
        self.slice_spacing = float(np.linalg.norm(geometry.affine[:3, 2])) or 1.0
        self.what = what

    def describe(self) -> str:
        where = ""
        if self.has_positions:
            where = f" at {self.dist.min():.1f}..{self.dist.max():.1f} mm" if self.n > 1 else f" at {self.dist[0]:.1f} mm"
        return f"the CT series {self.ref.series_uid} ({self.n} image{'s' if self.n != 1 else ''}{where})"

    def at_position(self, distance: float) -> int | None:
        """The slice within half a slice of ``distance`` (mm along the normal), or None."""
        if not self.has_positions:
            return None
        k = int(np.argmin(np.abs(self.dist - distance)))
        return k if abs(self.dist[k] - distance) <= self.slice_spacing / 2 + 1e-3 else None

    def check_orientation(self, iop, whose: str) -> None:
        if iop is None or len(iop) != 6 or not self.has_positions:
            return
        if np.abs(np.asarray([float(v) for v in iop]) - np.asarray(self.ref.orientation, float)).max() > ORIENTATION_TOLERANCE:
            raise DicomObjectError(f"{self.what}: {whose} is oriented {[round(float(v), 3) for v in iop]}, the CT "
                                   f"{[round(float(v), 3) for v in self.ref.orientation]}; resampling is not supported")

    def pixel_coordinates(self, points: np.ndarray, k: int) -> np.ndarray:
        """(row, column) of LPS points on slice ``k``."""
        rel = points - self.positions[k]
        return np.column_stack([rel @ self.col_cos / self.row_spacing, rel @ self.row_cos / self.col_spacing])

    def check_series(self, series_uids: list[str], frame_uid: str, kind: str) -> str | None:
        """Raise when the object names other series only; a warning when only the frame of
        reference differs (the image references then decide)."""
        ref = self.ref
        if series_uids and ref.series_uid not in series_uids:
            others = ", ".join(sorted(set(series_uids)))
            raise DicomObjectError(f"{self.what}: this {kind} is for series {others}, not the CT's series "
                                   f"{ref.series_uid}; open the folder holding series {others}")
        if frame_uid and ref.frame_of_reference_uid and frame_uid != ref.frame_of_reference_uid:
            if not series_uids:
                raise DicomObjectError(f"{self.what}: this {kind} is in frame of reference {frame_uid}, not the CT's "
                                       f"{ref.frame_of_reference_uid}, and names no series; open the series it was made on")
            return (f"its frame of reference UID ({frame_uid}) differs from the CT's; placed by the images "
                    "it references")
        return None


class _Maps:
    """Segments spread over label maps so that none overlaps another in the same map."""

    def __init__(self, slices: _Slices):
        self.slices = slices
        self.shape = tuple(slices.geometry.source_shape)  # (columns, rows, slices)
        self.groups: list[tuple[np.ndarray, list[Segment]]] = []

    def add(self, segment: Segment, frames: dict[int, np.ndarray]) -> None:
        """``frames``: slice k -> boolean (rows, columns) for the slices the segment is on."""
        frames = {k: f for k, f in frames.items() if f.any()}
        for data, segments in self.groups:
            if len(segments) < 255 and not any(data[:, :, k].T[f].any() for k, f in frames.items()):
                break
        else:
            data, segments = np.zeros(self.shape, np.uint8), []
            self.groups.append((data, segments))
        value = len(segments) + 1
        for k, f in frames.items():
            data[:, :, k].T[f] = value
        segments.append(replace(segment, value=value))

    def label_maps(self, path: Path, kind: str, notes: list[str]) -> list[LabelMap]:
        geometry = self.slices.geometry
        return [LabelMap(data=np.ascontiguousarray(geometry.to_display(data)), segments=segments,
                         source_path=str(Path(path).resolve()), kind=kind, warnings=list(notes))
                for data, segments in self.groups]



def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
