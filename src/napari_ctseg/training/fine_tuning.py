"""Fine-tune a model version on the user's corrected masks, safely (Qt-free).

``fine_tune(...)`` is a generator of ``TrainingReport``s (as ``training.train``), so the
same code runs inline in tests and the CLI and in a napari thread worker. It

1. loads the base version and each correction (a scan and its corrected mask, on the
   scan's exact grid; ``changed_slices`` are display z indices, as recorded by Save
   corrected mask; without them, the slices where the base model disagrees with the mask),
2. holds aside the last quarter of each correction's changed slices (a contiguous block,
   never trained on, with a margin of the model's 2.5D context around it),
3. trains from the base weights on the rest, the changed slices sampled
   ``correction_weight`` times more often than the others, with BatchNorm statistics
   frozen. Against forgetting it *replays* the base model's own training cases when their
   data folder is given (``data_dir``: a share ``replay_fraction`` of every batch), and
   otherwise *regularises toward the base weights* (L2-SP: ``anchor_weight`` x the squared
   distance of the weights from the base's),
4. evaluates base and new weights (as stored, float16) on the held-aside slices and on the
   validation cases: the base card's validation cases when ``data_dir`` holds them (minus
   any scan being fine-tuned on), otherwise the slices of the corrected scans that the user
   left unchanged (the model's output they accepted), which are then never trained on,
5. writes the version under ``out_root/<target>/<version>/`` (default: the user's weights
   folder), and makes it the active version only when it is better than the base on the
   held-aside corrections and no worse than ``max_validation_drop`` (0.005 Dice) below the
   base on the validation; otherwise the card says ``"status": "candidate"`` and why.

The optimisation itself is the one training engine's (``napari_ctseg.training.engine.run``, shared
with ``training.train``): ``fine_tune`` checks its input, and ``_FineTuning`` (the strategy)
reads the corrections and the base's data, then fills the engine's ``TrainingPlan`` with
what is particular to fine-tuning: the base's weights as the start, frozen BatchNorm,
batches of corrected slices plus replay, the L2-SP penalty, the held-aside evaluation after
every epoch, the last state kept and judged by the promotion rule (``judge``), and making
the version active (``published``). While the run goes on, the engine writes everything
in a hidden folder ``.<version>.partial`` (a checkpoint after every epoch, each file
written to a temporary file and renamed). A cancel (closing the generator) or an error
deletes that folder; the active version and the bundled weights are never touched until
the finished version is renamed into place.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator, Iterable, Sequence

import numpy as np
import torch

from napari_ctseg import __version__
from napari_ctseg.training.engine import Evaluation, Outcome, TrainingPlan, autocast_dtype, merged_settings, run, seeded
from napari_ctseg.errors import CTSegError, ModelError, TrainingError
from napari_ctseg.models.predict import predict_slices
from napari_ctseg.models.preprocess import Preprocessing
from napari_ctseg.models.registry import (
    LICENSE_NOTE,
    ModelCard,
    as_registry,
    get_card,
    load_model,
    next_version_name,
    set_active_version,
    user_weights_dir,
    weight_roots,
)
from napari_ctseg.training import (
    TARGET_LABELS,
    Case,
    SliceCache,
    TrainingReport,
    augment,
    build_cache,
    case_crop,
    case_dice,
    check_target,
    default_config,
    load_case,
    read_mask,
    sample_batch,
    torch_device,
    validate,
)

__all__ = ["CorrectionCase", "FineTuneConfig", "fine_tune", "corrections_from_store", "PROMOTION_RULE"]

PROMOTION_RULE = ("active only if better than the base on the held-aside corrected slices and no "
                  "more than {drop} Dice below the base on the validation cases")


@dataclass
class CorrectionCase:
    """A scan and the user's corrected mask of it (NIfTI on the scan's exact grid).

    ``changed_slices``: display z indices (axis 0 of the (z, y, x) display grid) that the
    user changed; ``None`` means: the slices where the base model's output differs from
    the mask.
    """

    scan: str
    mask: str
    changed_slices: list[int] | None = None

    @property
    def name(self) -> str:
        return Path(self.mask).name


def corrections_from_store(target: str) -> list[CorrectionCase]:
    """The corrections recorded by Save corrected mask for ``target`` (oldest first)."""
    from napari_ctseg.editing.corrections import list_corrections

    return [CorrectionCase(c.scan_path, c.mask_path, list(c.changed_slices) or None)
            for c in list_corrections(target)]


@dataclass
class FineTuneConfig:
    """The settings of a fine-tuning run (recorded in the new version's card)."""

    epochs: int = 4
    steps_per_epoch: int = 10
    batch_size: int = 8
    lr: float = 1e-4  # benchmarks/finetune.py: 3e-4 lost 0.036 Dice on liver validation, 1e-4 gained
    weight_decay: float = 0.0
    correction_weight: float = 4.0  # sampling weight of a changed slice (other slices: 1)
    replay_fraction: float = 0.5  # share of each batch from the base's training data, if given
    anchor_weight: float = 0.01  # L2-SP strength, when there is no replay data
    held_aside_fraction: float = 0.25  # of each correction's changed slices
    max_validation_drop: float = 0.005
    min_improvement: float = 0.0  # the new model must beat the base by more than this
    mixed_precision: bool = True  # bfloat16 autocast where the hardware has it (autocast_dtype)
    augmentation: dict[str, Any] | None = None  # default: the target's training augmentation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Loaded:
    """One correction, loaded: display-grid HU and labels, its crop, and how its slices are used."""

    corr: CorrectionCase
    case: Case
    crop: Any
    changed: list[int]
    held: list[int]
    train: list[int]
    accepted: list[int]  # labelled, unchanged slices (validation when there is no replay data)
    changed_train: set = field(default_factory=set)  # changed slices that may be trained on
    train_set: set = field(default_factory=set)


def _read_correction(corr: CorrectionCase, target: str, labels: dict[str, int] | None = None) -> Case:
    from napari_ctseg.io import read_scan

    for what, p in (("scan", corr.scan), ("corrected mask", corr.mask)):
        if not p or not Path(p).exists():
            raise TrainingError(f"{p or '(no path)'}: the {what} of a correction is missing; "
                                "it may have been moved or deleted")
    try:
        volume = read_scan(corr.scan)
    except CTSegError as exc:
        raise TrainingError(f"{corr.scan}: {exc}") from None
    mask = read_mask(Path(corr.mask), volume, target, labels)
    return Case(name=Path(corr.mask).name, labels=mask, hu=np.asarray(volume.hu),
                spacing=tuple(volume.spacing))


def _disagreeing_slices(pred: np.ndarray, ref: np.ndarray) -> list[int]:
    """Slices where prediction and mask differ by more than a few voxels (2% of the larger area, >= 10)."""
    out = []
    for z in range(ref.shape[0]):
        diff = int(np.count_nonzero(pred[z] != ref[z]))
        area = max(int(np.count_nonzero(pred[z])), int(np.count_nonzero(ref[z])))
        if diff >= max(10, 0.02 * area):
            out.append(z)
    return out


def _split_slices(changed: list[int], n_slices: int, fraction: float, context: int,
                  labelled: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """(held aside, trainable, accepted): the last ``fraction`` of the changed slices are held
    aside, with ``context`` slices around them never trained on."""
    changed = sorted(set(int(z) for z in changed if 0 <= z < n_slices))
    n_hold = max(1, int(round(fraction * len(changed)))) if len(changed) >= 2 else 0
    held = changed[len(changed) - n_hold:] if n_hold else []
    blocked = set()
    for z in held:
        blocked.update(range(z - context, z + context + 1))
    train = [z for z in range(n_slices) if z not in blocked]
    changed_set = set(changed)
    accepted = [z for z in range(n_slices) if labelled[z] and z not in changed_set and z not in blocked]
    return held, train, accepted


def _spread_blocks(changed: list[int], n_slices: int, fraction: float, context: int,
                   n_blocks: int = 3) -> tuple[list[int], list[int]]:
    """(held aside, trainable) for a whole expert mask: ``fraction`` of the changed slices held
    aside as ``n_blocks`` contiguous blocks spread along the scan (one in each third: the
    apex, the middle and the base of an organ look different), each with ``context`` slices
    around it never trained on."""
    changed = sorted(set(int(z) for z in changed if 0 <= z < n_slices))
    n_hold = int(round(fraction * len(changed)))
    n_blocks = max(1, min(n_blocks, n_hold))
    held: list[int] = []
    if n_hold:
        parts = np.array_split(np.asarray(changed), n_blocks)
        sizes = [len(a) for a in np.array_split(np.arange(n_hold), n_blocks)]
        for part, size in zip(parts, sizes):
            start = (len(part) - size) // 2  # the middle of its part
            held += [int(z) for z in part[start:start + size]]
    blocked = set()
    for z in held:
        blocked.update(range(z - context, z + context + 1))
    return held, [z for z in range(n_slices) if z not in blocked]


def _slices_dice(model, item: _Loaded, zs: list[int], prep, labels, device) -> float | None:
    if not zs:
        return None
    pred = predict_slices(model, item.case.hu, zs, prep, item.crop, device, batch_size=16)
    return case_dice(pred, item.case.labels[zs], labels)


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _correction_cache(items: list[_Loaded], prep: Preprocessing, n_classes: int, weight: float,
                      use_accepted: bool) -> SliceCache:
    cache = build_cache([it.case for it in items], prep, n_classes, 1.0)
    w = np.zeros(len(cache.index))
    for k, (ci, z) in enumerate(cache.index):
        it = items[ci]
        if z in it.changed_train:
            w[k] = weight
        elif use_accepted and z in it.train_set:
            w[k] = 1.0
    if w.sum() == 0:
        raise TrainingError("no corrected slice is left to train on once the held-aside ones are set "
                            "apart; correct more slices (at least 2 per scan)")
    cache.weights = w / w.sum()
    return cache


def fine_tune(target: str, corrections: Sequence[CorrectionCase], *, base_version: str | None = None,
              data_dir=None, config: FineTuneConfig | dict[str, Any] | None = None,
              device: str = "cpu", seed: int = 0, threads: int | None = None,
              version: str | None = None, out_root=None, roots=None, promote: bool = True,
              ) -> Generator[TrainingReport, None, ModelCard | None]:
    """Fine-tune ``target``'s ``base_version`` (default: the active one) on ``corrections``.

    See the module docstring. ``roots`` are the registry roots to read the base from
    (a ``ModelRegistry``, folders, or None for the default one); ``out_root`` where the new
    version goes (default: the registry's user folder, i.e. the user's
    weights folder). Raises ``TrainingError`` for bad input before any training; yields
    ``TrainingReport``s (``"prepare"``, ``"start"``, ``"step"``, ``"epoch"`` with ``val_dice``
    and ``corrections_dice``, then ``"done"`` with the card, ``promoted`` and ``message``);
    returns the card, or ``None`` when cancelled.
    """
    check_target(target)
    cfg = merged_settings(FineTuneConfig(), config, "fine-tuning")
    if not cfg.lr >= 0 or not math.isfinite(cfg.lr):
        raise TrainingError(f"learning rate {cfg.lr} must be a finite number >= 0")
    corrections = [c if isinstance(c, CorrectionCase) else CorrectionCase(*c) for c in corrections]
    if not corrections:
        raise TrainingError(f"no corrections to fine-tune the {target} model on; save a corrected "
                            "mask first (Mask tools > Save corrected mask)")
    dev = torch_device(device)
    try:
        base_model, base_card = load_model(target, base_version, device=dev, roots=roots)
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    out_root = Path(out_root) if out_root is not None else (as_registry(roots).user_dir or user_weights_dir())
    version = version or next_version_name(target, base_card.version, roots)
    if (out_root / target / version).exists():
        raise TrainingError(f"{out_root / target / version}: a version {version!r} already exists; "
                            "choose another name")
    data_dir = Path(data_dir) if data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: no such data folder (the base model's training data, "
                            "for replay and validation)")
    strategy = _FineTuning(target, version, cfg, base_model, base_card, dev, *seeded(seed, threads))
    yield from strategy.read_corrections(corrections)
    yield from strategy.read_base_data(data_dir)
    yield strategy.report("prepare", message="measuring the base model on the held-aside corrections "
                                             "and the validation cases")
    strategy.before = strategy.evaluate(base_model)
    plan = strategy.plan(out_root, roots, data_dir, seed, promote)
    guard = "replaying the base's training data" if strategy.replay else "regularised toward the base weights"
    yield strategy.report("start", message=f"fine-tuning {target} {base_card.version} -> {version}: "
                                           f"{len(strategy.items)} correction(s), {guard}",
                          val_dice=strategy.before["validation"], corrections_dice=strategy.before["corrections"])
    return (yield from run(plan))


class _FineTuning:
    """The fine-tuning strategy: what it reads, samples, evaluates and decides around the engine."""

    def __init__(self, target: str, version: str, cfg: FineTuneConfig, base_model, base_card: ModelCard,
                 dev: torch.device, rng: np.random.Generator, gen: torch.Generator):
        self.target, self.version, self.cfg, self.dev, self.rng, self.gen = target, version, cfg, dev, rng, gen
        self.base_model, self.base_card = base_model, base_card
        self.prep = Preprocessing.from_dict(base_card.preprocessing)
        self.labels = dict(base_card.labels) if base_card.labels else dict(TARGET_LABELS[target])
        self.aug = cfg.augmentation
        if self.aug is None:
            self.aug = dict(base_card.training.get("config", {}).get("augmentation") or
                            default_config(target).augmentation)
        self.t0 = time.perf_counter()
        self.items: list[_Loaded] = []
        self.replay_cases: list[Case] = []
        self.val_cases: list[Case] = []
        self.replay = self.accepted_validation = self.expert_only = False
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.promoted = False

    def report(self, kind: str, **kw) -> TrainingReport:
        return TrainingReport(kind, 0, self.cfg.epochs, 0, self.cfg.steps_per_epoch,
                              elapsed_s=time.perf_counter() - self.t0, **kw)

    def read_corrections(self, corrections: list[CorrectionCase]) -> Generator[TrainingReport, None, None]:
        """Each correction, its changed slices and which of them are held aside."""
        prep, cfg = self.prep, self.cfg
        for i, corr in enumerate(corrections, 1):
            yield self.report("prepare", message=f"reading correction {i}/{len(corrections)}: {corr.name}")
            case = _read_correction(corr, self.target, self.labels)
            # A second-stage base (crop "mask") sees the corrected organ's square on its slices,
            # as training does with expert masks; other slices are not its to learn.
            crop, z_box = case_crop(case, prep)
            n = case.hu.shape[0]
            seen = np.ones(n, bool) if z_box is None else np.isin(np.arange(n), z_box)
            if corr.changed_slices is None:
                base_pred = np.zeros(case.labels.shape, np.uint8)
                zs = np.flatnonzero(seen).tolist()
                if zs:
                    base_pred[zs] = predict_slices(self.base_model, case.hu, zs, prep, crop, self.dev, batch_size=16)
                changed = _disagreeing_slices(base_pred, case.labels)
            else:
                changed = sorted({int(z) for z in corr.changed_slices if 0 <= int(z) < n})
            changed = [z for z in changed if seen[z]]
            labelled = case.labels.reshape(n, -1).any(axis=1) & seen
            held, train_z, accepted = _split_slices(changed, n, cfg.held_aside_fraction, prep.context, labelled)
            self.items.append(_Loaded(corr, case, crop, changed, held, train_z, accepted,
                                      changed_train=set(changed) - set(held), train_set=set(train_z)))
        if not any(it.changed for it in self.items):
            raise TrainingError("the corrected masks agree with the model everywhere; there is nothing to "
                                "learn (correct the slices the model gets wrong, then save)")

    def read_base_data(self, data_dir: Path | None) -> Generator[TrainingReport, None, None]:
        """The base's training cases (replay) and validation cases from ``data_dir``, if given;
        what is validated on, and how slices are held aside, follows from what is there."""
        target, cfg = self.target, self.cfg
        scans = {str(Path(it.corr.scan).resolve()) for it in self.items}
        if data_dir is not None:
            split = _original_training(self.base_card).get("split", {})
            train_names, silver = list(split.get("train", [])), list(split.get("train_silver", []))
            val_names = list(split.get("validation", []))
            yield self.report("prepare", message=f"reading {len(train_names) + len(silver)} replay and "
                                                 f"{len(val_names)} validation cases from {data_dir}")
            try:
                self.replay_cases = [load_case(target, data_dir, n) for n in train_names]
                self.replay_cases += [load_case(target, data_dir, n, silver=True) for n in silver]
                for n in val_names:
                    ct = data_dir / n / "ct.nii.gz"
                    if ct.exists() and str(ct.resolve()) in scans:
                        continue  # never validate on a scan being fine-tuned on
                    self.val_cases.append(load_case(target, data_dir, n))
            except TrainingError as exc:
                raise TrainingError(f"{exc} (the base model's data, for replay and validation)") from None
        self.replay = bool(self.replay_cases) and cfg.replay_fraction > 0
        self.accepted_validation = not self.val_cases
        # Whole expert masks and no data folder: nothing the user accepted, nothing to validate
        # on. The run still goes (the training data is not shipped, so refusing leaves no way):
        # blocks spread along each scan are held aside, L2-SP guards against forgetting, and the
        # result is only ever a candidate.
        self.expert_only = self.accepted_validation and not any(it.accepted for it in self.items)
        if self.expert_only:
            for it in self.items:
                it.held, it.train = _spread_blocks(it.changed, it.case.hu.shape[0], cfg.held_aside_fraction,
                                                   self.prep.context)
                it.changed_train, it.train_set, it.accepted = set(it.changed) - set(it.held), set(it.train), []
            if not any(it.held for it in self.items):
                raise TrainingError("the corrected masks label too few slices to hold any aside for "
                                    "checking the new model; label more slices")

    def evaluate(self, model) -> dict[str, Any]:
        """Dice on the held-aside corrected slices and on the validation (both per case and mean)."""
        prep, labels, dev = self.prep, self.labels, self.dev
        model.eval()
        held = {it.case.name: _slices_dice(model, it, it.held, prep, labels, dev) for it in self.items}
        if self.accepted_validation:
            val = {f"{it.case.name} (unchanged slices)": _slices_dice(model, it, it.accepted, prep, labels, dev)
                   for it in self.items}
            val = {k: v for k, v in val.items() if v is not None}
        else:
            val = validate(model, self.val_cases, prep, labels, dev)["cases"]
        return {"corrections": _mean(held.values()), "corrections_cases": held,
                "validation": _mean(val.values()), "validation_cases": val}

    def plan(self, out_root: Path, roots, data_dir, seed: int, promote: bool) -> TrainingPlan:
        """The engine's plan: the new weights start as the base's, BatchNorm frozen, batches of
        corrected slices (plus replay), L2-SP without replay, the last state kept."""
        cfg, prep, dev, items = self.cfg, self.prep, self.dev, self.items
        n_classes = self.base_card.n_classes
        card = _card(self.target, self.version, self.base_card, prep, self.labels, cfg, items, data_dir,
                     self.replay, self.accepted_validation, seed, dev)
        model = copy.deepcopy(self.base_model).float().to(dev, memory_format=torch.channels_last)
        precision = autocast_dtype(dev) if cfg.mixed_precision else None
        card.training["precision"] = "bfloat16 autocast" if precision is not None else "float32"
        anchor = [p.detach().clone() for p in model.parameters()]

        def l2sp():  # against forgetting without replay data: the squared distance from the base
            return cfg.anchor_weight * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))

        corr_cache = _correction_cache(items, prep, n_classes, cfg.correction_weight,
                                       use_accepted=not self.accepted_validation)
        replay_cache = build_cache(self.replay_cases, prep, n_classes,
                                   float(self.base_card.training.get("config", {}).get("foreground_weight", 2.0))
                                   ) if self.replay else None
        n_replay = min(int(round(cfg.replay_fraction * cfg.batch_size)) if self.replay else 0, cfg.batch_size - 1)

        def batch():
            x, y = sample_batch(corr_cache, prep, cfg.batch_size - n_replay, self.rng)
            if n_replay:
                xr, yr = sample_batch(replay_cache, prep, n_replay, self.rng)
                x, y = torch.cat([x, xr]), torch.cat([y, yr])
            x, y = augment(x, y, self.aug, prep.pad_value, self.gen)
            return x.to(dev).contiguous(memory_format=torch.channels_last), y.to(dev)

        def evaluate(model, epoch: int) -> Evaluation:
            now = self.evaluate(model)
            return Evaluation(None, {"corrections_dice": now["corrections"], "val_dice": now["validation"]},
                              now["validation_cases"], f"held-aside corrections Dice {_fmt(now['corrections'])}, "
                                                       f"validation Dice {_fmt(now['validation'])}")

        def checkpoint(outcome: Outcome) -> ModelCard:
            card.training["history"], card.training["epochs_run"] = outcome.history, outcome.epochs_run
            return card

        total = cfg.epochs * cfg.steps_per_epoch
        # BatchNorm frozen: a few slices of one scan would drag the running statistics away from
        # what the base learnt on all its data; keep them, train only the weights.
        return TrainingPlan(
            model, dev, out_root / self.target / self.version, cfg.epochs, cfg.steps_per_epoch, cfg.lr,
            cfg.weight_decay, total // 10, 0.1, batch, evaluate,
            lambda model, outcome: self.judge(checkpoint(outcome), model, promote),
            lambda card, outcome: self.published(card, out_root, roots),
            checkpoint=checkpoint, keep="last", precision=precision, freeze_batchnorm=True,
            penalty=l2sp if not self.replay and cfg.anchor_weight > 0 else None, t0=self.t0)

    def judge(self, card: ModelCard, model, promote: bool) -> ModelCard:
        """The new weights (as stored) against the base: the promotion rule, written in the card."""
        cfg, expert_only = self.cfg, self.expert_only
        promote = promote and not expert_only
        self.after = after = self.evaluate(model)
        promoted, reason = _decide(self.before, after, cfg)
        if expert_only:
            reason = ("whole expert masks and no data folder: nothing independent to validate on, so "
                      "only a candidate (check it on your scans); " + reason.split("; ", 1)[-1])
        card.validation = {
            "mean_dice": after["validation"],
            "cases": after["validation_cases"],
            "what": ("none: whole expert masks and no data folder (the held-aside blocks are the only "
                     "check)" if expert_only else
                     "the unchanged labelled slices of the corrected scans (no validation data given)"
                     if self.accepted_validation else "the base model's validation cases"),
            "note": "raw network output (no post-processing), on each case's original grid",
        }
        self.promoted = bool(promoted and promote)
        card.extra["status"] = "promoted" if self.promoted else "candidate"
        card.extra["fine_tune"].update({
            "before": _rounded(self.before), "after": _rounded(after), "promoted": self.promoted,
            "reason": reason if promote or expert_only else f"{reason} (promotion was not asked for)",
            "rule": PROMOTION_RULE.format(drop=cfg.max_validation_drop),
        })
        return card

    def published(self, card: ModelCard, out_root: Path, roots) -> tuple[ModelCard, dict[str, Any]]:
        """Make the new version active when it earned it; the ``"done"`` report's fields."""
        target, version = self.target, self.version
        card = get_card(target, version, roots=[out_root])
        if self.promoted:
            set_active_version(target, version, roots=[out_root, *weight_roots(roots)])
        verdict = "now the active version" if self.promoted else "kept as a candidate"
        how = "" if self.promoted else f"; to use it: ctseg models use {target} {version}"
        return card, {"val_dice": self.after["validation"], "corrections_dice": self.after["corrections"],
                      "promoted": self.promoted,
                      "message": f"{target} {version}: {verdict}; {card.extra['fine_tune']['reason']}{how}"}


def _decide(before: dict, after: dict, cfg: FineTuneConfig) -> tuple[bool, str]:
    bc, ac = before["corrections"], after["corrections"]
    bv, av = before["validation"], after["validation"]
    fig = (f"held-aside corrections Dice {_fmt(bc)} -> {_fmt(ac)}, validation Dice "
           f"{_fmt(bv)} -> {_fmt(av)}")
    if bc is None or ac is None:
        return False, f"no held-aside corrected slices to judge it on (correct at least 2 slices); {fig}"
    if not ac > bc + cfg.min_improvement:
        return False, f"not better than the base on the held-aside corrections; {fig}"
    if bv is not None and av is not None and av < bv - cfg.max_validation_drop:
        return False, (f"worse than the base on the validation cases by {bv - av:.4f} "
                       f"(allowed {cfg.max_validation_drop}); {fig}")
    return True, f"better on the held-aside corrections and no worse on validation; {fig}"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _round(v):
    return None if v is None else round(float(v), 5)


def _rounded(d: dict) -> dict:
    return {k: ({kk: _round(vv) for kk, vv in v.items()} if isinstance(v, dict) else _round(v))
            for k, v in d.items()}


def _original_training(card: ModelCard) -> dict[str, Any]:
    """The data, split and label sources of the model a chain of fine-tunes started from."""
    training = card.training if isinstance(card.training, dict) else {}
    if training.get("kind") == "fine-tune":
        return dict(training.get("base_training") or {})
    return {k: training[k] for k in ("data", "split", "labels_source") if k in training}


def _card(target, version, base_card: ModelCard, prep, labels, cfg, items, data_dir, replay,
          accepted_validation, seed, dev) -> ModelCard:
    import platform

    return ModelCard(
        target=target, version=version, labels=dict(labels),
        architecture=dict(base_card.architecture), preprocessing=prep.to_dict(),
        training={
            "kind": "fine-tune",
            "base": base_card.version,
            "base_training": _original_training(base_card),
            "corrections": [{"scan": it.corr.scan, "mask": it.corr.mask, "changed_slices": it.changed,
                             "held_aside_slices": it.held} for it in items],
            "forgetting_guard": (f"replay of the base's training data from {data_dir}" if replay else
                                 f"L2-SP toward the base weights (weight {cfg.anchor_weight})"),
            "config": cfg.to_dict(), "seed": seed, "device": str(dev), "epochs": cfg.epochs,
            "epochs_run": 0, "weights_dtype": "float16",
            "software": {"napari-ctseg": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        },
        license=LICENSE_NOTE, cite=list(base_card.cite),
        display=dict(base_card.display), postprocess=[dict(p) for p in base_card.postprocess],
        requires=list(base_card.requires), stages=[dict(st) for st in base_card.stages],
        inputs=list(base_card.inputs), decision=dict(base_card.decision),
        notes=(f"Fine-tuned from {target} {base_card.version} on the user's corrected masks. "
               + (base_card.notes or "")).strip(),
        extra={"status": "incomplete", "fine_tune": {"base": base_card.version,
                                                     "validation_on": "unchanged slices of the corrected scans"
                                                     if accepted_validation else "base validation cases"}},
    )
