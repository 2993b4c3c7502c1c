"""Reading one case: a CT volume with its expert, silver-standard or pseudo labels, a host CT
without infection (with its lungs), or an 8-bit infection slice with its mask; the one mask
reader (``read_mask``) and the square a case is seen through (``case_crop``)."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_ctseg.errors import TrainingError
from napari_ctseg.models.preprocess import Preprocessing, SliceCrop, find_crop, mask_crop
from napari_ctseg.training.labels.silver import silver_lung_labels, silver_lungs_and_airways
from napari_ctseg.training.config import TARGET_LABELS

MASK_FILES = {"lungs": "lungs.nii.gz", "liver": "liver.nii.gz"}


@dataclass
class Case:
    """One training or validation case: a HU volume (z, y, x) or an 8-bit windowed slice, with labels."""

    name: str
    labels: np.ndarray
    hu: np.ndarray | None = None
    image8: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    lungs: np.ndarray | None = None  # lung mask on the volume's grid (infection hosts and negatives)
    # Pixels the loss ignores (bool, the labels' grid): e.g. the marks a silver label's
    # cleaning dropped, which may still be real lesions.
    ignore: np.ndarray | None = None
    # Sampling group ("expert", "silver_slices", "pseudo_hu", ...): with the config's
    # ``group_shares`` each group gets its share of the batches, whatever its size.
    group: str = "expert"
    negative: bool = False  # a scan without the target: scored by what it wrongly marks
    slices: np.ndarray | None = None  # (z,) bool: the slices that carry labels (None: all)
    # "mask"-crop models (a second stage): the square and the slices the network sees. None:
    # from the case's own labels (training), see ``case_crop``.
    crop: SliceCrop | None = None
    z_box: np.ndarray | None = None


def case_crop(case: Case, prep: Preprocessing) -> tuple[SliceCrop, np.ndarray | None]:
    """The square a case is seen through and, for a ``"mask"`` crop, the slices it is seen on.

    A body or whole-slice crop comes from the CT (``find_crop``); a mask crop from
    ``case.crop``/``case.z_box`` when a first stage set them, else from the case's own
    labels (training: the expert organ, widened by the preprocessing's margins).
    """
    if prep.crop != "mask":
        return find_crop(case.hu, prep), None
    if case.crop is not None:
        return case.crop, case.z_box
    found = mask_crop(case.labels > 0, case.spacing, prep)
    if found is None:  # no organ: the whole slice, no slice
        return find_crop(case.hu, replace(prep, crop="none")), np.arange(0)
    return found


PSEUDO_METHOD = (
    "pseudo-labels from the radiologists' slice-level labels: on a slice labelled clean, no infection; "
    "on a slice labelled infected, the infection of the named model version kept only inside the lungs "
    "(lungs version named) on the side(s) of the lobes the radiologists named, 2D islands under 20 mm2 "
    "dropped; only the named block of InstanceNumbers is used (the rest of the scan stays held out)"
)


def load_pseudo_case(data_dir, spec: dict[str, Any]) -> Case:
    """A COVID-19 scan with slice-level labels (``labels.json``) as a pseudo-labelled case.

    ``spec``: ``{"case": folder, "instances": [first, last], "lungs": version, "infection": version}``.
    """
    from napari_ctseg.segmentation.inference import ModelSet, segment
    from napari_ctseg.io import read_scan

    folder = Path(data_dir) / spec["case"]
    vol = read_scan(folder / "dicom")
    info = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    inst = instance_numbers_by_z(folder / "dicom", vol.shape[0])
    first, last = (int(v) for v in spec["instances"])
    res = segment(vol, ["lungs", "infection"], "cpu",
                  models=ModelSet({"lungs": spec["lungs"], "infection": spec["infection"]}))
    lungs, inf = res.masks["lungs"], res.masks["infection"] > 0
    infected = {int(i) for i in info["infected_instances"]}
    lobes = info.get("lobes_by_instance", {})
    px_mm2 = vol.spacing[1] * vol.spacing[2]
    labels = np.zeros(vol.shape, np.uint8)
    slices = np.zeros(vol.shape[0], bool)
    from scipy import ndimage

    for z, i in enumerate(inst):
        if not first <= i <= last:
            continue
        slices[z] = True
        if i not in infected:
            continue
        sides = {1 if "right" in lobe else 2 for lobe in lobes.get(str(i), ["right", "left"])}
        m = inf[z] & np.isin(lungs[z], list(sides))
        lab, n = ndimage.label(m)
        if n:
            keep = np.bincount(lab.ravel()) * px_mm2 >= 20.0
            keep[0] = False
            m = keep[lab]
        labels[z] = m
    return Case(name=f"{spec['case']}[{first}-{last}]", labels=labels, hu=np.asarray(vol.hu), group="pseudo_hu",
                spacing=tuple(vol.spacing), slices=slices)


def instance_numbers_by_z(dicom_dir: Path, n_slices: int) -> list[int]:
    """InstanceNumber of each display slice z (0 = the head end), from the slice positions."""
    import pydicom

    rows = []
    for f in sorted(Path(dicom_dir).iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - other files in the folder
            continue
        if "ImagePositionPatient" in ds and "InstanceNumber" in ds:
            rows.append((float(ds.ImagePositionPatient[2]), int(ds.InstanceNumber)))
    rows.sort(key=lambda r: -r[0])  # patient z (LPS) grows towards the head: the head end first
    if len(rows) != n_slices:
        raise TrainingError(f"{dicom_dir}: {len(rows)} slices with positions, the volume has {n_slices}")
    return [r[1] for r in rows]


def load_host_case(data_dir, name: str) -> Case:
    """A CT without infection, with its lung mask (expert ``lungs.nii.gz`` when there is one,
    else silver-standard): a negative, and a host for synthetic lesions."""
    folder = Path(data_dir) / name
    ct = _read_case_scan(folder, name)
    hu = np.asarray(ct.hu)
    lung_path = folder / "lungs.nii.gz"
    if lung_path.is_file():
        lungs = read_mask(lung_path, ct, "lungs") > 0
    else:
        lungs = silver_lung_labels(hu, ct.spacing) > 0
    return Case(name=name, labels=np.zeros(hu.shape, np.uint8), hu=hu, spacing=tuple(ct.spacing),
                lungs=lungs, negative=True)


def load_case(target: str, data_dir, name: str, silver: bool = False, airway_label: int | None = None) -> Case:
    """Read one case of ``data_dir`` (see the module docstring for the layout).

    ``silver``: lungs only; the labels are made by ``silver_lung_labels`` from the CT
    (no mask file needed).
    """
    data_dir = Path(data_dir)
    if target == "infection":
        return _load_infection_case(data_dir, name)
    from napari_ctseg.io.nifti import read_nifti

    folder = data_dir / name
    if silver:
        if target != "lungs":
            raise TrainingError(f"silver-standard labels exist for lungs only, not {target}")
        ct = _read_case_scan(folder, name)
        hu = np.asarray(ct.hu)
        labels, airways = silver_lungs_and_airways(hu, ct.spacing)
        if airway_label:
            labels[airways & (labels == 0)] = airway_label
        return Case(name=name, labels=labels, hu=hu, spacing=tuple(ct.spacing))
    ct_path, mask_path = folder / "ct.nii.gz", folder / MASK_FILES[target]
    for p in (ct_path, mask_path):
        if not p.is_file():
            raise TrainingError(f"{p}: missing; case {name!r} needs ct.nii.gz and {MASK_FILES[target]}")
    ct = read_nifti(ct_path)
    labels = read_mask(mask_path, ct, target)
    return Case(name=name, labels=labels, hu=np.asarray(ct.hu), spacing=tuple(ct.spacing))


def read_mask(path: Path, ct, target: str, labels: dict[str, int] | None = None) -> np.ndarray:
    """An expert or corrected mask (NIfTI, or a DICOM SEG or RTSTRUCT ``.dcm`` on a DICOM scan) on the CT's
    display grid, uint8: the one mask reader of training, fine-tuning and evaluation (same shape
    *and* affine as the scan, only the ``labels`` values, default the target's training labels;
    ``TrainingError`` otherwise). A SEG's segments (an RTSTRUCT's ROIs) are matched to the labels
    by name (as ``write_seg`` and ``write_rtstruct`` name them: "right lung" for ``right_lung``)."""
    from napari_ctseg.evaluation.evaluate import EvaluationError, read_reference_volume

    if Path(path).suffix.lower() == ".dcm":
        return _read_seg_mask(Path(path), ct, labels if labels is not None else TARGET_LABELS[target])
    try:
        labels = read_reference_volume(Path(path), ct.geometry, target,
                                       labels if labels is not None else TARGET_LABELS[target])
    except EvaluationError as exc:
        raise TrainingError(str(exc)) from None
    return np.ascontiguousarray(ct.geometry.to_display(labels)).astype(np.uint8)


def _read_seg_mask(path: Path, ct, labels: dict[str, int]) -> np.ndarray:
    from napari_ctseg.errors import CTSegError
    from napari_ctseg.io.dicom_objects import read_object

    try:
        maps = read_object(path, ct)  # a SEG or an RTSTRUCT, by content
    except CTSegError as exc:
        raise TrainingError(str(exc)) from None
    key = {name.lower().replace("_", " ").strip(): v for name, v in labels.items()}
    out = np.zeros(np.shape(ct.hu), np.uint8)
    unknown = []
    for m in maps:
        for seg in m.segments:
            v = key.get(seg.name.lower().replace("_", " ").strip())
            if v is None:
                unknown.append(seg.name)
            else:
                out[m.data == seg.value] = v
    if unknown:
        raise TrainingError(f"{path.name}: segment(s) {', '.join(unknown)} are not labels of this target "
                            f"({', '.join(labels)})")
    return out


def _read_case_scan(folder: Path, name: str):
    """A case's CT: ``ct.nii.gz``, or else the DICOM series in ``dicom/`` (read by our reader)."""
    from napari_ctseg.io import read_scan
    from napari_ctseg.io.nifti import read_nifti

    if (folder / "ct.nii.gz").is_file():
        return read_nifti(folder / "ct.nii.gz")
    if (folder / "dicom").is_dir():
        return read_scan(folder / "dicom")
    raise TrainingError(f"{folder}: case {name!r} needs ct.nii.gz or a dicom/ folder")


def _load_infection_case(data_dir: Path, name: str) -> Case:
    from PIL import Image

    folder, _, ident = name.rpartition("/")
    img_path = data_dir / folder / "images" / f"{ident}.jpg"
    mask_path = data_dir / folder / "masks" / f"{ident}.png"
    for p in (img_path, mask_path):
        if not p.is_file():
            raise TrainingError(f"{p}: missing; case {name!r} needs images/{ident}.jpg and masks/{ident}.png")
    try:
        image = np.asarray(Image.open(img_path).convert("L"))
        mask = np.asarray(Image.open(mask_path).convert("L"))
    except OSError as exc:
        raise TrainingError(f"{img_path.parent.parent}: case {name!r} cannot be read ({exc})") from None
    if image.shape != mask.shape:
        raise TrainingError(f"{mask_path}: size {mask.shape} does not match the image's {image.shape}")
    return Case(name=name, labels=(mask > 127).astype(np.uint8), image8=image, spacing=None)
