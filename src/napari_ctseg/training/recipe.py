"""Training from scratch: a strategy on the one engine (``napari_ctseg.training.engine``).

``train`` checks its input, reads the cases and hands the engine a plan (sample augmented
batches, validate, keep the best checkpoint); the card of the trained version records the
run's settings, data, split and validation figures."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch

from napari_ctseg import __version__
from napari_ctseg.training.engine import (
    Evaluation,
    Outcome,
    TrainingPlan,
    TrainingReport,
    merged_settings,
    recalibrate_batchnorm,
    run,
    seeded,
)
from napari_ctseg.errors import ModelError, TrainingError
from napari_ctseg.models.definition import starter_definition
from napari_ctseg.models.predict import predict_volume
from napari_ctseg.models.preprocess import Preprocessing, find_crop, mask_crop
from napari_ctseg.models.registry import LICENSE_NOTE, WEIGHTS_FILE, ModelCard
from napari_ctseg.models.unet import build_model, count_parameters
from napari_ctseg.training.labels.silver import SILVER_LUNGS_METHOD
from napari_ctseg.training.augment import augment
from napari_ctseg.training.cases import PSEUDO_METHOD, Case, load_case, load_host_case, load_pseudo_case
from napari_ctseg.training.config import TARGET_LABELS, TARGET_NOTES, TrainingConfig, check_target, default_config
from napari_ctseg.training.datasets import _citations, _data_record
from napari_ctseg.training.sampling import SliceCache, _build_hosts, _Hosts, build_cache, sample_batch
from napari_ctseg.training.splits import _checked_split, _SplitNames
from napari_ctseg.training.validation import NEGATIVE_TOLERANCE_PCT, validate


def train(target: str, data_dir, out_dir, epochs: int | None = None, seed: int = 0,
          device: str = "cpu", *, version: str | None = None,
          split: dict[str, Sequence[str]] | None = None,
          config: TrainingConfig | dict[str, Any] | None = None,
          threads: int | None = None, overwrite: bool = False, notes: str | None = None,
          ) -> Generator[TrainingReport, None, ModelCard | None]:
    """Train ``target``'s model on ``data_dir`` and write it to ``out_dir``.

    ``split`` ({"train": [...], "validation": [...]}) defaults to ``splits.json``;
    ``config`` overrides ``default_config(target)`` (a dict merges into it, nested dicts
    key by key); ``epochs`` overrides the config's. ``version`` (default: ``out_dir``'s
    name) and ``notes`` (default: ``TARGET_NOTES[target]``) go into the card. ``threads``
    sets ``torch.set_num_threads``. Raises ``TrainingError`` for bad input before any work;
    yields ``TrainingReport``s; returns the card (on a cancel: the best checkpoint so far,
    or None when none was validated yet).
    """
    check_target(target)
    cfg, prep, labels = _checked_config(target, config, epochs)
    dev = torch_device(device)
    out_dir = Path(out_dir)
    if (out_dir / WEIGHTS_FILE).exists() and not overwrite:
        raise TrainingError(f"{out_dir}: already holds a model; choose a new folder (a run never "
                            "overwrites a model) or pass overwrite")
    names = _checked_split(target, data_dir, split, cfg)
    rng, gen = seeded(seed, threads)
    t0 = time.perf_counter()
    data = yield from _read_training_data(target, Path(data_dir), names, cfg, prep)
    model = build_model({**cfg.architecture}).to(dev)
    if cfg.init_from and cfg.init_from.get("version"):
        _init_weights(model, target, cfg.init_from)

    def batch():
        if data.guidance is not None:
            from napari_ctseg.training.guidance import guided_batch

            return guided_batch(model, data.guidance, data.sample, cfg, prep, rng, gen, dev)
        x, y = augment(*data.sample(cfg.batch_size, rng), cfg.augmentation, prep.pad_value, gen)
        return x.to(dev), y.to(dev)

    def evaluate(model, epoch: int) -> Evaluation | None:
        if epoch % cfg.val_every and epoch != cfg.epochs:
            return None
        if cfg.bn_recalibration_batches:
            recalibrate_batchnorm(model, (batch()[0] for _ in range(cfg.bn_recalibration_batches)), dev)
        val = validate(model, data.val_cases, prep, labels, dev)
        if data.guidance is None:
            return Evaluation(val["selection"], {"val_dice": val["mean_dice"]}, val["cases"],
                              f"validation Dice {val['mean_dice']:.4f}")
        from napari_ctseg.training.guidance import click_validation

        clicks = click_validation(model, data.val_cases, prep, labels, data.guidance.spec, device=dev)
        return Evaluation(0.5 * (val["selection"] + clicks["mean"]),
                          {"val_dice": val["mean_dice"], "val_dice_3_clicks": clicks["mean"]},
                          val["cases"],
                          f"validation Dice {val['mean_dice']:.4f}, after 3 clicks {clicks['mean']:.4f}")

    def finish(model, outcome: Outcome) -> ModelCard:
        card = _training_card(target, version or out_dir.name, cfg, prep, labels, data, outcome, notes)
        card.training.update({"seed": seed, "device": str(dev), "threads": torch.get_num_threads(),
                              "parameters": count_parameters(model)})
        card.validation = _final_validation(model, data, outcome, prep, labels, dev)
        return card

    return (yield from run(TrainingPlan(
        model, dev, out_dir, cfg.epochs, cfg.steps_per_epoch, cfg.lr, cfg.weight_decay,
        int(cfg.warmup_fraction * cfg.epochs * cfg.steps_per_epoch), 0.01, batch, evaluate, finish,
        _written, keep="best", keep_on_cancel=True, dice_weight=cfg.dice_weight, save_half=cfg.save_half,
        ema_decay=cfg.ema_decay, t0=t0)))


def _init_weights(model, target: str, init: dict[str, Any]) -> None:
    """Load a bundled version's weights into ``model`` (a warm start); ``TrainingError`` when
    the version is missing or its network differs."""
    from napari_ctseg.models.registry import load_model

    version = init.get("version")
    try:
        base, card = load_model(target, version, device="cpu")
    except ModelError as exc:
        raise TrainingError(f"init_from: {exc}") from None
    state = {k: v.float() for k, v in base.state_dict().items()}
    own = model.state_dict()
    for k, v in state.items():  # a guidance-aware network from a plain one: zero weights for the maps
        if k in own and v.dim() == 4 and own[k].shape[1] > v.shape[1] and own[k].shape[0] == v.shape[0] \
                and getattr(model, "guidance_channels", 0) == own[k].shape[1] - v.shape[1]:
            grown = torch.zeros_like(own[k])
            grown[:, :v.shape[1]] = v
            state[k] = grown
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(f"init_from: {target} {version}'s network differs from this run's ({exc})") from None


def _written(card: ModelCard, outcome: Outcome) -> tuple[ModelCard, dict[str, Any]]:
    """The ``"done"`` report's figures and words for a trained version, once it is in place."""
    return card, {"best_dice": outcome.best_score, "best_epoch": outcome.best_epoch,
                  "val_dice": card.validation["mean_dice"],
                  "message": f"wrote {card.weights_path} (best epoch {outcome.best_epoch}, "
                             f"validation Dice {card.validation['mean_dice']:.4f})"}


def _checked_config(target: str, config, epochs: int | None) -> tuple[TrainingConfig, Preprocessing,
                                                                       dict[str, int]]:
    """The run's settings, its preprocessing and the target's labels; ``TrainingError`` when
    the architecture, the preprocessing and the classes do not fit together."""
    cfg = merged_settings(default_config(target), config, "training", epochs)
    try:
        prep = Preprocessing.from_dict(cfg.preprocessing)
        model = build_model({**cfg.architecture})
    except ModelError as exc:
        raise TrainingError(str(exc)) from None
    if getattr(model, "in_channels", prep.channels) != prep.channels:
        raise TrainingError(f"the architecture takes {model.in_channels} input channels but the "
                            f"preprocessing makes {prep.channels} (context {prep.context})")
    divisor = getattr(model, "divisor", 1)
    if any(s % divisor for s in prep.size):
        raise TrainingError(f"preprocessing size {list(prep.size)} must be a multiple of {divisor} "
                            "for this U-Net depth")
    labels = TARGET_LABELS[target]
    n_classes = int(cfg.architecture.get("n_classes", len(labels) + 1))
    extra = dict(cfg.extra_classes)
    if n_classes != len(labels) + 1 + len(extra) or sorted(extra.values()) != list(
            range(len(labels) + 1, n_classes)):
        raise TrainingError(f"{target} has {len(labels)} label(s) and {len(extra)} training-only "
                            f"class(es), so the network needs {len(labels) + 1 + len(extra)} classes "
                            f"numbered after the labels, not {n_classes}")
    if cfg.stages and prep.crop != "mask":
        raise TrainingError("a version with stages sees its organ's square: preprocessing crop must be 'mask'")
    return cfg, prep, labels


@dataclass
class _TrainingData:
    """A run's cases, read: the training slices (and lesion hosts) to sample, the validation cases."""

    names: _SplitNames
    prep: Preprocessing
    train_cases: list[Case]
    val_cases: list[Case]
    pseudo_names: list[str]
    cache: SliceCache
    hosts: _Hosts | None = None
    lesion_settings: Any = None
    organ_lesions: dict[str, Any] | None = None
    organ_contrast: dict[str, Any] | None = None
    negatives: Any = None  # HardNegativeSettings for the hosts, or None
    silver_slice_counts: dict[str, int] | None = None
    guidance: Any = None  # training.guidance.GuidancePool for a guidance-aware version, or None

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_batch(self.cache, self.prep, n, rng, self.hosts, self.lesion_settings,
                            self.organ_lesions, self.organ_contrast, self.negatives)


def _read_training_data(target: str, data_dir: Path, names: _SplitNames, cfg: TrainingConfig,
                        prep: Preprocessing) -> Generator[TrainingReport, None, _TrainingData]:
    """Read and preprocess the cases, yielding ``"start"`` reports of what it reads."""
    n_train = len(names.train) + len(names.silver) + len(names.hosts)

    def start(message: str) -> TrainingReport:
        return TrainingReport("start", 0, cfg.epochs, steps=cfg.steps_per_epoch, message=message)

    yield start(f"reading {n_train} training and {len(names.validation) + len(names.negative)} validation cases")
    train_cases = [load_case(target, data_dir, n) for n in names.train]
    train_cases += [load_case(target, data_dir, n, silver=True, airway_label=cfg.extra_classes.get("airway"))
                    for n in names.silver]
    train_cases += [load_pseudo_case(data_dir, spec) for spec in names.pseudo]
    pseudo_names = [c.name for c in train_cases[len(train_cases) - len(names.pseudo):]]
    silver_counts = {}
    for folder in names.silver_slices:
        from napari_ctseg.training.labels.silver_slices import load_silver_slices

        yield start(f"reading the silver-labelled slices of {folder}")
        found = load_silver_slices(data_dir, folder, cleaning=cfg.silver_slices.get("cleaning"))
        silver_counts[folder] = len(found)
        train_cases += found
    val_cases = [load_case(target, data_dir, n) for n in names.validation]
    val_cases += [load_host_case(data_dir, n) for n in names.negative]
    if cfg.stages:
        yield start(f"locating the {target} in the validation cases with {target} "
                    f"{cfg.stages[0].get('version')}")
        _locate_cases(target, cfg.stages, val_cases, prep)
    n_classes = int(cfg.architecture.get("n_classes", len(TARGET_LABELS[target]) + 1))
    data = _TrainingData(names, prep, train_cases, val_cases, pseudo_names,
                         build_cache(train_cases, prep, n_classes, cfg.foreground_weight, cfg.group_shares),
                         organ_lesions=cfg.organ_lesions, organ_contrast=cfg.organ_contrast,
                         silver_slice_counts=silver_counts)
    if names.hosts:
        from napari_ctseg.training.labels.synthetic import LesionSettings

        data.lesion_settings = LesionSettings.from_dict(cfg.synthetic)
        host_cases = [load_host_case(data_dir, n) for n in names.hosts]
        data.hosts = _build_hosts(host_cases, prep, _reference_model(target, cfg.synthetic, prep),
                                  data.lesion_settings.hard_negative_weight)
        if cfg.hard_negatives:
            from napari_ctseg.training.labels.negatives import HardNegativeSettings

            data.negatives = HardNegativeSettings.from_dict(cfg.hard_negatives)
    if cfg.guidance:
        from napari_ctseg.training.guidance import build_pool, settings_of

        st = settings_of(cfg.guidance)
        yield start("simulating current masks and clicks for the guidance-aware network")
        reference = None
        if st.get("reference_version"):
            from napari_ctseg.models.registry import load_model

            reference = load_model(target, st["reference_version"], device="cpu")[0].float()
        data.guidance = build_pool(data.cache, train_cases, prep, sorted(TARGET_LABELS[target].values()),
                                   st, np.random.default_rng(1), reference, cfg.group_shares)
    return data


HARD_NEGATIVES_NOTE = (
    "synthetic hard negatives (napari_ctseg.training.labels.negatives): host slices made to look as normal lungs do on "
    "other scanners, the infection label left empty: expiration (aerated lung +100..+300 HU, more in the "
    "dependent lung), dependent atelectasis bands, cardiac-motion blur next to the mediastinum, thick "
    "slices (5-8 mm averaged), low-dose noise, sharp or soft kernels")


def _silver_slices_note(cfg: TrainingConfig, n: int | None) -> str:
    from napari_ctseg.training.labels.silver_slices import PSEUDO_CLEANING

    c = {"min_inside": 0.6, "dilate_px": 3, "min_pixels": 10, "min_contact": 0.25, "max_bone": 0.3,
         **(cfg.silver_slices.get("cleaning") or {})}
    return (f"{n} slices; " if n else "") + PSEUDO_CLEANING.format(**c) + (
        "; the marks dropped are ignored by the loss (not taught as background)")


def _training_card(target: str, version: str, cfg: TrainingConfig, prep: Preprocessing,
                   labels: dict[str, int], data: _TrainingData, outcome: Outcome, notes: str | None) -> ModelCard:
    """The card of a trained version (its ``validation`` is filled by the caller)."""
    from napari_ctseg.training.guidance import card_note

    names, extra = data.names, dict(cfg.extra_classes)
    return ModelCard(
        target=target, version=version, labels=dict(labels),
        architecture=dict(cfg.architecture), preprocessing=prep.to_dict(),
        training={
            "data": _data_record(names.all),
            "split": names.to_card(),
            "labels_source": {**{n: "expert" for n in names.train + names.validation},
                              **{n: f"silver-standard ({SILVER_LUNGS_METHOD})" for n in names.silver},
                              **{n: "no infection (negative); synthetic lesions with exact masks painted into "
                                    "its lungs (expert lung mask where the folder has one, else silver-standard)"
                                 for n in names.hosts},
                              **{n: "no infection (negative validation: scored by the false-positive % of "
                                    "the lung)" for n in names.negative},
                              **{n: PSEUDO_METHOD for n in data.pseudo_names},
                              **{n: _silver_slices_note(cfg, (data.silver_slice_counts or {}).get(n))
                                 for n in names.silver_slices}},
            **({"synthetic_hard_negatives": {"settings": dict(cfg.hard_negatives), "note": HARD_NEGATIVES_NOTE}}
               if cfg.hard_negatives and data.hosts is not None else {}),
            **({"hard_negative_slices": data.hosts.hard} if data.hosts is not None else {}),
            **({"guidance": card_note(data.guidance)} if data.guidance is not None else {}),
            **({"extra_classes": extra, "extra_classes_note": "training-only classes learnt from the "
                "silver labels (airway: the trachea and main bronchi found by the classical method); "
                "the output counts them as background"} if extra else {}),
            "epochs": cfg.epochs, "epochs_run": outcome.epochs_run, "stopped_early": outcome.stopped,
            "best_epoch": outcome.best_epoch,
            "selection": ("best mean of (mean validation Dice with no click) and (mean Dice after 3 clicks "
                          "of the robot user, refined by the network itself), checked every epoch"
                          if data.guidance is not None else
                          "best mean of (mean validation Dice) and (negative score = 1 - min(1, "
                          f"false-positive % of the lung / {NEGATIVE_TOLERANCE_PCT})), checked every epoch"
                          if names.negative else "best mean validation Dice (mean over cases of "
                          "the mean Dice over labels), checked every epoch"),
            "steps": outcome.steps, "config": cfg.to_dict(),
            "weights_dtype": "float16" if cfg.save_half else "float32",
            "history": outcome.history,
            "software": {"napari-ctseg": __version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        },
        license=LICENSE_NOTE, cite=_citations(names.all),
        notes=TARGET_NOTES[target] if notes is None else notes,
        **starter_definition(target, labels),
        stages=[dict(st) for st in cfg.stages],
        guidance=data.guidance.spec.to_dict() if data.guidance is not None else {},
    )


def _final_validation(model, data: _TrainingData, outcome: Outcome, prep: Preprocessing,
                      labels: dict[str, int], dev) -> dict[str, Any]:
    """The card's validation figures of the weights as stored: every figure on the validation
    cases and the Dice on the training cases; a cancelled run, its best epoch's Dice only."""
    if outcome.stopped:
        return {"mean_dice": outcome.best_score, "note": f"stopped at epoch {outcome.epochs_run}; "
                                                         f"figures at the best epoch {outcome.best_epoch}"}
    full = validate(model, data.val_cases, prep, labels, dev, full=True)
    fit = validate(model, data.train_cases, prep, labels, dev)
    return {"mean_dice": full["mean_dice"], "pooled_dice": full["pooled_dice"], "cases": full["cases"],
            **({"negative_score": full["negative_score"]} if "negative_score" in full else {}),
            "training_cases_dice": fit["cases"],
            "note": "raw network output (no post-processing), on each case's original grid"}


def _locate_cases(target: str, stages: list[dict[str, Any]], cases: list[Case], prep: Preprocessing) -> None:
    """Set each volume case's crop and slices from the locate stage's mask, as at inference."""
    from napari_ctseg.models.definition import apply_postprocess
    from napari_ctseg.models.registry import load_model

    version = stages[0].get("version")
    try:
        model, card = load_model(target, version, device="cpu")
    except ModelError as exc:
        raise TrainingError(f"the locate stage: {exc}") from None
    model.eval()
    loc_prep = Preprocessing.from_dict(card.preprocessing)
    for case in cases:
        if case.hu is None or case.negative:
            continue
        coarse = apply_postprocess(card, predict_volume(model, case.hu, loc_prep), {}, case.spacing, hu=case.hu)
        found = mask_crop(coarse, case.spacing, prep)
        if found is None:
            case.crop, case.z_box = find_crop(case.hu, replace(prep, crop="none")), np.arange(0)
        else:
            case.crop, case.z_box = found


def _reference_model(target: str, synthetic: dict[str, Any], prep: Preprocessing):
    """The model (eval, CPU) and input channels named by ``synthetic["hard_negative_model"]``,
    or None when none is named, it is missing, or it sees another grid or window."""
    version = synthetic.get("hard_negative_model")
    if not version:
        return None
    from napari_ctseg.models.registry import load_model

    try:
        model, card = load_model(target, version, device="cpu")
    except ModelError:
        return None
    ref = Preprocessing.from_dict(card.preprocessing)
    if (ref.window, ref.size, ref.crop, ref.crop_margin) != (prep.window, prep.size, prep.crop, prep.crop_margin):
        return None
    model.eval()
    return model, ref.channels


def torch_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TrainingError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise TrainingError(f"device {device!r}: Apple MPS is not available here; use --device cpu")
    return dev


def run_to_end(reports) -> ModelCard | None:
    """Drive a ``train`` generator to its end without threads; return the card it wrote."""
    card = None
    for report in reports:
        if report.card is not None:
            card = report.card
    return card
