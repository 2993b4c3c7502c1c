"""Validation: a model's Dice on the validation cases (every ``metrics.compare`` figure
with ``full``), negative scans scored by what the model wrongly marks in the lung."""
from __future__ import annotations

from typing import Any

import numpy as np

from napari_ctseg.evaluation.metrics import compare, dice
from napari_ctseg.models.predict import predict_image8, predict_volume
from napari_ctseg.models.preprocess import Preprocessing
from napari_ctseg.training.cases import Case, case_crop


def _predict_case(model, case: Case, prep: Preprocessing, device) -> np.ndarray:
    if case.hu is not None and prep.crop == "mask":
        crop, z_box = case_crop(case, prep)
        out = np.zeros(case.hu.shape, np.uint8)
        if len(z_box):
            # context at the box's ends: the slices beyond it, as at inference
            lo, hi = max(z_box[0] - prep.context, 0), min(z_box[-1] + 1 + prep.context, case.hu.shape[0])
            sub = case.hu[lo:hi]
            pred = predict_volume(model, sub, prep, crop=crop, device=device)
            out[z_box[0]:z_box[-1] + 1] = pred[z_box[0] - lo:z_box[0] - lo + len(z_box)]
        return out
    if case.hu is not None:
        return predict_volume(model, case.hu, prep, device=device)
    return predict_image8(model, case.image8, prep, device=device)


def case_dice(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> float:
    """Mean Dice over a target's labels."""
    return float(np.mean([dice(pred == v, ref == v) for v in labels.values()]))


NEGATIVE_TOLERANCE_PCT = 1.0


def validate(model, cases: list[Case], prep: Preprocessing, labels: dict[str, int], device,
             full: bool = False) -> dict[str, Any]:
    """Dice per case (mean over labels) and their mean; with ``full``, every figure of
    ``metrics.compare`` per label (HD95 and ASD in mm for volumes; for 8-bit slices,
    which have no spacing, Dice and IoU only) and the Dice pooled over all cases.

    A ``negative`` case (a scan without the target, with its lung mask) is scored by what
    the model wrongly marks inside the lung: ``1 - min(1, false-positive % of the lung /
    NEGATIVE_TOLERANCE_PCT)``. ``mean_dice`` is the mean over the positive cases; the
    ``selection`` score (what picks the checkpoint) is the mean of the positive and the
    negative means when there are negative cases, else ``mean_dice``."""
    was_training = model.training
    model.eval()
    per_case: dict[str, Any] = {}
    pooled = {name: [0, 0] for name in labels}  # intersection, size sum
    try:
        for case in cases:
            pred = _predict_case(model, case, prep, device)
            if case.negative:
                lung = case.lungs if case.lungs is not None else np.ones(pred.shape, bool)
                fp = 100.0 * float(np.count_nonzero((pred > 0) & lung)) / max(int(lung.sum()), 1)
                score = max(0.0, 1.0 - fp / NEGATIVE_TOLERANCE_PCT)
                per_case[case.name] = ({"dice": score, "negative": True, "false_positive_pct_of_lung": fp}
                                       if full else score)
                continue
            d = case_dice(pred, case.labels, labels)
            for name, v in labels.items():
                p, r = pred == v, case.labels == v
                pooled[name][0] += int(np.logical_and(p, r).sum())
                pooled[name][1] += int(p.sum() + r.sum())
            if full and case.spacing is not None:
                per_case[case.name] = {"dice": d, "labels": compare(pred, case.labels, case.spacing, labels)}
            elif full:  # an 8-bit slice: no spacing, so no distances or volumes
                per_case[case.name] = {"dice": d, "labels": {
                    name: {"dice": dice(pred == v, case.labels == v),
                           "iou": compare(pred, case.labels, None, {name: v}, distances=False)[name]["iou"],
                           "pixels": int((pred == v).sum()), "reference_pixels": int((case.labels == v).sum())}
                    for name, v in labels.items()}}
            else:
                per_case[case.name] = d
    finally:
        model.train(was_training)
    neg_names = {c.name for c in cases if c.negative}
    pos = [c["dice"] if full else c for n, c in per_case.items() if n not in neg_names]
    neg = [c["dice"] if full else c for n, c in per_case.items() if n in neg_names]
    mean_pos = float(np.mean(pos)) if pos else float(np.mean(neg))
    out = {"mean_dice": mean_pos, "cases": per_case}
    out["selection"] = 0.5 * (mean_pos + float(np.mean(neg))) if (neg and pos) else mean_pos
    if neg:
        out["negative_score"] = float(np.mean(neg))
    out["pooled_dice"] = {name: (2.0 * i / s if s else 1.0) for name, (i, s) in pooled.items()}
    return out
