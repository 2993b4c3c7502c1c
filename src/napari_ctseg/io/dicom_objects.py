"""DICOM SEG and RT Structure Sets: read onto the CT series they refer to; write DICOM SEG.

Reading gives ``LabelMap`` objects: a uint8 array on the CT's display grid (z, y, x), the
segments or ROIs it holds (value in the array, number in the file, name, colour, for SEG the
coded category and type) and the file it came from. Segments that overlap cannot share one
label map, so they are spread over several: each segment goes into the first map (in the
file's order) where it overlaps nothing already there. Segments that do not overlap thus
give one multi-label map; two overlapping segments give two maps; an RTSTRUCT with a body
outline and organs inside it gives two (the body, then the organs).

* **SEG** (binary, fractional, labelmap): highdicom parses the object, its segment
  descriptions and decodes each frame (``Segmentation.get_stored_frame``: bit-packed
  binary, compressed frames). Fractional values are thresholded at 0.5 (stored value at
  least half of MaximumFractionalValue). Each frame is put on the CT slice it was derived
  from (its ReferencedSOPInstanceUID), or else on the slice its ImagePositionPatient lies on
  (within half a slice); frames for some slices only are fine.
* **RTSTRUCT**: written here with pydicom and ``skimage.draw.polygon2mask``, because
  highdicom has no RT Structure Set support and rt-utils needs OpenCV (a large binary
  dependency for one polygon fill) and silently drops contours that lie on no slice. Each
  closed planar contour is filled on the slice it references (or lies on); several contours
  of one ROI on one slice combine by even-odd (XOR), so a contour inside another is a hole.
  Open contours and points have no inside and are left out (with a warning).

A SEG or RTSTRUCT for another series, or one whose frames or contours lie on images or
positions the CT does not have, raises ``DicomObjectError`` naming what is missing.

``write_seg`` writes a mask as a BINARY DICOM SEG with highdicom: it references the source
series (Study, Series and SOP Instance UIDs, Frame of Reference, per-frame positions, all
taken by highdicom from the source files' headers), codes each segment (see ``SEGMENT_CODES``)
and names the algorithm (napari-ctseg and the model's version, or manual).
"""
from __future__ import annotations

import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from napari_ctseg._files import replaced_atomically, same_file
from napari_ctseg.errors import CTSegError, DicomObjectError
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


# ---------------------------------------------------------------------------------------------
# SEG


def _coded(item) -> dict | None:
    if item is None:
        return None
    return {"scheme": str(item.get("CodingSchemeDesignator", "")), "value": str(item.get("CodeValue", "")),
            "meaning": str(item.get("CodeMeaning", ""))}


def _first(item, sequence: str):
    seq = item.get(sequence) if item is not None else None
    return seq[0] if seq else None


def _frame_item(seg, i: int, sequence: str):
    """A functional group's first item for frame ``i``: per frame, else shared."""
    per_frame = seg.get("PerFrameFunctionalGroupsSequence")
    item = _first(per_frame[i], sequence) if per_frame is not None and i < len(per_frame) else None
    if item is None:
        item = _first(_first(seg, "SharedFunctionalGroupsSequence"), sequence)
    return item


def _frame_source_uid(seg, i: int) -> str | None:
    derivation = _frame_item(seg, i, "DerivationImageSequence")
    for source in (derivation.get("SourceImageSequence", []) if derivation is not None else []):
        if source.get("ReferencedSOPInstanceUID"):
            return str(source.ReferencedSOPInstanceUID)
    return None


def _segment_color(description, k: int) -> tuple[int, int, int]:
    lab = description.get("RecommendedDisplayCIELabValue")
    if lab is not None and len(lab) == 3:
        try:
            from highdicom.color import CIELabColor

            return tuple(int(v) for v in CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb(clip=True))
        except (ValueError, TypeError):
            pass
    return FALLBACK_RGB[k % len(FALLBACK_RGB)]


def _algorithm(description) -> str:
    kind = str(description.get("SegmentAlgorithmType", "") or "")
    ident = _first(description, "SegmentationAlgorithmIdentificationSequence")
    name = str(description.get("SegmentAlgorithmName", "") or "")
    if ident is not None:
        name = " ".join(str(ident.get(t, "") or "") for t in ("AlgorithmName", "AlgorithmVersion")).strip() or name
    return " ".join(p for p in (kind, name) if p)


def read_seg(path, ct) -> list[LabelMap]:
    """A DICOM SEG on the CT it was made from (``ct``: the ``CTVolume`` read from DICOM, or its
    ``Geometry``). See the module's docstring for how frames are placed and overlaps split."""
    import highdicom as hd

    path = Path(path)
    slices = _Slices(ct, path.name)
    try:
        seg = hd.seg.segread(path)
    except _READ_ERRORS as exc:
        raise DicomObjectError(f"{path.name}: not a readable DICOM SEG ({_one_line(exc)})") from None
    try:
        return _read_seg(seg, path, slices)
    except DicomObjectError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise DicomObjectError(f"{path.name}: the SEG could not be read ({_one_line(exc)}); the file may be damaged") from None


def _read_seg(seg, path: Path, slices: _Slices) -> list[LabelMap]:
    name = path.name
    notes = []
    series_uids, frame_uid = _referenced_series(seg, "SEG")
    note = slices.check_series(series_uids, frame_uid, "SEG")
    if note:
        notes.append(note)
    if (int(seg.Rows), int(seg.Columns)) != (slices.rows, slices.columns):
        raise DicomObjectError(f"{name}: its frames are {seg.Columns}x{seg.Rows}, the CT's slices "
                               f"{slices.columns}x{slices.rows}; a SEG on another grid is not supported")
    seg_type = str(seg.SegmentationType).upper()
    max_fraction = int(seg.get("MaximumFractionalValue", 255) or 255)

    # Where each frame goes: the CT slice, and which segment(s) it holds.
    by_segment: dict[int, list[tuple[int, int]]] = defaultdict(list)  # segment number -> [(frame, k)]
    for i in range(int(seg.get("NumberOfFrames", 1) or 1)):
        k = _frame_slice(seg, i, slices)
        if seg_type == "LABELMAP":
            for number in seg.segment_numbers:
                by_segment[number].append((i, k))
            continue
        ident = _frame_item(seg, i, "SegmentIdentificationSequence")
        if ident is None or "ReferencedSegmentNumber" not in ident:
            raise DicomObjectError(f"{name}: frame {i + 1} names no segment (SegmentIdentificationSequence)")
        by_segment[int(ident.ReferencedSegmentNumber)].append((i, k))

    maps = _Maps(slices)
    for n, number in enumerate(seg.segment_numbers):
        description = seg.get_segment_description(number)
        segment = Segment(value=0, number=int(number),
                          name=str(description.get("SegmentLabel", "") or f"segment {number}"),
                          color=_segment_color(description, n),
                          category=_coded(_first(description, "SegmentedPropertyCategoryCodeSequence")),
                          type=_coded(_first(description, "SegmentedPropertyTypeCodeSequence")),
                          algorithm=_algorithm(description))
        frames: dict[int, np.ndarray] = {}
        for i, k in by_segment.get(int(number), []):
            stored = seg.get_stored_frame(i, as_index=True)
            if seg_type == "LABELMAP":
                on = stored == number
            elif seg_type == "FRACTIONAL":
                on = stored.astype(np.int64) * 2 >= max_fraction
            else:
                on = stored > 0
            frames[k] = frames[k] | on if k in frames else on
        maps.add(segment, frames)
    unknown = set(by_segment) - {int(v) for v in seg.segment_numbers}
    if unknown:
        raise DicomObjectError(f"{name}: frames name segment(s) {sorted(unknown)}, which the SEG does not describe")
    return maps.label_maps(path, "SEG", notes)


def _frame_slice(seg, i: int, slices: _Slices) -> int:
    """The CT slice that SEG frame ``i`` lies on."""
    name = slices.what
    plane = _frame_item(seg, i, "PlanePositionSequence")
    pos = plane.get("ImagePositionPatient") if plane is not None else None
    pos = np.asarray([float(v) for v in pos]) if pos is not None and len(pos) == 3 else None
    orientation = _frame_item(seg, i, "PlaneOrientationSequence")
    slices.check_orientation(orientation.get("ImageOrientationPatient") if orientation is not None else None,
                             f"frame {i + 1}")
    uid = _frame_source_uid(seg, i)
    if uid is not None:
        if uid not in slices.index:
            raise DicomObjectError(f"{name}: frame {i + 1} was made from image {uid}, which is not in "
                                   f"{slices.describe()}; open the folder holding the whole series")
        k = slices.index[uid]
    else:
        if pos is None:
            raise DicomObjectError(f"{name}: frame {i + 1} names neither its source image nor its position")
        if not slices.has_positions:
            raise DicomObjectError(f"{name}: frame {i + 1} is placed by position, and the CT's slices have none")
        d = float(pos @ slices.normal)
        k = slices.at_position(d)
        if k is None:
            raise DicomObjectError(f"{name}: frame {i + 1} at {d:.1f} mm is not on a slice of {slices.describe()}")
    if pos is not None and slices.has_positions:
        offset = slices.pixel_coordinates(pos[None, :], k)[0]
        if np.abs(offset).max() > 0.5:
            raise DicomObjectError(f"{name}: frame {i + 1} is shifted by ({offset[0]:.1f}, {offset[1]:.1f}) pixels "
                                   "from its CT slice; a SEG on another grid is not supported")
    return k


# ---------------------------------------------------------------------------------------------
# RTSTRUCT


def read_rtstruct(path, ct) -> list[LabelMap]:
    """An RT Structure Set's closed planar contours filled on the CT (``ct``: the ``CTVolume``
    read from DICOM, or its ``Geometry``). See the module's docstring."""
    path = Path(path)
    slices = _Slices(ct, path.name)
    try:
        ds = pydicom.dcmread(path)
    except _READ_ERRORS as exc:
        raise DicomObjectError(f"{path.name}: not a readable DICOM file ({_one_line(exc)})") from None
    if object_kind(ds) != "RTSTRUCT":
        raise DicomObjectError(f"{path.name}: not an RT Structure Set")
    try:
        return _read_rtstruct(ds, path, slices)
    except DicomObjectError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise DicomObjectError(f"{path.name}: the RTSTRUCT could not be read ({_one_line(exc)}); "
                               "the file may be damaged") from None


def _read_rtstruct(ds, path: Path, slices: _Slices) -> list[LabelMap]:
    from skimage.draw import polygon2mask

    name = path.name
    if not slices.has_positions:
        raise DicomObjectError(f"{name}: the CT's slices have no positions, so contours cannot be placed")
    notes = []
    series_uids, frame_uid = _referenced_series(ds, "RTSTRUCT")
    note = slices.check_series(series_uids, frame_uid, "RTSTRUCT")
    if note:
        notes.append(note)
    # Images of other series the structure set names: their ROIs are simply not for this CT.
    other_images = set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in fr.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if str(series.get("SeriesInstanceUID", "")) != slices.ref.series_uid:
                    other_images.update(str(c.ReferencedSOPInstanceUID)
                                        for c in series.get("ContourImageSequence", []))
    # A set that names this series only is for it, whatever frame of reference its ROIs name
    # (rt-utils writes a new one); otherwise an ROI in another frame is for another scan.
    only_this_series = set(series_uids) == {slices.ref.series_uid}
    rois = {int(r.ROINumber): r for r in ds.get("StructureSetROISequence", []) if "ROINumber" in r}
    maps = _Maps(slices)
    skipped, not_filled = [], Counter()
    shape = (slices.rows, slices.columns)
    for n, rc in enumerate(ds.get("ROIContourSequence", [])):
        number = int(rc.get("ReferencedROINumber", n + 1))
        roi = rois.get(number)
        roi_name = str(roi.get("ROIName", "") or "").strip() if roi is not None else ""
        roi_name = roi_name or f"ROI {number}"
        roi_frame = str(roi.get("ReferencedFrameOfReferenceUID", "") or "") if roi is not None else ""
        color = rc.get("ROIDisplayColor")
        rgb = tuple(int(v) for v in color) if color is not None and len(color) == 3 else FALLBACK_RGB[n % len(FALLBACK_RGB)]
        polygons: dict[int, list[np.ndarray]] = defaultdict(list)
        elsewhere = False
        for c in rc.get("ContourSequence", []):
            kind = str(c.get("ContourGeometricType", "") or "").upper()
            if kind not in ("CLOSED_PLANAR", "CLOSED_PLANAR_XOR"):
                not_filled[kind or "untyped"] += 1
                continue
            points = np.asarray([float(v) for v in c.get("ContourData", [])], float).reshape(-1, 3)
            if len(points) < 3:
                not_filled["fewer than 3 points"] += 1
                continue
            d = float(np.mean(points @ slices.normal))
            images = [str(x.ReferencedSOPInstanceUID) for x in c.get("ContourImageSequence", [])
                      if x.get("ReferencedSOPInstanceUID")]
            if images:
                uid = images[0]
                if uid not in slices.index:
                    if uid in other_images:
                        elsewhere = True
                        break
                    raise DicomObjectError(f"{name}: ROI '{roi_name}' has a contour on image {uid} (at {d:.1f} mm), "
                                           f"which is not in {slices.describe()}")
                k = slices.index[uid]
                if abs(slices.dist[k] - d) > slices.slice_spacing / 2 + 1e-3:
                    raise DicomObjectError(f"{name}: ROI '{roi_name}' has a contour at {d:.1f} mm on image {uid}, "
                                           f"which is at {slices.dist[k]:.1f} mm")
            else:
                if roi_frame and slices.ref.frame_of_reference_uid and roi_frame != slices.ref.frame_of_reference_uid \
                        and not only_this_series:
                    elsewhere = True
                    break
                k = slices.at_position(d)
                if k is None:
                    raise DicomObjectError(f"{name}: ROI '{roi_name}' has a contour at {d:.1f} mm, which is not on a "
                                           f"slice of {slices.describe()}")
            polygons[k].append(slices.pixel_coordinates(points, k))
        if elsewhere:
            skipped.append(roi_name)
            continue
        frames = {}
        for k, polys in polygons.items():
            filled = np.zeros(shape, bool)
            for poly in polys:
                filled ^= polygon2mask(shape, poly)
            frames[k] = filled
        maps.add(Segment(value=0, number=number, name=roi_name, color=rgb), frames)
    if skipped:
        notes.append(f"ROI(s) {', '.join(repr(s) for s in skipped)} are on another series or frame of "
                        "reference; not shown")
    if not_filled:
        notes.append("contours without an inside were left out: "
                        + ", ".join(f"{n} {k}" for k, n in sorted(not_filled.items())))
    if not maps.groups:
        if skipped:
            raise DicomObjectError(f"{name}: all its ROIs are on another series or frame of reference than "
                                   f"{slices.describe()}")
        raise DicomObjectError(f"{name}: the structure set holds no ROI")
    return maps.label_maps(path, "RTSTRUCT", notes)


def read_object(path, ct) -> list[LabelMap]:
    """``read_seg`` or ``read_rtstruct``, whichever the file is."""
    obj = describe_object(path)
    if obj is None:
        raise DicomObjectError(f"{Path(path).name}: not a DICOM SEG or RT Structure Set")
    return read_seg(path, ct) if obj.kind == "SEG" else read_rtstruct(path, ct)


# ---------------------------------------------------------------------------------------------
# opening a folder or an object with its CT

OTHER_OBJECTS_NOTE = "also here, not images and not shown: "


def _series_file(folder: Path, obj: DicomObject) -> Path | None:
    """A file of the series ``obj`` refers to, in ``folder`` (the largest such series when the
    object names only a frame of reference)."""
    from napari_ctseg.io.dicom import _scan_files

    files, _ = _scan_files(folder)
    by_series: dict[str, list[Path]] = defaultdict(list)
    for path, kind in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=kind == "bare",
                                 specific_tags=["SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "SOPClassUID",
                                                "Modality"])
        except _READ_ERRORS:
            continue
        if "Rows" not in ds or object_kind(ds) is not None:
            continue
        series = str(ds.get("SeriesInstanceUID", ""))
        same_frame = bool(obj.frame_of_reference_uid) and \
            str(ds.get("FrameOfReferenceUID", "")) == obj.frame_of_reference_uid
        if (series in obj.series_uids) if obj.series_uids else same_frame:
            by_series[series].append(path)
    if not by_series:
        return None
    return max(by_series.values(), key=len)[0]


def open_with_objects(path) -> tuple[CTVolume, list[LabelMap], list[str]]:
    """A scan and the SEG/RTSTRUCT objects beside it that refer to its series.

    ``path`` is what the user opened: a DICOM folder or file (the objects in that folder that
    refer to the opened series come along), a SEG/RTSTRUCT file (its series, from the same
    folder, with that one object; a ``DicomObjectError`` when the series is not there), or
    anything ``read_scan`` opens. Returns (volume, label maps, one-line problems of objects
    that could not be read: the scan opens anyway).
    """
    from napari_ctseg.io import read_scan
    from napari_ctseg.io.dicom import is_dicom_file, read_dicom

    p = Path(path)
    obj = describe_object(p) if p.is_file() and is_dicom_file(p) else None
    if obj is not None:
        series_file = _series_file(p.parent, obj)
        if series_file is None:
            what = (f"series {', '.join(obj.series_uids)}" if obj.series_uids
                    else f"frame of reference {obj.frame_of_reference_uid or '(none named)'}")
            raise DicomObjectError(f"{p.name}: the CT it refers to ({what}) is not in {p.parent}; "
                                   f"put the {obj.kind} beside its series and open it again")
        volume = read_dicom(series_file)
        objects = [obj]
    else:
        volume = read_scan(p)
        if volume.geometry.dicom is None or not any(k in volume.other_objects for k in OBJECT_KINDS):
            return volume, [], []
        folder = p if p.is_dir() else p.parent
        objects = find_objects(folder)
    maps, problems, shown, elsewhere = [], [], Counter(), Counter()
    for o in objects:
        if not o.refers_to(volume.geometry.dicom):
            if o.series_uids or o.frame_of_reference_uid:
                elsewhere[o.kind] += 1
            continue
        try:
            found = read_seg(o.path, volume) if o.kind == "SEG" else read_rtstruct(o.path, volume)
        except CTSegError as exc:
            problems.append(str(exc))
            continue
        maps.extend(found)
        shown[o.kind] += 1
    _update_note(volume, shown, elsewhere)
    return volume, maps, problems


def _update_note(volume: CTVolume, shown: Counter, elsewhere: Counter) -> None:
    """The reader's "also here, not shown" note, less the objects now shown."""
    left = {k: n - shown.get(k, 0) for k, n in volume.other_objects.items() if n - shown.get(k, 0) > 0}
    parts = []
    for kind, n in sorted(left.items()):
        other = min(elsewhere.get(kind, 0), n)
        if other:
            parts.append(f"{other} {kind} for another series")
        if n - other:
            parts.append(f"{n - other} {kind}")
    volume.warnings = [w for w in volume.warnings if not w.startswith(OTHER_OBJECTS_NOTE)]
    if parts:
        volume.warnings.insert(0, OTHER_OBJECTS_NOTE + ", ".join(parts))


# ---------------------------------------------------------------------------------------------
# writing SEG


def _segment_codes():
    """Label name -> (property category, property type, anatomic region or None).

    The codes come from highdicom's/pydicom's code dictionary (``pydicom.sr.codedict.codes``)
    where it has them: Lung (SCT 39607008), Liver (SCT 10200004), the category Anatomical
    Structure (SCT 91723000). Right lung (SCT 3341006) and left lung (SCT 44029006) are not in
    that dictionary and are written as SNOMED CT codes directly. Infection is a finding:
    category Morphologically Abnormal Structure (SCT 49755003), type Lesion (SCT 52988006),
    anatomic region Lung; COVID-19 (SCT 840539006) and ground-glass opacity are diseases and
    findings outside DICOM's segmentation property types (CID 7151) and not in the dictionary.
    Any other name: Tissue / Tissue (SCT 85756007), 3D Slicer's default.
    """
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    anatomy = codes.SCT.AnatomicalStructure
    lung = codes.SCT.Lung
    infection = (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion, lung)
    return {
        "lung": (anatomy, lung, None), "lungs": (anatomy, lung, None),
        "right_lung": (anatomy, Code("3341006", "SCT", "Right lung"), None),
        "left_lung": (anatomy, Code("44029006", "SCT", "Left lung"), None),
        "liver": (anatomy, codes.SCT.Liver, None),
        "infection": infection, "lesion": infection, "covid_19": infection, "covid19": infection,
        None: (codes.SCT.Tissue, codes.SCT.Tissue, None),
    }


def _key(name: str) -> str:
    return "_".join(str(name).strip().lower().replace("-", "_").split())


def card_colours() -> dict[str, str]:
    """Label name -> '#rrggbb' from the bundled model cards' ``display.colors`` (the newest
    version of a target wins), read as JSON (no model code, no torch)."""
    try:
        from importlib.resources import files

        root = Path(str(files("napari_ctseg") / "weights"))
    except (ModuleNotFoundError, TypeError):
        return {}
    out: dict[str, str] = {}
    for card in sorted(root.glob("*/*/card.json"), key=lambda p: (p.parent.parent.name, _version_key(p.parent.name))):
        try:
            display = json.loads(card.read_text()).get("display") or {}
        except (OSError, ValueError):
            continue
        for label, colour in (display.get("colors") or {}).items():
            out[_key(label)] = str(colour)
    return out


def _version_key(name: str):
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else -1, name)


def _rgb(colour) -> tuple[int, int, int]:
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if len(text) == 6:
            return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))
        raise ValueError(f"colour {colour!r} is not #rrggbb")
    values = [float(v) for v in colour][:3]
    if max(values) <= 1.0:
        values = [v * 255 for v in values]
    return tuple(round(min(255.0, max(0.0, v))) for v in values)


def check_seg_source(ct, name: str) -> DicomSeries:
    """The DICOM series a SEG on ``ct`` (a ``CTVolume`` or ``Geometry``) would reference; a
    ``DicomObjectError`` (naming ``name``) when there is none or it lacks what SEG needs."""
    geometry = ct.geometry if isinstance(ct, CTVolume) else ct
    ref = geometry.dicom if isinstance(geometry, Geometry) else None
    if ref is None:
        kind = (geometry.source_kind if isinstance(geometry, Geometry) else "") or "not DICOM"
        raise DicomObjectError(f"{name}: DICOM SEG needs the DICOM CT it was made from (this scan is "
                               f"{'NIfTI' if kind == 'nifti' else kind}, which has no DICOM UIDs); save as NIfTI")
    if not ref.frame_of_reference_uid:
        raise DicomObjectError(f"{name}: the series {ref.series_uid} has no Frame of Reference UID, which DICOM "
                               "SEG needs (some exports, such as 3D-IRCADb's, have none); save as NIfTI")
    if not ref.positions or len(ref.orientation) != 6:
        raise DicomObjectError(f"{name}: the series' slices have no ImagePositionPatient/ImageOrientationPatient, "
                               "which DICOM SEG needs; save as NIfTI")
    return ref


def write_seg(mask: np.ndarray, labels: dict[int, str], ct, path, *, algorithm: str = "manual",
              corrected: bool = False, colours: dict[int, object] | None = None,
              series_description: str | None = None) -> Path:
    """Write a display-grid (z, y, x) label mask as a BINARY DICOM SEG on the CT's series.

    ``labels`` names each value of the mask (a value without a name gets ``label N``);
    ``ct`` is the ``CTVolume`` read from DICOM (or its ``Geometry``: a layer's metadata).
    ``algorithm``: ``"manual"``, or ``"napari-ctseg <target> <version>"`` for a model's mask
    (the last word is the version); with ``corrected=True`` a model's mask that was edited by
    hand is SEMIAUTOMATIC. ``colours``: value -> '#rrggbb' or RGB; by default the plugin's
    card colours by label name. Empty slices are left out (frames only where a segment is).
    The file is written to a temporary name and renamed; the CT's own files are never
    overwritten. Returns the path written.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from napari_ctseg import __version__

    path = Path(path)
    name = path.name
    geometry = ct.geometry if isinstance(ct, CTVolume) else ct
    ref = check_seg_source(geometry, name)
    if any(same_file(path, f) for f in ref.files):
        raise DicomObjectError(f"{name}: this is one of the CT's own files; choose another name "
                               "(the scan is never overwritten)")
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biu" and (mask.dtype.kind != "f" or not np.array_equal(mask, np.round(mask))):
        raise DicomObjectError(f"{name}: the mask holds non-integer values; labels must be integers")
    try:
        source = geometry.to_source(mask)
    except ValueError as exc:
        raise DicomObjectError(f"{name}: {exc}") from None
    values = [int(v) for v in np.unique(source) if v != 0]
    if any(v < 0 for v in values):
        raise DicomObjectError(f"{name}: the mask holds negative labels")
    # Every named label is a segment (an empty one too: "no infection" is an answer), then any
    # other value found in the mask.
    wanted = sorted({int(v) for v in labels if int(v) > 0} | set(values))
    if len(wanted) > 65535:
        raise DicomObjectError(f"{name}: {len(wanted)} labels; DICOM SEG holds at most 65535 segments")
    # Frames in the source files' order (slice k): (slice, row, column), labels renumbered 1..n.
    lut = np.zeros(max(wanted, default=0) + 1, np.uint16 if len(wanted) > 255 else np.uint8)
    for number, v in enumerate(wanted, start=1):
        lut[v] = number
    frames = lut[np.asarray(source, np.int64).transpose(2, 1, 0)] if wanted else \
        np.zeros(source.shape[::-1], np.uint8)

    datasets = []
    for f, uid in zip(ref.files, ref.sop_instance_uids):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except _READ_ERRORS as exc:
            raise DicomObjectError(f"{name}: the CT's file {f} cannot be read any more ({_one_line(exc)}); "
                                   "a SEG references every image: open the series again") from None
        if str(ds.get("SOPInstanceUID", "")) != uid:
            raise DicomObjectError(f"{name}: {f} is no longer the image the scan was read from; open the series again")
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # an empty value (the default repertoire) that highdicom refuses
        for keyword in TYPE2_PATIENT_STUDY:  # "required, may be empty" in the SEG; anonymised CTs drop them
            if keyword not in ds:
                setattr(ds, keyword, None)
        for keyword in ("ReferencedStudySequence", "ReferencedPatientSequence"):
            # optional references that highdicom copies as they are; anonymisers (TCIA's) leave
            # items without their SOP Class UID, which would make the SEG invalid
            if keyword in ds and any("ReferencedSOPClassUID" not in item for item in ds[keyword].value):
                del ds[keyword]
        datasets.append(ds)

    colour_by_name = card_colours()
    code_table = _segment_codes()
    manual = algorithm.strip().lower() in ("", "manual")
    identification = None
    if not manual:
        words = algorithm.split()
        algo_name, algo_version = (" ".join(words[:-1]), words[-1]) if len(words) > 1 else (algorithm, __version__)
        identification = hd.AlgorithmIdentificationSequence(
            name=algo_name, version=algo_version, family=codes.cid7162.ArtificialIntelligence,
            source=f"napari-ctseg {__version__}")
    algorithm_type = (hd.seg.SegmentAlgorithmTypeValues.MANUAL if manual else
                      hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if corrected else
                      hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
    descriptions = []
    for number, v in enumerate(wanted, start=1):
        label = str(labels.get(v, "") or f"label {v}")
        category, prop, region = code_table.get(_key(label), code_table[None])
        colour = (colours or {}).get(v) or colour_by_name.get(_key(label)) or FALLBACK_RGB[(number - 1) % len(FALLBACK_RGB)]
        try:
            lab = hd.color.CIELabColor.from_rgb(*_rgb(colour))
        except (ValueError, TypeError) as exc:
            raise DicomObjectError(f"{name}: label {v} ({label}): {exc}") from None
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.replace("_", " ")[:64],
            segmented_property_category=category, segmented_property_type=prop,
            algorithm_type=algorithm_type, algorithm_identification=identification,
            anatomic_regions=[region] if region is not None else None, display_color=lab))
    try:
        series_number = int(datasets[0].get("SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        series_number = 1000
    description = series_description or ("napari-ctseg " + ", ".join(d.SegmentLabel for d in descriptions))[:64]
    try:
        with warnings.catch_warnings():
            # highdicom doubts one-word patient names ("JANCT000"): the source's own, copied as they are
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
            seg = hd.seg.Segmentation(
                source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-ctseg",
                manufacturer_model_name="napari-ctseg", software_versions=str(__version__),
                device_serial_number="none", content_label="CTSEG",
                content_description=description, series_description=description,
                omit_empty_frames=bool(values))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomObjectError(f"{name}: highdicom could not make the SEG ({_one_line(exc)})") from None
    try:
        with replaced_atomically(path, ".dcm") as tmp:
            seg.save_as(tmp)
    except OSError as exc:
        raise DicomObjectError(f"{path}: could not write the SEG ({exc.strerror or exc})") from None
    return path


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
