"""The operating point of a one-class model, chosen on validation: the probability above which
a voxel is labelled (``decision = {"threshold": t}`` in the card; ``definition.logit_bias``).

A network trained with a Dice + cross-entropy loss is not calibrated to the question a user
asks ("is this slice infected?", "how much of the lung?"): its argmax (t = 0.5) may be more or
less cautious than the validation cases say it should be. ``sweep`` runs the network once per
threshold on

* the validation positives (8-bit slices with expert masks, or HU cases): mean per-case Dice
  of the raw network, as a card's ``validation`` measures it;
* the validation negatives (HU scans without the target): the share of the lungs marked, with
  the card's post-processing, as a user gets it (``inference.segment``, the lungs segmented once
  by the active lungs version);

and ``choose`` takes the threshold with the best validation Dice among those that keep every
validation negative within ``max_negative_pct``. Only validation cases go in: the held-out
figures of the chosen version are printed afterwards by ``benchmarks/chest.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from napari_ctseg.errors import TrainingError
from napari_ctseg.evaluation.metrics import dice

DEFAULT_GRID = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)


@dataclass
class SweepRow:
    threshold: float
    dice: float  # mean over the positives
    negative_pct: dict[str, float] = field(default_factory=dict)  # case -> % of the lungs marked

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "dice": round(self.dice, 4),
                "negative_pct_of_lungs": {k: round(v, 3) for k, v in self.negative_pct.items()}}


def sweep(target: str, version: str, positives: Sequence[tuple[str, np.ndarray, np.ndarray]],
          negatives: Sequence[tuple[str, object]], thresholds: Sequence[float] = DEFAULT_GRID,
          registry=None, progress: Callable[[str], None] | None = None) -> list[SweepRow]:
    """One ``SweepRow`` per threshold. ``positives``: (name, 8-bit image (y, x), expert mask);
    ``negatives``: (name, ``CTVolume`` without the target). The network is loaded once; each
    threshold only changes the bias added to its logits."""
    from napari_ctseg.segmentation.inference import ModelSet, segment
    from napari_ctseg.models.definition import logit_bias
    from napari_ctseg.models.predict import predict_image8
    from napari_ctseg.models.registry import as_registry

    registry = as_registry(registry)
    card = registry.get_card(target, version)
    if card.n_classes != 2:
        raise TrainingError(f"{target} {version}: an operating point needs one foreground class")
    value = next(iter(card.labels.values()))
    models = ModelSet({target: card.version}, registry)
    cpu = torch.device("cpu")
    volume_model, _ = models.get(target, cpu)
    slice_model, _ = registry.load_model(target, card.version)
    lungs: dict[str, np.ndarray] = {}
    for name, vol in negatives:
        if progress:
            progress(f"{name}: lungs")
        lungs[name] = segment(vol, ["lungs"], "cpu").masks["lungs"] > 0
    rows = []
    for t in thresholds:
        bias = logit_bias(replace(card, decision={"threshold": float(t)}))
        volume_model.ctseg_logit_bias = slice_model.ctseg_logit_bias = bias
        scores = [dice(predict_image8(slice_model, img, card.preprocessing) == value, ref > 0)
                  for _, img, ref in positives]
        row = SweepRow(float(t), float(np.mean(scores)) if scores else float("nan"))
        for name, vol in negatives:
            res = segment(vol, [target], "cpu", models=models, lungs=lungs[name].astype(np.uint8))
            lung = lungs[name]
            row.negative_pct[name] = 100.0 * float(np.count_nonzero((res.masks[target] > 0) & lung)) \
                / max(int(lung.sum()), 1)
        if progress:
            progress(f"threshold {t:.2f}: Dice {row.dice:.4f}, "
                     + ", ".join(f"{k} {v:.2f} %" for k, v in row.negative_pct.items()))
        rows.append(row)
    return rows


def choose(rows: Sequence[SweepRow], max_negative_pct: float) -> SweepRow:
    """The row with the best Dice among those whose every negative is within ``max_negative_pct``
    (ties: the higher threshold, the more cautious); ``TrainingError`` when none is."""
    ok = [r for r in rows if all(v <= max_negative_pct for v in r.negative_pct.values())]
    if not ok:
        raise TrainingError(f"no threshold keeps the validation negatives within {max_negative_pct} % "
                            "of the lungs")
    return max(ok, key=lambda r: (round(r.dice, 4), r.threshold))
