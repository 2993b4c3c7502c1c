"""Evaluate a model on data with expert masks: per-case and mean Dice, IoU, HD95, ASD (Qt-free).

Two data layouts, found by ``detect_layout``:

* ``volumes`` (lungs, liver): ``DIR/<case>/ct.nii.gz`` (HU) with ``DIR/<case>/<target>.nii.gz``
  (the expert mask on the same grid: lungs 0/1 right/2 left, liver and infection 0/1).
  Each scan is segmented with ``inference.segment`` (post-processing included, as a user
  gets it) and the mask written as ``PRED/<case>.nii.gz`` on the scan's exact geometry.
  Prediction and expert mask are compared on the source voxel grid; distances are in mm
  from the scan's voxel size.
* ``slices`` (infection): ``DIR/images/<name>.jpg|png`` (8-bit slices already in a lung
  window, like COVID-SemiSeg) with ``DIR/masks/<name>.png`` (0/255). Each slice goes
  through the model as ``models.predict.predict_image8`` (no lung mask exists for a lone
  slice, so nothing restricts the result) and is written as ``PRED/<name>.png`` (0/255,
  the image's size). These images carry no pixel size, so HD95 and ASD are in pixels.

A case without an expert mask is still predicted; its figures are ``None`` and its note
says "no ground truth". Means are over the cases with ground truth; a distance that does
not exist (one mask empty, the other not: see ``metrics``) is left out of the distance
means and counted.

``evaluate_steps`` is a generator yielding ``EvaluationProgress`` and returning an
``EvaluationReport``; ``evaluate`` runs it inline (CLI, tests, benchmarks).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_ctseg.evaluation import metrics
from napari_ctseg.errors import CTSegError
from napari_ctseg.jobs import Progress

LAYOUTS = ("volumes", "slices")
CT_FILE = "ct.nii.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SPLITS_FILE = Path(__file__).resolve().parent.parent / "models" / "splits.json"
# The structure each target's headline figures are about; lungs also get one row per lung.
PRIMARY = {"lungs": "lung", "liver": "liver", "infection": "infection"}
# Affines of a scan and its mask must agree to this many mm (float32 headers round).
AFFINE_TOLERANCE_MM = 1e-3
NO_GROUND_TRUTH = "no ground truth"


class EvaluationError(CTSegError):
    """The evaluation data cannot be used as given (missing folder, mismatched mask, ...)."""


class EvaluationProgress(Progress):
    """The one event type of long jobs (``jobs.Progress``): ``done`` of ``total`` steps (cases,
    or slices within a scan) finished; ``message`` says what runs; ``stage`` is the case."""

    @property
    def case(self) -> str:
        return self.stage


@dataclass
class CaseResult:
    """One case: where its prediction went and how it agrees with the expert mask.

    ``dice``, ``iou``, ``hd95`` and ``asd`` are about the target's structure as a whole
    (for lungs: both lungs together); ``labels`` holds the same figures per label where
    the target has several (right lung, left lung), plus the predicted and reference
    size (``predicted``/``reference``: mL for volumes, pixels for slices). All are
    ``None`` when the case has no ground truth. ``hd95``/``asd`` are ``nan`` when one
    mask is empty and the other is not. ``distance_unit`` is "mm" or "px".
    """

    name: str
    prediction: str
    has_ground_truth: bool
    dice: float | None = None
    iou: float | None = None
    hd95: float | None = None
    asd: float | None = None
    predicted: float | None = None
    reference: float | None = None
    labels: dict[str, dict[str, float]] = field(default_factory=dict)
    distance_unit: str = "mm"
    size_unit: str = "mL"
    shape: tuple[int, ...] = ()
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "name": self.name, "prediction": self.prediction, "has_ground_truth": self.has_ground_truth,
            "dice": self.dice, "iou": self.iou, "hd95": self.hd95, "asd": self.asd,
            "predicted": self.predicted, "reference": self.reference, "labels": self.labels,
            "distance_unit": self.distance_unit, "size_unit": self.size_unit, "shape": list(self.shape),
            "seconds": round(self.seconds, 3), "note": self.note,
        })


@dataclass
class EvaluationReport:
    """Every case of one evaluation run, and their means (see ``mean``)."""

    target: str
    layout: str
    data_dir: str
    predictions_out: str
    device: str
    versions: dict[str, str]
    cases: list[CaseResult]
    notes: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        """The version of the evaluated target's model."""
        return self.versions.get(self.target, "")

    @property
    def distance_unit(self) -> str:
        return "px" if self.layout == "slices" else "mm"

    @property
    def scored(self) -> list[CaseResult]:
        """The cases with ground truth."""
        return [c for c in self.cases if c.has_ground_truth]

    def mean(self) -> dict[str, Any]:
        """Mean Dice, IoU, HD95, ASD over the cases with ground truth, and per label.

        ``n`` counts those cases; ``n_no_distance`` those whose HD95 is undefined (left
        out of the distance means). Values are ``nan`` when no case has ground truth.
        """
        scored = self.scored
        out: dict[str, Any] = _mean_of([_figures_of(c) for c in scored])
        names = list(dict.fromkeys(name for c in scored for name in c.labels))
        if names:
            out["labels"] = {name: _mean_of([c.labels[name] for c in scored if name in c.labels])
                             for name in names}
        return out

    def table(self) -> str:
        """Per-case figures and the mean, as plain text (one row per case, per lung indented)."""
        unit = self.distance_unit
        head = f"{'case':<28} {'Dice':>6} {'IoU':>6} {'HD95 ' + unit:>9} {'ASD ' + unit:>9}  note"
        lines = [f"{self.target} (model {self.version or '?'}, {self.layout}, {self.device})", head]
        for c in self.cases:
            lines.append(_row(c.name, _figures_of(c), c.note))
            for name, fig in c.labels.items():
                lines.append(_row(f"  {name}", fig, ""))
        m = self.mean()
        n, total = m["n"], len(self.cases)
        note = f"{n} of {total} case(s) with ground truth"
        if m["n_no_distance"]:
            note += f"; {m['n_no_distance']} without a defined distance (one mask empty)"
        lines.append(_row(f"mean ({n})", m, note))
        for name, fig in m.get("labels", {}).items():
            lines.append(_row(f"  {name}", fig, ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; undefined figures (nan) become ``None``."""
        return _clean({
            "target": self.target, "version": self.version, "versions": self.versions,
            "layout": self.layout, "data_dir": self.data_dir, "predictions_out": self.predictions_out,
            "device": self.device, "distance_unit": self.distance_unit,
            "cases": [c.to_dict() for c in self.cases], "mean": self.mean(), "notes": self.notes,
        })


# --- figures -------------------------------------------------------------------------------

def _figures_of(c: CaseResult) -> dict[str, float | None]:
    return {"dice": c.dice, "iou": c.iou, "hd95": c.hd95, "asd": c.asd}


def _mean_of(rows: list[dict[str, float | None]]) -> dict[str, Any]:
    def mean(key):
        return metrics.mean_ignoring_nan([r.get(key) for r in rows])

    undefined = sum(1 for r in rows if r.get("hd95") is None or not math.isfinite(r["hd95"]))
    return {"dice": mean("dice"), "iou": mean("iou"), "hd95": mean("hd95"), "asd": mean("asd"),
            "n": len(rows), "n_no_distance": undefined}


def _fmt(v, digits: int) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}f}"


def _row(name: str, fig: dict, note: str) -> str:
    return (f"{name:<28} {_fmt(fig.get('dice'), 3):>6} {_fmt(fig.get('iou'), 3):>6} "
            f"{_fmt(fig.get('hd95'), 1):>9} {_fmt(fig.get('asd'), 2):>9}  {note}").rstrip()


def _clean(obj):
    """nan/inf to None, numpy scalars to Python ones, recursively."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def score(pred: np.ndarray, ref: np.ndarray, spacing=None) -> dict[str, float]:
    """Dice, IoU, HD95 and ASD of two boolean masks, and the size of each.

    ``spacing`` per axis in mm gives distances in mm and sizes in mL; ``None`` gives
    pixels for both.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if spacing is None:
        predicted, reference = float(pred.sum()), float(ref.sum())
    else:
        predicted, reference = metrics.volume_ml(pred, spacing), metrics.volume_ml(ref, spacing)
    return {"dice": metrics.dice(pred, ref), "iou": metrics.iou(pred, ref),
            "hd95": metrics.hd95(pred, ref, spacing), "asd": metrics.asd(pred, ref, spacing),
            "predicted": predicted, "reference": reference}


def _label_names(target: str, version: str | None = None, registry=None) -> dict[str, int]:
    """The label names (display form) and values of the target's model card."""
    from napari_ctseg.models.definition import label_display_name
    from napari_ctseg.models.registry import as_registry

    return {label_display_name(k): v for k, v in as_registry(registry).get_card(target, version).labels.items()}


def score_case(target: str, pred: np.ndarray, ref: np.ndarray, spacing=None, version: str | None = None,
               registry=None) -> tuple[dict[str, float], dict[str, dict[str, float]], str]:
    """The target's overall figures, the per-label ones (lungs) and a note, for label maps.

    Lungs are scored as one structure (any lung label) and, when the reference tells the
    lungs apart (holds label 2), per lung: 1 right, 2 left.
    """
    overall = score(pred > 0, ref > 0, spacing)
    per_label: dict[str, dict[str, float]] = {}
    note = ""
    names = _label_names(target, version, registry)
    if len(names) > 1:
        if np.any(ref == max(names.values())):
            per_label = {name: score(pred == v, ref == v, spacing) for name, v in names.items()}
        else:
            note = "ground truth does not tell the labels apart: scored as one structure"
    return overall, per_label, note


# --- data ----------------------------------------------------------------------------------

def detect_layout(data_dir) -> str:
    """``"slices"`` when ``data_dir`` has an ``images/`` folder, else ``"volumes"``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise EvaluationError(f"{data_dir}: no such folder; give the folder that holds the cases")
    return "slices" if (data_dir / "images").is_dir() else "volumes"


def list_cases(data_dir, layout: str | None = None) -> list[str]:
    """The case names of a data folder, in natural order (see the module docstring)."""
    data_dir = Path(data_dir)
    layout = layout or detect_layout(data_dir)
    if layout == "slices":
        names = {p.stem for p in (data_dir / "images").iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
    else:
        names = {p.name for p in data_dir.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and (p / CT_FILE).is_file()}
    return sorted(names, key=_natural)


def _natural(s: str):
    import re
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(s)) if p]


def load_split(target: str, split: str = "validation", path=None) -> list[str]:
    """The case names of a target's split in ``models/splits.json`` (e.g. ``covid_semiseg_train/1``)."""
    path = Path(path) if path is not None else SPLITS_FILE
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read the splits ({exc})") from None
    if target not in splits:
        raise EvaluationError(f"{path}: no split for target {target!r}")
    names = splits[target].get(split)
    if not isinstance(names, list) or not names:
        known = [k for k, v in splits[target].items() if isinstance(v, list)]
        raise EvaluationError(f"{path}: target {target!r} has no {split!r} split; splits: {', '.join(known)}")
    return [str(n) for n in names]


def resolve_cases(data_dir, cases: Iterable[str] | str | None) -> tuple[Path, list[str] | None]:
    """The data folder and bare case names for ``cases``.

    Names may be written as in ``splits.json``, ``<folder>/<id>``: when ``folder`` is the
    data folder's own name the prefix is dropped, and when it is a subfolder of the data
    folder, that subfolder becomes the data folder (so ``--data ../shared/data`` works
    for every target's split).
    """
    data_dir = Path(data_dir)
    if cases is None:
        return data_dir, None
    if isinstance(cases, str):
        cases = [c.strip() for c in cases.split(",")]
    names = [str(c).strip().strip("/") for c in cases if str(c).strip()]
    if not names:
        raise EvaluationError("no case names given; leave --cases out to evaluate every case")
    prefixes = {n.rpartition("/")[0] for n in names}
    if len(prefixes) == 1 and (prefix := prefixes.pop()):
        if (data_dir / prefix).is_dir():
            data_dir = data_dir / prefix
        elif data_dir.name != prefix:
            raise EvaluationError(f"{data_dir}: cases {', '.join(names[:3])}... are in folder "
                                  f"{prefix!r}, which is neither this folder nor inside it")
        names = [n.rpartition("/")[2] for n in names]
    bad = [n for n in names if "/" in n]
    if bad:
        raise EvaluationError(f"case names {', '.join(bad)}: give names of cases inside {data_dir}")
    return data_dir, list(dict.fromkeys(names))


def _check_output_folder(data_dir: Path, out: Path, layout: str, names: list[str]) -> None:
    """Refuse an output folder where predictions could replace data (scans, expert masks)."""
    out_r, data_r = out.resolve(), data_dir.resolve()
    protected = {data_r}
    if layout == "slices":
        protected |= {data_r / "images", data_r / "masks"}
    else:
        protected |= {data_r / n for n in names}
    if out_r in protected:
        raise EvaluationError(f"{out}: predictions would go among the evaluation data; "
                              "choose another --predictions-out folder")
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"{out}: exists and is not a folder; choose another --predictions-out")


def source_spacing(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel size in mm along the source array's axes (i, j, k), from its affine."""
    affine = np.asarray(affine, dtype=float)
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def read_reference_volume(path: Path, geometry, target: str, labels: dict[str, int] | None = None) -> np.ndarray:
    """An expert mask (NIfTI) as integer labels on the source grid of the scan ``geometry``.

    ``labels`` (name -> value) are the values allowed; default: the active model card's.

    Raises ``EvaluationError`` when it is unreadable, does not share the scan's shape and
    affine, or holds labels that are not the target's.
    """
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise EvaluationError(f"{path}: not a readable NIfTI mask ({type(exc).__name__}: {exc})") from None
    shape = tuple(int(s) for s in data.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if shape != tuple(geometry.source_shape):
        raise EvaluationError(f"{path}: shape {'x'.join(map(str, data.shape))} differs from the scan's "
                              f"{'x'.join(map(str, geometry.source_shape))}; the mask must be on the scan's grid")
    data = data.reshape(shape)
    if not np.allclose(img.affine, geometry.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        diff = float(np.abs(np.asarray(img.affine) - geometry.affine).max())
        raise EvaluationError(f"{path}: its affine differs from the scan's by up to {diff:.3g} mm; "
                              "the mask must be on the scan's grid (same voxels, same position)")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise EvaluationError(f"{path}: holds non-integer values; an expert mask holds labels")
    values = data.astype(np.int32)
    return _check_labels(values, path, target, labels)


def _check_labels(labels: np.ndarray, path: Path, target: str, names: dict[str, int] | None = None
                  ) -> np.ndarray:
    allowed = set((names if names is not None else _label_names(target)).values())
    values = set(np.unique(labels).tolist()) - {0}
    if values <= allowed:
        return labels.astype(np.uint8)
    if len(allowed) == 1 and len(values) == 1:  # a binary mask stored as 0/255 or similar
        return (labels != 0).astype(np.uint8)
    raise EvaluationError(f"{path}: labels {sorted(values)} are not {target} labels "
                          f"{sorted(allowed | {0})}")


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except OSError as exc:
        raise EvaluationError(f"{path}: not a readable image ({exc})") from None


def read_reference_slice(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    """A 0/255 (or 0/1) PNG mask as a boolean (y, x) array of the image's size."""
    mask = _read_image(path)
    if mask.shape != tuple(size_hw):
        raise EvaluationError(f"{path}: size {mask.shape[1]}x{mask.shape[0]} differs from the image's "
                              f"{size_hw[1]}x{size_hw[0]} (width x height)")
    return mask > 127 if mask.max(initial=0) > 1 else mask > 0


def write_png_mask(path: Path, mask: np.ndarray) -> Path:
    """A boolean (y, x) mask as an 8-bit PNG, 0/255, written to a temporary file and renamed."""
    from PIL import Image

    from napari_ctseg._files import replaced_atomically

    try:
        with replaced_atomically(path, ".png") as tmp:
            Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L").save(tmp)
    except OSError as exc:
        raise EvaluationError(f"{path}: could not write the prediction ({exc.strerror or exc})") from None
    return path


# --- the run -------------------------------------------------------------------------------

def evaluate_steps(target: str, data_dir, predictions_out, version: str | None = None,
                   device: str = "cpu", cases: Iterable[str] | str | None = None, registry=None,
                   ) -> Generator[EvaluationProgress, None, EvaluationReport]:
    """Predict every case of ``data_dir`` with ``target``'s model and score it; yields progress.

    ``version``: the model version (default: the active one). ``cases``: only these
    (names, or ``<folder>/<id>`` as in ``splits.json``; see ``resolve_cases``).
    ``registry``: where the models are (default: ``ModelRegistry.default()``).
    Returns an ``EvaluationReport``. Raises ``EvaluationError`` (or another ``CTSegError``)
    for unusable input, naming the file.
    """
    from napari_ctseg.segmentation.inference import parse_targets
    from napari_ctseg.models.registry import as_registry

    registry = as_registry(registry)
    if not isinstance(target, str):
        raise EvaluationError(f"give one target: {', '.join(registry.targets())}")
    target = parse_targets([target.strip()], registry)[0]
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise EvaluationError(f"{data_dir}: no such folder; give the folder that holds the cases")
    data_dir, names = resolve_cases(data_dir, cases)
    layout = detect_layout(data_dir)
    available = list_cases(data_dir, layout)
    if names is None:
        names = available
        if not names:
            what = "images/<name>.jpg|png" if layout == "slices" else f"<case>/{CT_FILE}"
            raise EvaluationError(f"{data_dir}: no cases found (expected {what})")
    else:
        missing = [n for n in names if n not in set(available)]
        if missing:
            what = "in images/" if layout == "slices" else f"with {CT_FILE}"
            raise EvaluationError(f"{data_dir}: no case {', '.join(missing)} {what}")
    out = Path(predictions_out)
    _check_output_folder(data_dir, out, layout, names)
    if layout == "slices" and target != "infection":
        raise EvaluationError(f"{data_dir}: holds 8-bit slices (images/) without HU; only the infection "
                              f"model reads those. Evaluate {target} on CT volumes (<case>/{CT_FILE})")
    registry.get_card(target, version)  # a missing model or version fails here, before any work
    out.mkdir(parents=True, exist_ok=True)
    if layout == "slices":
        report = yield from _slice_steps(target, data_dir, out, names, version, device, registry)
    else:
        report = yield from _volume_steps(target, data_dir, out, names, version, device, registry)
    return report


def _volume_steps(target, data_dir: Path, out: Path, names, version, device, registry):
    from napari_ctseg.segmentation.inference import ModelSet, segment_steps
    from napari_ctseg.io import read_scan, write_mask

    models = ModelSet({target: version} if version else None, registry)
    results: list[CaseResult] = []
    notes: list[str] = []
    versions: dict[str, str] = {}
    used_device = device
    total = len(names)
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        case_dir = data_dir / name
        volume = read_scan(case_dir / CT_FILE)
        for w in volume.warnings:
            notes.append(f"{name}: {w}")
        steps = segment_steps(volume, [target], device, models=models)
        try:
            while True:
                p = next(steps)
                yield EvaluationProgress(i * 100 + int(98 * p.done / max(p.total, 1)), total * 100,
                                         f"{name}: {p.message}", name)
        except StopIteration as stop:
            result = stop.value
        versions.update(result.versions)
        used_device = result.device
        notes.extend(f"{name}: {n}" for n in result.notes if f"{name}: {n}" not in notes)
        mask = result.masks[target]
        pred_path = write_mask(out / f"{name}.nii.gz", mask, volume.geometry)
        gt_path = case_dir / f"{target}.nii.gz"
        case = CaseResult(name=name, prediction=str(pred_path), has_ground_truth=gt_path.is_file(),
                          shape=tuple(volume.geometry.source_shape))
        if case.has_ground_truth:
            yield EvaluationProgress(i * 100 + 99, total * 100, f"{name}: scoring", name)
            ref = read_reference_volume(gt_path, volume.geometry, target)
            pred = volume.geometry.to_source(mask)
            spacing = source_spacing(volume.geometry.affine)
            overall, per_label, note = score_case(target, pred, ref, spacing, version, registry)
            _fill(case, overall, per_label, note)
        else:
            case.note = NO_GROUND_TRUTH
        case.seconds = time.perf_counter() - t0
        results.append(case)
        yield EvaluationProgress((i + 1) * 100, total * 100, f"{name}: done", name)
    return EvaluationReport(target=target, layout="volumes", data_dir=str(data_dir),
                            predictions_out=str(out), device=used_device, versions=versions,
                            cases=results, notes=notes)


def _slice_steps(target, data_dir: Path, out: Path, names, version, device, registry):
    from napari_ctseg.segmentation.inference import choose_device
    from napari_ctseg.models.predict import predict_image8

    dev, device_note = choose_device(device)
    model, card = registry.load_model(target, version, device=dev)
    images = {p.stem: p for p in sorted((data_dir / "images").iterdir())
              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    results: list[CaseResult] = []
    total = len(names)
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        yield EvaluationProgress(i, total, f"{name}: predicting", name)
        image = _read_image(images[name])
        labels = predict_image8(model, image, card.preprocessing, device=dev)
        pred = labels == _label_names(target, version, registry)[PRIMARY[target]]
        pred_path = write_png_mask(out / f"{name}.png", pred)
        gt_path = data_dir / "masks" / f"{name}.png"
        case = CaseResult(name=name, prediction=str(pred_path), has_ground_truth=gt_path.is_file(),
                          distance_unit="px", size_unit="px", shape=tuple(image.shape))
        if case.has_ground_truth:
            ref = read_reference_slice(gt_path, image.shape)
            overall, per_label, note = score_case(target, pred.astype(np.uint8), ref.astype(np.uint8),
                                                  version=version, registry=registry)
            _fill(case, overall, per_label, note)
        else:
            case.note = NO_GROUND_TRUTH
        case.seconds = time.perf_counter() - t0
        results.append(case)
    yield EvaluationProgress(total, total, "done")
    notes = [device_note] if device_note else []
    notes.append("8-bit slices carry no pixel size: HD95 and ASD are in pixels")
    return EvaluationReport(target=target, layout="slices", data_dir=str(data_dir), predictions_out=str(out),
                            device=str(dev), versions={target: card.version}, cases=results, notes=notes)


def _fill(case: CaseResult, overall: dict, per_label: dict, note: str) -> None:
    case.dice, case.iou = overall["dice"], overall["iou"]
    case.hd95, case.asd = overall["hd95"], overall["asd"]
    case.predicted, case.reference = overall["predicted"], overall["reference"]
    case.labels = per_label
    case.note = note


def evaluate(target: str, data_dir, predictions_out, version: str | None = None, device: str = "cpu",
             cases: Iterable[str] | str | None = None,
             progress: Callable[[EvaluationProgress], None] | None = None, registry=None) -> EvaluationReport:
    """Run ``evaluate_steps`` to the end (``jobs.run``); ``progress`` gets each ``EvaluationProgress``."""
    from napari_ctseg.jobs import run

    return run(evaluate_steps(target, data_dir, predictions_out, version=version, device=device, cases=cases,
                              registry=registry), on_event=progress)
