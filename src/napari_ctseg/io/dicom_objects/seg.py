"""DICOM SEG: read a SEG onto its CT (highdicom), and write a mask as a binary DICOM SEG.

See ``napari_ctseg.io.dicom_objects`` for what reading gives and how overlapping segments are spread
over label maps; ``write_seg`` references the source series and codes each segment (``_segment_codes``).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
import json
import warnings

import numpy as np
import pydicom

from napari_ctseg._files import replaced_atomically, same_file
from napari_ctseg.errors import DicomObjectError
from napari_ctseg.io.dicom_objects.common import FALLBACK_RGB, LabelMap, Segment, TYPE2_PATIENT_STUDY, _Maps, _READ_ERRORS, _Slices, _one_line, _referenced_series
from napari_ctseg.io.volume import CTVolume, DicomSeries, Geometry

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
    return check_dicom_source(ct, name, "DICOM SEG")


def check_dicom_source(ct, name: str, what: str, path=None) -> DicomSeries:
    """The DICOM series an object ``what`` ("DICOM SEG", "RTSTRUCT") on ``ct`` would reference:
    one with UIDs, a Frame of Reference UID and slice positions and orientation; otherwise a
    one-line ``DicomObjectError`` naming ``name`` that says to save as NIfTI. With ``path`` (where
    the object is to be written), also refused when that is one of the CT's own files."""
    geometry = ct.geometry if isinstance(ct, CTVolume) else ct
    ref = geometry.dicom if isinstance(geometry, Geometry) else None
    if ref is None:
        kind = (geometry.source_kind if isinstance(geometry, Geometry) else "") or "not DICOM"
        raise DicomObjectError(f"{name}: {what} needs the DICOM CT it was made from (this scan is "
                               f"{'NIfTI' if kind == 'nifti' else kind}, which has no DICOM UIDs); save as NIfTI")
    if not ref.frame_of_reference_uid:
        raise DicomObjectError(f"{name}: the series {ref.series_uid} has no Frame of Reference UID, which {what} "
                               "needs (some exports, such as 3D-IRCADb's, have none); save as NIfTI")
    if not ref.positions or len(ref.orientation) != 6:
        raise DicomObjectError(f"{name}: the series' slices have no ImagePositionPatient/ImageOrientationPatient, "
                               f"which {what} needs; save as NIfTI")
    if path is not None and any(same_file(Path(path), f) for f in ref.files):
        raise DicomObjectError(f"{name}: this is one of the CT's own files; choose another name "
                               "(the scan is never overwritten)")
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
    ref = check_dicom_source(geometry, name, "DICOM SEG", path)
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
