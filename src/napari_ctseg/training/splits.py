"""Which cases a run trains and validates on: the default splits (``models/splits.json``),
a fixed random split of the infection slices, and a run's split checked and sorted by role."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_ctseg.errors import TrainingError
from napari_ctseg.training.config import TrainingConfig

SPLITS_FILE = Path(__file__).resolve().parent.parent / "models" / "splits.json"


def load_splits(path: Path | None = None) -> dict[str, Any]:
    """The train/validation splits per target (``models/splits.json``)."""
    path = Path(path) if path is not None else SPLITS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: cannot read the training splits ({exc})") from None


def make_infection_split(image_ids: Sequence[str], n_validation: int = 10, seed: int = 0,
                         groups: dict[str, str] | None = None) -> dict[str, list[str]]:
    """A fixed random split of image ids into train and validation.

    ``groups`` maps an id to a group (e.g. images of the same size, likely the same
    patient): a group goes wholly to one side, so near-duplicates never straddle it.
    """
    ids = sorted(image_ids, key=_natural)
    groups = groups or {i: i for i in ids}
    by_group: dict[str, list[str]] = {}
    for i in ids:
        by_group.setdefault(groups.get(i, i), []).append(i)
    keys = sorted(by_group, key=_natural)
    order = np.random.default_rng(seed).permutation(len(keys))
    val: list[str] = []
    for k in order:
        members = by_group[keys[k]]
        if len(val) + len(members) <= n_validation:
            val += members
        if len(val) == n_validation:
            break
    train = [i for i in ids if i not in set(val)]
    return {"train": train, "validation": sorted(val, key=_natural)}


def _natural(s: str):
    import re
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(s)) if p]


@dataclass
class _SplitNames:
    """The cases of a training run by role (see ``splits.json``)."""

    train: list[str]
    validation: list[str]
    silver: list[str]
    hosts: list[str]
    pseudo: list[dict[str, Any]]
    negative: list[str]
    silver_slices: list[str] = field(default_factory=list)  # folders of 8-bit slices with silver labels

    @property
    def all(self) -> list[str]:
        return (self.train + self.silver + self.silver_slices + self.hosts + [s["case"] for s in self.pseudo]
                + self.validation + self.negative)

    def to_card(self) -> dict[str, Any]:
        return {"train": self.train, "validation": self.validation,
                **({"train_silver": self.silver} if self.silver else {}),
                **({"train_silver_slices": self.silver_slices} if self.silver_slices else {}),
                **({"train_hosts": self.hosts} if self.hosts else {}),
                **({"train_pseudo": self.pseudo} if self.pseudo else {}),
                **({"validation_negative": self.negative} if self.negative else {})}


def _checked_split(target: str, data_dir, split, cfg: TrainingConfig) -> _SplitNames:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: no such data folder")
    if split is None:
        split = load_splits()[target]
    names = _SplitNames(list(split.get("train", [])), list(split.get("validation", [])),
                        list(split.get("train_silver", [])),
                        list(split.get("train_hosts", [])) if cfg.synthetic else [],
                        list(split.get("train_pseudo", [])), list(split.get("validation_negative", [])),
                        list(split.get("train_silver_slices", [])))
    if not names.train or not names.validation:
        raise TrainingError(f"the {target} split needs training and validation cases")
    overlap = sorted(set(names.train + names.silver + names.hosts) & set(names.validation + names.negative))
    if overlap:
        raise TrainingError(f"cases both in training and validation: {overlap}")
    return names
