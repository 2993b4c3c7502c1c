"""Opening a folder or a SEG/RTSTRUCT file with its CT: the Image and one label map per object."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pydicom

from napari_ctseg.errors import CTSegError, DicomObjectError
from napari_ctseg.io.dicom_objects.common import DicomObject, LabelMap, OBJECT_KINDS, _READ_ERRORS, describe_object, find_objects, object_kind
from napari_ctseg.io.dicom_objects.rtstruct import read_rtstruct
from napari_ctseg.io.dicom_objects.seg import read_seg
from napari_ctseg.io.volume import CTVolume

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
