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

While the run goes on, everything is written in a hidden folder ``.<version>.partial``
(a checkpoint after every epoch, each file written to a temporary file and renamed). A
cancel (closing the generator) or an error deletes that folder; the active version and
the bundled weights are never touched until the finished version is renamed into place.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generator, Iterable, Sequence

import numpy as np
import torch

from . import __version__
from .errors import CTSegError, ModelError, TrainingError
from .models.preprocess import (
    Preprocessing,
    labels_from_probs,
    slices_to_input,
)
from .models.registry import (
    LICENSE_NOTE,
    ModelCard,
    get_card,
    half_state_dict,
    load_model,
    next_version_name,
    set_active_version,
    user_weights_dir,
    weight_roots,
    write_version,
)
from .training import (
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
    optimisation_step,
    read_mask,
    sample_batch,
    torch_device,
    validate,
    warmup_cosine,
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
    from .corrections import list_corrections

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


def _merge(cfg: FineTuneConfig, overrides) -> FineTuneConfig:
    if overrides is None:
        return cfg
    if isinstance(overrides, FineTuneConfig):
        return overrides
    known = {f.name for f in fields(FineTuneConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainingError(f"unknown fine-tuning setting(s): {', '.join(unknown)}")
    return replace(cfg, **overrides)


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
    from .io import read_scan

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


def predict_slices(model, hu: np.ndarray, zs: Sequence[int], prep: Preprocessing, crop, device,
                   batch_size: int = 16) -> np.ndarray:
    """Labels (len(zs), y, x) of the given axial slices of a HU volume (model in eval mode)."""
    out = np.zeros((len(zs), *hu.shape[1:]), np.uint8)
    with torch.inference_mode():
        for start in range(0, len(zs), batch_size):
            z = list(zs[start:start + batch_size])
            x = slices_to_input(hu, z, prep, crop).to(device)
            probs = torch.softmax(model(x), dim=1).float().cpu()
            out[start:start + len(z)] = labels_from_probs(probs, crop)
    return out


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
    pred = predict_slices(model, item.case.hu, zs, prep, item.crop, device)
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


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision a training step runs in on ``device``, or None for float32.

    bfloat16 where the hardware does it natively: CPUs with AVX512-BF16 or AMX (about 2x
    faster steps than float32 here, see benchmarks/finetune.py), CUDA GPUs that support it.
    Elsewhere emulated bfloat16 would be slower, so float32.
    """
    try:
        if device.type == "cpu":
            fast = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
            return torch.bfloat16 if fast else None
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    except (AttributeError, RuntimeError):  # private helpers: absent in other torch builds
        return None
    return None


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    # A few slices of one scan would drag the running statistics away from what the base
    # learnt on all its data: keep them, train only the weights.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def fine_tune(target: str, corrections: Sequence[CorrectionCase], *, base_version: str | None = None,
              data_dir=None, config: FineTuneConfig | dict[str, Any] | None = None,
              device: str = "cpu", seed: int = 0, threads: int | None = None,
              version: str | None = None, out_root=None, roots=None, promote: bool = True,
              ) -> Generator[TrainingReport, None, ModelCard | None]:
    """Fine-tune ``target``'s ``base_version`` (default: the active one) on ``corrections``.

    See the module docstring. ``roots`` are the registry roots to read the base from
    (default: the usual ones); ``out_root`` where the new version goes (default: the user's
    weights folder). Raises ``TrainingError`` for bad input before any training; yields
    ``TrainingReport``s (``"prepare"``, ``"step"``, ``"epoch"`` with ``val_dice`` and
    ``corrections_dice``, then ``"done"`` with the card, ``promoted`` and ``message``);
    returns the card, or ``None`` when cancelled.
    """
    check_target(target)
    cfg = _merge(FineTuneConfig(), config)
    if cfg.epochs < 1 or cfg.steps_per_epoch < 1 or cfg.batch_size < 1:
        raise TrainingError("epochs, steps per epoch and batch size must be at least 1")
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
    prep = Preprocessing.from_dict(base_card.preprocessing)
    labels = dict(base_card.labels) if base_card.labels else dict(TARGET_LABELS[target])
    n_classes = base_card.n_classes
    out_root = Path(out_root) if out_root is not None else user_weights_dir()
    version = version or next_version_name(target, base_card.version, roots)
    final_dir = out_root / target / version
    if final_dir.exists():
        raise TrainingError(f"{final_dir}: a version {version!r} already exists; choose another name")
    data_dir = Path(data_dir) if data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise TrainingError(f"{data_dir}: no such data folder (the base model's training data, "
                            "for replay and validation)")
    aug = cfg.augmentation
    if aug is None:
        aug = dict(base_card.training.get("config", {}).get("augmentation") or
                   default_config(target).augmentation)
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    total = cfg.epochs * cfg.steps_per_epoch

    def report(kind, epoch=0, step=0, **kw):
        return TrainingReport(kind, epoch, cfg.epochs, step, cfg.steps_per_epoch,
                              elapsed_s=time.perf_counter() - t0, **kw)

    # --- the corrections, and what the base model makes of them ---------------------
    items: list[_Loaded] = []
    for i, corr in enumerate(corrections, 1):
        yield report("prepare", message=f"reading correction {i}/{len(corrections)}: {corr.name}")
        case = _read_correction(corr, target, labels)
        # A second-stage base (crop "mask") sees the corrected organ's square on its slices,
        # as training does with expert masks; other slices are not its to learn.
        crop, z_box = case_crop(case, prep)
        n = case.hu.shape[0]
        seen = np.ones(n, bool) if z_box is None else np.isin(np.arange(n), z_box)
        if corr.changed_slices is None:
            base_pred = np.zeros(case.labels.shape, np.uint8)
            zs = np.flatnonzero(seen).tolist()
            if zs:
                base_pred[zs] = predict_slices(base_model, case.hu, zs, prep, crop, dev)
            changed = _disagreeing_slices(base_pred, case.labels)
        else:
            changed = sorted({int(z) for z in corr.changed_slices if 0 <= int(z) < n})
        changed = [z for z in changed if seen[z]]
        labelled = case.labels.reshape(n, -1).any(axis=1) & seen
        held, train_z, accepted = _split_slices(changed, n, cfg.held_aside_fraction, prep.context, labelled)
        items.append(_Loaded(corr, case, crop, changed, held, train_z, accepted,
                             changed_train=set(changed) - set(held), train_set=set(train_z)))
    if not any(it.changed for it in items):
        raise TrainingError("the corrected masks agree with the model everywhere; there is nothing to "
                            "learn (correct the slices the model gets wrong, then save)")

    replay_cases: list[Case] = []
    val_cases: list[Case] = []
    scans = {str(Path(it.corr.scan).resolve()) for it in items}
    if data_dir is not None:
        split = _original_training(base_card).get("split", {})
        train_names = list(split.get("train", []))
        silver = list(split.get("train_silver", []))
        val_names = list(split.get("validation", []))
        yield report("prepare", message=f"reading {len(train_names) + len(silver)} replay and "
                                        f"{len(val_names)} validation cases from {data_dir}")
        try:
            replay_cases = [load_case(target, data_dir, n) for n in train_names]
            replay_cases += [load_case(target, data_dir, n, silver=True) for n in silver]
            for n in val_names:
                ct = data_dir / n / "ct.nii.gz"
                if ct.exists() and str(ct.resolve()) in scans:
                    continue  # never validate on a scan being fine-tuned on
                val_cases.append(load_case(target, data_dir, n))
        except TrainingError as exc:
            raise TrainingError(f"{exc} (the base model's data, for replay and validation)") from None
    replay = bool(replay_cases) and cfg.replay_fraction > 0
    accepted_validation = not val_cases
    # Whole expert masks and no data folder: nothing the user accepted, nothing to validate
    # on. The run still goes (the training data is not shipped, so refusing leaves no way):
    # blocks spread along each scan are held aside, L2-SP guards against forgetting, and the
    # result is only ever a candidate.
    expert_only = accepted_validation and not any(it.accepted for it in items)
    if expert_only:
        for it in items:
            it.held, it.train = _spread_blocks(it.changed, it.case.hu.shape[0], cfg.held_aside_fraction,
                                               prep.context)
            it.changed_train, it.train_set, it.accepted = set(it.changed) - set(it.held), set(it.train), []
        if not any(it.held for it in items):
            raise TrainingError("the corrected masks label too few slices to hold any aside for checking "
                                "the new model; label more slices")
        promote = False

    def evaluate(model) -> dict[str, Any]:
        model.eval()
        held = {it.case.name: _slices_dice(model, it, it.held, prep, labels, dev) for it in items}
        if accepted_validation:
            val = {f"{it.case.name} (unchanged slices)": _slices_dice(model, it, it.accepted, prep,
                                                                      labels, dev) for it in items}
            val = {k: v for k, v in val.items() if v is not None}
        else:
            val = validate(model, val_cases, prep, labels, dev)["cases"]
        return {"corrections": _mean(held.values()), "corrections_cases": held,
                "validation": _mean(val.values()), "validation_cases": val}

    yield report("prepare", message="measuring the base model on the held-aside corrections and "
                                    "the validation cases")
    before = evaluate(base_model)

    # --- training ----------------------------------------------------------------------
    card = _card(target, version, base_card, prep, labels, cfg, items, data_dir, replay,
                 accepted_validation, seed, dev)
    model = copy.deepcopy(base_model).float().to(dev, memory_format=torch.channels_last)
    precision = autocast_dtype(dev) if cfg.mixed_precision else None
    card.training["precision"] = "bfloat16 autocast" if precision is not None else "float32"
    anchor = [p.detach().clone() for p in model.parameters()]

    def l2sp():  # against forgetting without replay data: the squared distance from the base
        return cfg.anchor_weight * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))

    penalty = l2sp if not replay and cfg.anchor_weight > 0 else None
    corr_cache = _correction_cache(items, prep, n_classes, cfg.correction_weight,
                                   use_accepted=not accepted_validation)
    replay_cache = build_cache(replay_cases, prep, n_classes,
                                float(base_card.training.get("config", {}).get("foreground_weight", 2.0))
                                ) if replay else None
    n_replay = int(round(cfg.replay_fraction * cfg.batch_size)) if replay else 0
    n_replay = min(n_replay, cfg.batch_size - 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_at = warmup_cosine(cfg.lr, total, total // 10, floor=0.1)

    partial = out_root / target / f".{version}.partial"
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
    history: list[dict[str, Any]] = []
    global_step, epoch, finished = 0, 0, False
    try:
        yield report("start", message=f"fine-tuning {target} {base_card.version} -> {version}: "
                                       f"{len(items)} correction(s), "
                                       + ("replaying the base's training data" if replay else
                                          "regularised toward the base weights"),
                     val_dice=before["validation"], corrections_dice=before["corrections"])
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            _freeze_batchnorm(model)
            losses = []
            for step in range(1, cfg.steps_per_epoch + 1):
                x, y = sample_batch(corr_cache, prep, cfg.batch_size - n_replay, rng)
                if n_replay:
                    xr, yr = sample_batch(replay_cache, prep, n_replay, rng)
                    x, y = torch.cat([x, xr]), torch.cat([y, yr])
                x, y = augment(x, y, aug, prep.pad_value, gen)
                x = x.to(dev).contiguous(memory_format=torch.channels_last)
                losses.append(optimisation_step(model, opt, x, y.to(dev), lr_at(global_step),
                                                precision=precision, penalty=penalty))
                global_step += 1
                if not math.isfinite(losses[-1]):
                    raise TrainingError(f"the loss became {losses[-1]} at step {global_step}; "
                                        "lower the learning rate")
                yield report("step", epoch, step, loss=losses[-1])
            now = evaluate(model)
            mean_loss = float(np.mean(losses))
            history.append({"epoch": epoch, "loss": round(mean_loss, 5),
                            "corrections_dice": _round(now["corrections"]),
                            "val_dice": _round(now["validation"])})
            card.training["history"] = history
            card.training["epochs_run"] = epoch
            write_version(partial, half_state_dict(model.state_dict()), card)  # checkpoint
            yield report("epoch", epoch, cfg.steps_per_epoch, loss=mean_loss, val_dice=now["validation"],
                         val_cases=now["validation_cases"], corrections_dice=now["corrections"],
                         message=f"epoch {epoch}/{cfg.epochs}: loss {mean_loss:.4f}, held-aside "
                                 f"corrections Dice {_fmt(now['corrections'])}, validation Dice "
                                 f"{_fmt(now['validation'])}")
        finished = True
    finally:
        if not finished:  # cancelled (GeneratorExit) or failed: nothing of this run stays
            shutil.rmtree(partial, ignore_errors=True)

    # --- the weights as stored, judged against the base -------------------------------------
    try:
        state = half_state_dict(model.state_dict())
        model.load_state_dict(state)
        after = evaluate(model)
        promoted, reason = _decide(before, after, cfg)
        if expert_only:
            reason = ("whole expert masks and no data folder: nothing independent to validate on, so "
                      "only a candidate (check it on your scans); " + reason.split("; ", 1)[-1])
        card.validation = {
            "mean_dice": after["validation"],
            "cases": after["validation_cases"],
            "what": ("none: whole expert masks and no data folder (the held-aside blocks are the only "
                     "check)" if expert_only else
                     "the unchanged labelled slices of the corrected scans (no validation data given)"
                     if accepted_validation else "the base model's validation cases"),
            "note": "raw network output (no post-processing), on each case's original grid",
        }
        card.extra["status"] = "promoted" if promoted and promote else "candidate"
        card.extra["fine_tune"].update({
            "before": _rounded(before), "after": _rounded(after), "promoted": bool(promoted and promote),
            "reason": reason if promote or expert_only else f"{reason} (promotion was not asked for)",
            "rule": PROMOTION_RULE.format(drop=cfg.max_validation_drop),
        })
        card.training["time_s"] = round(time.perf_counter() - t0, 1)
        write_version(partial, state, card)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    card = get_card(target, version, roots=[out_root])
    if promoted and promote:
        set_active_version(target, version, roots=[out_root, *weight_roots(roots)])
    verdict = "now the active version" if promoted and promote else "kept as a candidate"
    how = "" if promoted and promote else f"; to use it: ctseg models use {target} {version}"
    yield TrainingReport(
        "done", cfg.epochs, cfg.epochs, cfg.steps_per_epoch, cfg.steps_per_epoch,
        val_dice=after["validation"], corrections_dice=after["corrections"],
        elapsed_s=time.perf_counter() - t0, card=card, promoted=bool(promoted and promote),
        message=f"{target} {version}: {verdict}; {card.extra['fine_tune']['reason']}{how}",
    )
    return card


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
        inputs=list(base_card.inputs),
        notes=(f"Fine-tuned from {target} {base_card.version} on the user's corrected masks. "
               + (base_card.notes or "")).strip(),
        extra={"status": "incomplete", "fine_tune": {"base": base_card.version,
                                                     "validation_on": "unchanged slices of the corrected scans"
                                                     if accepted_validation else "base validation cases"}},
    )
