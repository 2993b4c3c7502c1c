"""The one training engine of training and fine-tuning: a generator of progress reports (Qt-free).

``run(plan)`` owns everything a run of optimisation steps needs, whatever the run is for:
the epoch/step loop over the batches ``plan.batch()`` samples (augmented), the AdamW step
(``optimisation_step``: Dice + cross-entropy, plus an optional penalty, in optional reduced
precision) at the warm-up/cosine learning rate (``warmup_cosine``), the periodic
``plan.evaluate`` with the best (or the last) state kept, per-epoch checkpoints, a cancel
(closing the generator) and the version written to a hidden ``.<name>.partial`` folder
beside ``plan.out_dir`` and renamed into place only when complete. It yields a
``TrainingReport`` after every step and every epoch and a ``"done"`` one at the end.
What differs between training a model from scratch (``training.train``) and fine-tuning
one on the user's corrections (``fine_tuning.fine_tune``) is a ``TrainingPlan``: a small
dataclass of settings and callables (sampling, evaluation, the card, what happens once the
version is in place) that each of them fills in.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Generator

import numpy as np
import torch
import torch.nn.functional as F

from napari_ctseg.errors import TrainingError
from napari_ctseg.models.registry import ModelCard, half_state_dict, write_version


# ---------------------------------------------------------------------------------------
# Progress


@dataclass
class TrainingReport:
    """Progress of a training or fine-tuning run.

    ``kind``: ``"prepare"`` (reading data, measuring a base model), ``"start"`` (the
    optimisation is about to begin), ``"step"`` (after each optimisation step; ``loss`` is
    the step's), ``"epoch"`` (``loss`` is the epoch's mean, ``val_dice`` the mean
    validation Dice and ``val_cases`` per case) or ``"done"`` (the version is written;
    ``card`` is its card). A cancelled run yields nothing more: the generator returns the
    card of what it kept, or None. Fine-tuning fills ``corrections_dice`` and ``promoted``.
    ``done``/``total`` count optimisation steps over the whole run; ``message`` says in
    words what is happening, for every kind.
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    val_dice: float | None = None
    val_cases: dict[str, float] | None = None
    best_dice: float | None = None
    best_epoch: int | None = None
    elapsed_s: float = 0.0
    message: str = ""
    card: ModelCard | None = None
    corrections_dice: float | None = None  # fine-tuning: Dice on the held-aside corrected slices
    promoted: bool | None = None  # fine-tuning, "done": whether the new version became active

    @property
    def total(self) -> int:
        """Optimisation steps planned in the whole run."""
        return max(self.epochs * max(self.steps, 1), 1)

    @property
    def done(self) -> int:
        """Optimisation steps done so far (``total`` once the run is done)."""
        if self.kind == "done":
            return self.total
        return min(max(self.epoch - 1, 0) * max(self.steps, 1) + self.step, self.total)

    @property
    def fraction(self) -> float:
        """How much of the run is done, 0..1."""
        return self.done / self.total


# ---------------------------------------------------------------------------------------
# The step and the schedule


def warmup_cosine(lr: float, total_steps: int, warmup_steps: int, floor: float):
    """The learning rate at each step (0-based): a linear warm-up over ``warmup_steps``, then a
    cosine decay to ``floor`` x ``lr`` at the last step."""
    warmup_steps = max(1, int(warmup_steps))

    def at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))

    return at


IGNORE_LABEL = 255  # a training target's "unknown" pixels: neither loss term sees them


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` x (1 - soft Dice of the foreground classes, over the batch).

    Pixels whose target is ``IGNORE_LABEL`` (e.g. a silver label's doubtful marks) count in
    neither term."""
    n_classes = logits.shape[1]
    valid = target != IGNORE_LABEL
    masked = not bool(valid.all())
    if masked and not bool(valid.any()):
        return logits.sum() * 0.0  # nothing to learn from (cross-entropy over no pixel is NaN)
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL) if masked else F.cross_entropy(logits, target)
    if dice_weight <= 0 or n_classes < 2:
        return ce
    probs = torch.softmax(logits, dim=1)
    if masked:
        target = target.where(valid, torch.zeros_like(target))
        probs = probs * valid[:, None].to(probs.dtype)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if masked:
        onehot = onehot * valid[:, None].to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    soft_dice = (2.0 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1.0 - soft_dice[1:].mean())


def optimisation_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      lr: float, *, dice_weight: float = 1.0, precision: torch.dtype | None = None,
                      penalty=None) -> float:
    """One step at learning rate ``lr``: the forward pass (in ``precision`` autocast when given),
    Dice + cross-entropy (plus ``penalty()``, e.g. L2-SP), backward, update. Returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    with torch.autocast(x.device.type, dtype=precision or torch.float32, enabled=precision is not None):
        logits = model(x)
    loss = dice_ce_loss(logits.float(), y, dice_weight)
    if penalty is not None:
        loss = loss + penalty()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


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


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Keep every BatchNorm's running statistics as they are (the layers in eval mode) while
    the rest of the model trains."""
    for m in _batchnorms(model):
        m.eval()


def recalibrate_batchnorm(model: torch.nn.Module, batches, device) -> None:
    """Set every BatchNorm's running statistics to the exact average over ``batches`` (inputs
    only) for the model's current weights. The model is left in training mode."""
    bns = _batchnorms(model)
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x.to(device))
    for bn, m in zip(bns, saved):
        bn.momentum = m


def merged_settings(base, overrides, what: str, epochs: int | None = None):
    """``base`` (a settings dataclass with ``epochs``, ``steps_per_epoch``, ``batch_size``) with
    ``overrides``: another such object replaces it, a dict changes the fields it names (a
    nested dict key by key), then ``epochs`` when given. ``TrainingError`` for an unknown
    field or a count below 1."""
    if isinstance(overrides, type(base)):
        base = overrides
    elif overrides is not None:
        unknown = sorted(set(overrides) - {f.name for f in fields(base)})
        if unknown:
            raise TrainingError(f"unknown {what} setting(s): {', '.join(unknown)}")
        base = replace(base, **{key: {**getattr(base, key), **value}
                                if isinstance(getattr(base, key), dict) and isinstance(value, dict) else value
                                for key, value in overrides.items()})
    if epochs is not None:
        base = replace(base, epochs=int(epochs))
    if base.epochs < 1 or base.steps_per_epoch < 1 or base.batch_size < 1:
        raise TrainingError("epochs, steps per epoch and batch size must be at least 1")
    return base


def seeded(seed: int, threads: int | None = None) -> tuple[np.random.Generator, torch.Generator]:
    """Seed torch and set its thread count; the numpy and torch generators a run samples with."""
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------
# The plan of a run, and the run


@dataclass
class Evaluation:
    """What one periodic evaluation found.

    ``score``: what picks the best state (higher is better); ``figures``: recorded in the
    epoch's history entry (rounded) and reported (``val_dice``, ``corrections_dice``);
    ``summary``: the figures in words, for the epoch's message."""

    score: float | None
    figures: dict[str, float | None]
    val_cases: dict[str, Any] | None = None
    summary: str = ""


@dataclass
class Outcome:
    """How the optimisation went, for the card: epochs and steps run, whether it was cancelled,
    the history (one entry an epoch) and the best evaluation."""

    epochs_run: int = 0
    steps: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -1.0


@dataclass
class TrainingPlan:
    """Everything ``run`` needs to know about one run: a strategy of training.

    ``batch()``: the next batch (x (B, C, H, W), y (B, H, W)) sampled, augmented and on
    ``device``. ``evaluate(model, epoch)``: an ``Evaluation`` or None (not this epoch).
    ``finish(model, outcome)``: the card of the weights as stored (``model`` holds them, in
    eval mode). ``published(card, outcome)``: called once the version is in place; returns
    the card to report and the ``"done"`` report's fields (``message``, ``val_dice``, ...).
    ``checkpoint(outcome)``: the card of a checkpoint written after every epoch into the
    partial folder (None: no checkpoints). ``keep``: ``"best"`` (the best-scored state) or
    ``"last"``. ``keep_on_cancel``: a cancelled run still writes what it kept (when
    anything was evaluated); otherwise a cancel leaves nothing. ``ema_decay`` > 0: an
    exponential moving average of the weights (and BatchNorm buffers) is updated after every
    step (``torch.optim.swa_utils.AveragedModel``), and it is the average that is evaluated,
    kept and written; the optimiser's weights only feed it.
    """

    model: torch.nn.Module
    device: torch.device
    out_dir: Path
    epochs: int
    steps_per_epoch: int
    lr: float
    weight_decay: float
    warmup_steps: int
    lr_floor: float
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    evaluate: Callable[[torch.nn.Module, int], Evaluation | None]
    finish: Callable[[torch.nn.Module, Outcome], ModelCard]
    published: Callable[[ModelCard, Outcome], tuple[ModelCard, dict[str, Any]]]
    checkpoint: Callable[[Outcome], ModelCard] | None = None
    keep: str = "best"
    keep_on_cancel: bool = False
    dice_weight: float = 1.0
    precision: torch.dtype | None = None
    penalty: Callable[[], torch.Tensor] | None = None
    freeze_batchnorm: bool = False
    save_half: bool = True
    ema_decay: float = 0.0
    t0: float = field(default_factory=time.perf_counter)


def partial_dir(out_dir: Path) -> Path:
    """The hidden folder a version is written to before it is renamed to ``out_dir``."""
    return out_dir.parent / f".{out_dir.name}.partial"


def run(plan: TrainingPlan) -> Generator[TrainingReport, None, ModelCard | None]:
    """Optimise ``plan.model``, evaluate, keep and write the version; see the module docstring.

    Returns the card written, or None when a cancel left nothing."""
    model, epochs, steps = plan.model, plan.epochs, plan.steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    lr_at = warmup_cosine(plan.lr, epochs * steps, plan.warmup_steps, floor=plan.lr_floor)
    partial = partial_dir(Path(plan.out_dir))
    shutil.rmtree(partial, ignore_errors=True)
    averaged = None
    if plan.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(plan.ema_decay), use_buffers=True)
    keeper = _Keeper(plan, model if averaged is None else averaged.module)
    out = keeper.outcome
    try:
        for epoch in range(1, epochs + 1):
            out.epochs_run = epoch
            losses = yield from _epoch_steps(plan, opt, lr_at, keeper, epoch, averaged)
            ev = plan.evaluate(keeper.source, epoch)
            keeper.consider(ev, epoch)
            mean_loss = float(np.mean(losses))
            figures = ev.figures if ev is not None else {"val_dice": None}
            out.history.append({"epoch": epoch, "loss": round(mean_loss, 5),
                                **{k: _round(v) for k, v in figures.items()}})
            if plan.checkpoint is not None and keeper.kept() is not None:
                write_version(partial, half_state_dict(keeper.kept()), plan.checkpoint(out))
            yield keeper.report("epoch", epoch, steps, loss=mean_loss, val_dice=figures.get("val_dice"),
                                val_cases=None if ev is None else ev.val_cases,
                                corrections_dice=figures.get("corrections_dice"),
                                message=f"epoch {epoch}/{epochs}: loss {mean_loss:.4f}"
                                        + ("" if ev is None or not ev.summary else f", {ev.summary}"))
    except GeneratorExit:
        out.stopped = True
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    kept = keeper.kept()
    if out.stopped and (not plan.keep_on_cancel or kept is None):
        shutil.rmtree(partial, ignore_errors=True)
        return None
    if kept is None:  # pragma: no cover - the last epoch is always evaluated
        raise TrainingError("training ended without a validated checkpoint")
    card = _write(plan, kept, out, partial)
    if out.stopped:
        return card
    card, done = plan.published(card, out)
    yield TrainingReport("done", epochs, epochs, steps, steps, elapsed_s=time.perf_counter() - plan.t0,
                         card=card, **done)
    return card


def _epoch_steps(plan: TrainingPlan, opt, lr_at, keeper: "_Keeper", epoch: int, averaged=None
                 ) -> Generator[TrainingReport, None, list[float]]:
    """One epoch's optimisation steps (each folded into ``averaged``, a weight average, when
    given), a ``"step"`` report after each; returns their losses."""
    model, out, losses = plan.model, keeper.outcome, []
    model.train()
    if plan.freeze_batchnorm:
        freeze_batchnorm(model)
    for step in range(1, plan.steps_per_epoch + 1):
        x, y = plan.batch()
        losses.append(optimisation_step(model, opt, x, y, lr_at(out.steps), dice_weight=plan.dice_weight,
                                        precision=plan.precision, penalty=plan.penalty))
        out.steps += 1
        if averaged is not None:
            averaged.update_parameters(model)
        if not math.isfinite(losses[-1]):
            raise TrainingError(f"the loss became {losses[-1]} at step {out.steps}; lower the learning rate")
        yield keeper.report("step", epoch, step, loss=losses[-1], message=f"epoch {epoch}/{plan.epochs}, "
                            f"step {step}/{plan.steps_per_epoch}: loss {losses[-1]:.4f}")
    return losses


class _Keeper:
    """Which state a run keeps: the best-scored one (a copy, taken when an evaluation beats the
    best so far) or the last, of ``source`` (the model, or its weight average); and the
    reports that say so."""

    def __init__(self, plan: TrainingPlan, source: torch.nn.Module):
        self.plan, self.by_best = plan, plan.keep == "best"
        self.source = source
        self.outcome = Outcome()
        self.best_state: dict[str, torch.Tensor] | None = None

    def consider(self, ev: Evaluation | None, epoch: int) -> None:
        out = self.outcome
        if self.by_best and ev is not None and ev.score > out.best_score:
            out.best_score, out.best_epoch = ev.score, epoch
            self.best_state = copy.deepcopy(self.source.state_dict())

    def kept(self) -> dict[str, torch.Tensor] | None:
        return self.best_state if self.by_best else self.source.state_dict()

    def report(self, kind: str, epoch: int, step: int, **kw) -> TrainingReport:
        out, best = self.outcome, {}
        if self.by_best and kind == "step":
            best = {"best_dice": out.best_score if self.best_state is not None else None,
                    "best_epoch": out.best_epoch or None}
        elif self.by_best:
            best = {"best_dice": out.best_score, "best_epoch": out.best_epoch}
        return TrainingReport(kind, epoch, self.plan.epochs, step, self.plan.steps_per_epoch,
                              elapsed_s=time.perf_counter() - self.plan.t0, **best, **kw)


def _write(plan: TrainingPlan, kept: dict[str, torch.Tensor], out: Outcome, partial: Path) -> ModelCard:
    """The kept weights as stored (validated as stored by ``plan.finish``) and their card,
    written to the partial folder, then renamed into place."""
    try:
        state = half_state_dict(kept) if plan.save_half else kept
        plan.model.load_state_dict(state)
        plan.model.eval()
        card = plan.finish(plan.model, out)
        card.training["time_s"] = round(time.perf_counter() - plan.t0, 1)
        write_version(partial, state, card)
        _move_into_place(partial, Path(plan.out_dir), card.weights_file)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    card.path = Path(plan.out_dir)
    return card


def _move_into_place(partial: Path, out_dir: Path, weights_file: str) -> None:
    """Rename the finished folder to ``out_dir``; into an existing folder (a run told to
    overwrite), file by file, the weights before the card that names their checksum."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not out_dir.exists():
        os.replace(partial, out_dir)
        return
    for f in sorted(partial.iterdir(), key=lambda p: p.name != weights_file):
        os.replace(f, out_dir / f.name)
    partial.rmdir()


def _round(v):
    return None if v is None else round(float(v), 5)


__all__ = [
    "TrainingReport", "TrainingPlan", "Evaluation", "Outcome", "run", "partial_dir", "warmup_cosine",
    "dice_ce_loss", "optimisation_step", "autocast_dtype", "freeze_batchnorm", "recalibrate_batchnorm",
    "seeded", "merged_settings",
]
