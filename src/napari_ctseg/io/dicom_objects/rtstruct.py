"""RT Structure Sets: each ROI's closed planar contours filled on the CT slices they lie on
(pydicom, scikit-image); and masks written as an RT Structure Set on their CT series.

See ``napari_ctseg.io.dicom_objects`` for the reading rules (holes by even-odd, open contours
left out). Writing (``write_rtstruct``, ``write_rois``) traces each slice of each ROI with
scikit-image's marching squares at level 0.5, so every contour runs half-way between pixel
centres: a pixel's centre lies inside the contours (even-odd: a hole is a contour of its own)
exactly when the pixel is in the mask, and reading the file back gives the mask voxel for voxel.
"""
from __future__ import annotations

import math

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom

from napari_ctseg._files import replaced_atomically
from napari_ctseg.errors import DicomObjectError
from napari_ctseg.io.dicom_objects.common import FALLBACK_RGB, RTSTRUCT_SOP_CLASS, TYPE2_PATIENT_STUDY, LabelMap, Segment, _Maps, _READ_ERRORS, _Slices, _one_line, _referenced_series, object_kind
from napari_ctseg.io.volume import CTVolume, Geometry

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


def fill_polygon(shape, poly: np.ndarray) -> np.ndarray:
    """The pixels of ``shape`` whose centres lie inside the closed polygon ``poly`` ((row, column)
    per vertex, pixel centres at whole numbers), by even-odd scanlines: the same pixels as
    scikit-image's ``polygon2mask`` for a contour through no pixel centre, in time that grows with
    the polygon's rows times its vertices rather than its box's pixels times its vertices (a traced
    contour has thousands of vertices)."""
    poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(shape, bool)
    if len(poly) < 3:
        return out
    ra, ca = poly[:, 0], poly[:, 1]
    rb, cb = np.roll(ra, -1), np.roll(ca, -1)
    r0, r1 = max(int(np.ceil(ra.min())), 0), min(int(np.floor(ra.max())), shape[0] - 1)
    if r1 < r0:
        return out
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    cross = (rows >= np.minimum(ra, rb)) & (rows < np.maximum(ra, rb))  # half-open: a vertex counts once
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = ca + (rows - ra) / (rb - ra) * (cb - ca)
    xs = np.sort(np.where(cross, xs, np.inf), axis=1)
    counts = cross.sum(axis=1)
    for i in np.flatnonzero(counts >= 2):
        x = xs[i, :counts[i] - counts[i] % 2]
        for a, b in zip(x[0::2], x[1::2]):
            lo, hi = max(int(np.ceil(a)), 0), min(int(np.floor(b)), shape[1] - 1)
            if hi >= lo:
                out[r0 + i, lo:hi + 1] = True
    _mark_edge_centres(out, ra, ca, rb, cb)
    return out


def _mark_edge_centres(out: np.ndarray, ra, ca, rb, cb) -> None:
    """Pixel centres that lie on the polygon's edges count as inside (as in scikit-image): many
    planning systems put the vertices on pixel centres. Only edges that can hold one are walked."""
    whole = lambda v: np.abs(v - np.round(v)) < 1e-6  # noqa: E731
    flat_r = whole(ra) & (np.abs(ra - rb) < 1e-9)
    flat_c = whole(ca) & (np.abs(ca - cb) < 1e-9)
    ends = whole(ra) & whole(ca) & whole(rb) & whole(cb)
    h, w = out.shape
    for i in np.flatnonzero(flat_r | flat_c | ends):
        if flat_r[i]:
            r = int(round(ra[i]))
            lo, hi = max(int(np.ceil(min(ca[i], cb[i]))), 0), min(int(np.floor(max(ca[i], cb[i]))), w - 1)
            if 0 <= r < h and hi >= lo:
                out[r, lo:hi + 1] = True
        elif flat_c[i]:
            c = int(round(ca[i]))
            lo, hi = max(int(np.ceil(min(ra[i], rb[i]))), 0), min(int(np.floor(max(ra[i], rb[i]))), h - 1)
            if 0 <= c < w and hi >= lo:
                out[lo:hi + 1, c] = True
        else:
            r0, c0, r1, c1 = (int(round(v)) for v in (ra[i], ca[i], rb[i], cb[i]))
            n = math.gcd(abs(r1 - r0), abs(c1 - c0))
            for k in range(n + 1):
                r, c = r0 + (r1 - r0) // n * k if n else r0, c0 + (c1 - c0) // n * k if n else c0
                if 0 <= r < h and 0 <= c < w:
                    out[r, c] = True


def _read_rtstruct(ds, path: Path, slices: _Slices) -> list[LabelMap]:
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
                filled ^= fill_polygon(shape, poly)
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


# ---------------------------------------------------------------------------------------------
# writing RTSTRUCT

# The RT Referenced Study's SOP Class, as RT planning systems (and pydicom's, dcmqi's,
# plastimatch's examples) write it: Detached Study Management.
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"


@dataclass
class Roi:
    """One structure to write: its name, its voxels on the display grid (z, y, x, bool), its
    colour ('#rrggbb' or RGB; ``None``: the model cards' colour for the name, else a fallback)
    and what made it (``"manual"``, or ``"napari-ctseg <target> <version>"``; ``corrected``: a
    model's mask edited by hand)."""

    name: str
    mask: np.ndarray
    colour: object = None
    algorithm: str = "manual"
    corrected: bool = False


def is_rtstruct_name(path) -> bool:
    """A ``.dcm`` name that asks for an RT Structure Set rather than a DICOM SEG: one ending
    ``rtstruct.dcm`` (``liver_rtstruct.dcm``, ``rtstruct.dcm``), the plugin's one convention."""
    return str(path).lower().endswith("rtstruct.dcm")


def label_rois(mask: np.ndarray, labels: dict[int, str], *, algorithm: str = "manual", corrected: bool = False,
               colours: dict[int, object] | None = None, what: str = "mask") -> list[Roi]:
    """One ``Roi`` per label of an integer label mask (z, y, x): every named label (an empty one
    too), then any other value in the mask (``label N``). ``what`` names the file in errors."""
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biu" and (mask.dtype.kind != "f" or not np.array_equal(mask, np.round(mask))):
        raise DicomObjectError(f"{what}: the mask holds non-integer values; labels must be integers")
    values = [int(v) for v in np.unique(mask) if v != 0]
    if any(v < 0 for v in values):
        raise DicomObjectError(f"{what}: the mask holds negative labels")
    wanted = sorted({int(v) for v in labels if int(v) > 0} | set(values))
    return [Roi(str(labels.get(v, "") or f"label {v}"), mask == v, (colours or {}).get(v), algorithm, corrected)
            for v in wanted]


def write_rtstruct(mask: np.ndarray, labels: dict[int, str], ct, path, *, algorithm: str = "manual",
                   corrected: bool = False, colours: dict[int, object] | None = None,
                   series_description: str | None = None) -> Path:
    """Write a display-grid (z, y, x) label mask as an RT Structure Set on the CT's series: one
    ROI per label, as ``write_seg`` takes them (``labels``, ``algorithm``, ``corrected``,
    ``colours``; ``ct``: the ``CTVolume`` read from DICOM, or its ``Geometry``). See
    ``write_rois``. Returns the path written."""
    rois = label_rois(mask, labels, algorithm=algorithm, corrected=corrected, colours=colours, what=Path(path).name)
    return write_rois(rois, ct, path, series_description=series_description)


def write_rois(rois: list[Roi], ct, path, *, series_description: str | None = None) -> Path:
    """Write ``rois`` (which may overlap: infection inside the lungs) as one RT Structure Set.

    It references the CT's study, series, Frame of Reference and every image; each ROI has its
    name, colour (ROIDisplayColor), generation algorithm (AUTOMATIC, SEMIAUTOMATIC or MANUAL,
    with the model and version as its description) and one CLOSED_PLANAR contour per boundary
    on each slice it is on, in patient coordinates (LPS mm) on that slice's own position, with
    the slice's image referenced; a hole is a contour inside another (read even-odd). An empty
    ROI has no contours. Patient and study attributes are copied from the CT's first file.
    Written in Implicit VR Little Endian (long contours exceed Explicit VR's 64 KiB values),
    to a temporary name and renamed; the CT's own files are never overwritten.
    """
    from napari_ctseg import __version__
    from napari_ctseg.io.dicom_objects.seg import _key, _rgb, _segment_codes, card_colours, check_dicom_source

    path = Path(path)
    name = path.name
    geometry = ct.geometry if isinstance(ct, CTVolume) else ct
    ref = check_dicom_source(geometry, name, "RTSTRUCT", path)
    try:
        source = pydicom.dcmread(ref.files[0], stop_before_pixels=True)
    except _READ_ERRORS as exc:
        raise DicomObjectError(f"{name}: the CT's file {ref.files[0]} cannot be read any more "
                               f"({_one_line(exc)}); open the series again") from None
    contours = []
    for roi in rois:
        try:
            on = np.asarray(geometry.to_source(np.asarray(roi.mask, bool))).transpose(2, 1, 0)  # (k, row, col)
        except ValueError as exc:
            raise DicomObjectError(f"{name}: ROI '{roi.name}': {exc}") from None
        contours.append([(k, c) for k in np.flatnonzero(on.any(axis=(1, 2))) for c in slice_contours(on[k])])

    ds = _structure_set(source, ref, name, series_description or
                        ("napari-ctseg " + ", ".join(r.name.replace("_", " ") for r in rois))[:64], __version__)
    frame_uid = ref.frame_of_reference_uid
    colour_by_name, codes = card_colours(), _segment_codes()
    image_class = ref.sop_class_uid or str(source.get("SOPClassUID", "")) or "1.2.840.10008.5.1.4.1.1.2"
    row_cos, col_cos = np.asarray(ref.orientation[:3], float), np.asarray(ref.orientation[3:], float)
    row_spacing, col_spacing = (float(v) for v in ref.pixel_spacing)
    for number, (roi, roi_contours) in enumerate(zip(rois, contours), start=1):
        label = roi.name.replace("_", " ")[:64]
        manual = roi.algorithm.strip().lower() in ("", "manual")
        item = pydicom.Dataset()
        item.ROINumber, item.ReferencedFrameOfReferenceUID, item.ROIName = number, frame_uid, label
        item.ROIGenerationAlgorithm = "MANUAL" if manual else "SEMIAUTOMATIC" if roi.corrected else "AUTOMATIC"
        if not manual:
            item.ROIGenerationDescription = roi.algorithm[:64]
        ds.StructureSetROISequence.append(item)
        colour = roi.colour or colour_by_name.get(_key(roi.name)) or FALLBACK_RGB[(number - 1) % len(FALLBACK_RGB)]
        try:
            rgb = list(_rgb(colour))
        except (ValueError, TypeError) as exc:
            raise DicomObjectError(f"{name}: ROI '{roi.name}': {exc}") from None
        rc = pydicom.Dataset()
        rc.ROIDisplayColor, rc.ReferencedROINumber = rgb, number
        if roi_contours:
            rc.ContourSequence = pydicom.Sequence()
        for n, (k, rowcol) in enumerate(roi_contours, start=1):
            lps = (np.asarray(ref.positions[k], float) + np.outer(rowcol[:, 1] * col_spacing, row_cos)
                   + np.outer(rowcol[:, 0] * row_spacing, col_cos))
            c = pydicom.Dataset()
            c.ContourNumber = n
            c.ContourImageSequence = pydicom.Sequence([_image(image_class, ref.sop_instance_uids[k])])
            c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(lps)
            c.ContourData = [f"{v:.3f}" for v in lps.ravel()]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
        observation = pydicom.Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        category = codes.get(_key(roi.name), codes[None])[0]
        observation.RTROIInterpretedType = "ORGAN" if category.value == "91723000" else ""  # anatomical structure
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    try:
        with replaced_atomically(path, ".dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        raise DicomObjectError(f"{path}: could not write the RTSTRUCT ({exc.strerror or exc})") from None
    return path


def slice_contours(on: np.ndarray) -> list[np.ndarray]:
    """Closed polygons, (row, column) in pixels, around the True pixels of a 2D mask, half-way
    between pixel centres (marching squares at 0.5; diagonal neighbours are not joined): a pixel
    centre is inside an odd number of them exactly when the pixel is on. Points where the
    boundary runs straight on are dropped (they change nothing)."""
    from skimage import measure

    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if not len(rows):
        return []
    r0, c0 = rows[0] - 1, cols[0] - 1  # a background border, so that every contour closes
    crop = np.pad(np.asarray(on[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], np.float32), 1)
    out = []
    for contour in measure.find_contours(crop, 0.5):
        points = contour[:-1] if np.array_equal(contour[0], contour[-1]) else contour
        step = np.diff(np.vstack([points, points[:1]]), axis=0)  # point i to point i + 1
        turn = np.roll(step, 1, axis=0)[:, 0] * step[:, 1] - np.roll(step, 1, axis=0)[:, 1] * step[:, 0]
        points = points[np.abs(turn) > 1e-9]
        if len(points) >= 3:
            out.append(points + (r0, c0))
    return out


def _image(sop_class: str, uid: str):
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
    return item


def _structure_set(source, ref, name: str, description: str, version: str):
    """The RT Structure Set's header: patient and study from the CT's ``source`` header, a new
    series, the structure set's references to the CT's series and every image; empty ROI lists."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTSTRUCT_SOP_CLASS, generate_uid()
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if source.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    for keyword in TYPE2_PATIENT_STUDY:  # "required, may be empty"; anonymised CTs drop some
        setattr(ds, keyword, source.get(keyword, None))
    ds.StudyInstanceUID = ref.study_uid
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    try:
        ds.SeriesNumber = int(source.get("SeriesNumber", 0) or 0) + 2000
    except (TypeError, ValueError):
        ds.SeriesNumber = 2000
    ds.SeriesDescription, ds.OperatorsName = description, None
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "napari-ctseg", "napari-ctseg", str(version)
    ds.InstanceNumber = 1
    # The Frame of Reference module, which the RT Structure Set IOD now includes (dciodvfy asks for it)
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid
    ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", None)
    ds.StructureSetLabel, ds.StructureSetName = "napari-ctseg", description
    ds.StructureSetDate, ds.StructureSetTime = date, time
    series = pydicom.Dataset()
    series.SeriesInstanceUID = ref.series_uid
    image_class = ref.sop_class_uid or str(source.get("SOPClassUID", "")) or "1.2.840.10008.5.1.4.1.1.2"
    series.ContourImageSequence = pydicom.Sequence([_image(image_class, uid) for uid in ref.sop_instance_uids])
    study = _image(_STUDY_SOP_CLASS, ref.study_uid)
    study.RTReferencedSeriesSequence = pydicom.Sequence([series])
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = ref.frame_of_reference_uid
    frame.RTReferencedStudySequence = pydicom.Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = pydicom.Sequence([frame])
    ds.StructureSetROISequence, ds.ROIContourSequence = pydicom.Sequence(), pydicom.Sequence()
    ds.RTROIObservationsSequence = pydicom.Sequence()
    return ds
