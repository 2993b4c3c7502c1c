"""RT Structure Sets: each ROI's closed planar contours filled on the CT slices they lie on (pydicom, scikit-image).

See ``napari_ctseg.io.dicom_objects`` for the rules (holes by even-odd, open contours left out).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom

from napari_ctseg.errors import DicomObjectError
from napari_ctseg.io.dicom_objects.common import FALLBACK_RGB, LabelMap, Segment, _Maps, _READ_ERRORS, _Slices, _one_line, _referenced_series, object_kind
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
