"""What decides how a model is trained: ``TrainingConfig`` and each target's default recipe
(``default_config``), the settings and splits read from a card or a JSON file, the targets'
training labels and the notes a card carries about their data."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_ctseg.errors import TrainingError
from napari_ctseg.models.registry import TARGETS
from napari_ctseg.training.labels.negatives import DEFAULT_HARD_NEGATIVES
from napari_ctseg.training.labels.synthetic import DEFAULT_SYNTHETIC

TARGET_LABELS: dict[str, dict[str, int]] = {
    "lungs": {"right_lung": 1, "left_lung": 2},
    "liver": {"liver": 1},
    "infection": {"infection": 1},
}


# What a card says about the limits of each target's bundled training data.
TARGET_NOTES: dict[str, str] = {
    "lungs": "Expert lung labels of one abdominal CT (3D-IRCADb-01 patient 7, lung bases) plus "
             "silver-standard labels (classical method with the trachea and main bronchi removed, "
             "checked by eye slice by slice) of a lower-chest-to-kidneys CT (CHAOS CT set 3) and three "
             "full chest CTs, apex to base (ITKElastix example, COVID-CT-MD normal 001 and COVID-19 "
             "P001); validated on the expert labels of another abdominal CT (IRCAD patient 1); a fourth "
             "full chest (Lung-PET-CT-Dx A0001) is held out for the airway check. The trachea and main "
             "bronchi are not lung. Silver labels follow the air (< -320 HU): dense consolidation and "
             "large tumours may be left out. Labels are the patient's right (1) and left (2) lung; "
             "training uses no left-right flips.",
    "liver": "Trained on two contrast-enhanced abdominal CTs of patients with liver tumours "
             "(3D-IRCADb-01 patients 1 and 7); validated on a healthy donor's portal-phase CT from "
             "another centre (CHAOS CT set 3, whose bottom slice cuts off the tip of the right lobe) "
             "and a 3-slice scan (dcmqi). Thin data: expect errors on unusual livers, other contrast "
             "phases and fields of view unlike the training scans. A version with a locate stage "
             "(coarse-to-fine) finds the liver with that version and sees only the liver's square "
             "(plus 20 mm) on its slices (plus 15 mm): a liver the locate version misses entirely is "
             "not found. Its training livers carry synthetic tumour-like lesions (labels unchanged).",
    "infection": "Positives: 40 expert axial 8-bit JPG slices of COVID-19 patients (COVID-SemiSeg) and 1600 "
                 "slices of 20 other COVID-19 patients with another model's labels (Semi-Inf-Net's "
                 "pseudo-labels on COVID-19-CT-Seg: silver, cleaned of marks outside the lungs, the "
                 "dropped marks ignored), all without HU, plus the upper half of one COVID-19 chest CT in HU "
                 "with pseudo-labels from the radiologists' slice labels. Negatives in HU: abdominal and "
                 "chest CTs without COVID-19, with synthetic lesions (exact masks) and synthetic hard "
                 "negatives (expiration, atelectasis, cardiac motion, thick slices, noise, kernels; label "
                 "empty). Chosen on the 10 held-out expert slices (not the published test set) and a "
                 "held-out chest without COVID-19. On HU scans the input is the lung window estimated "
                 "from the JPGs (see preprocessing.notes). A 2D model, slice by slice; the output is kept "
                 "only inside the lungs. No 3D expert infection mask was available: figures on HU scans "
                 "are slice-level (radiologists' labels) and false-positive % on scans without COVID-19.",
}


@dataclass
class TrainingConfig:
    """Everything that decides how a model is trained (recorded in its card).

    ``augmentation`` keys: ``rotate_deg`` (uniform +-), ``scale`` ([min, max], log-uniform),
    ``translate`` (fraction of the size, +-), ``affine_p`` (probability of a geometric
    change), ``dihedral`` (random 90-degree turns and flips: only where left and right do
    not matter), ``brightness`` (+- added to the [0, 1] input: a HU shift),
    ``contrast`` (+- relative), ``gamma`` ([min, max]), ``noise`` (max Gaussian sigma).
    """

    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    epochs: int = 30
    steps_per_epoch: int = 20
    batch_size: int = 12
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    dice_weight: float = 1.0
    foreground_weight: float = 2.0  # sampling weight of slices with foreground (1 without)
    augmentation: dict[str, Any] = field(default_factory=dict)
    val_every: int = 1
    save_half: bool = True  # store float16 weights (half the size); validated as stored
    # Infection: synthetic lesions painted into the host volumes' lungs (see
    # napari_ctseg.training.labels.synthetic.DEFAULT_SYNTHETIC); empty = none. "hard_negative_model" names a
    # version of the same target whose false positives on the hosts are sampled more often.
    synthetic: dict[str, Any] = field(default_factory=dict)
    # Training-only classes (name -> value after the card's labels), e.g. {"airway": 3}: the
    # network learns them from silver labels, and the output counts them as background.
    extra_classes: dict[str, int] = field(default_factory=dict)
    # Second stage (coarse-to-fine): the card's ``stages`` (a "locate" version of the same
    # target whose mask gives the crop; preprocessing crop "mask"). Validation cases are
    # seen through the locate version's crop, as at inference.
    stages: list[dict[str, Any]] = field(default_factory=list)
    # Tumour-like lesions painted inside the labelled organ, its label unchanged
    # (napari_ctseg.training.labels.synthetic.DEFAULT_ORGAN_LESIONS); empty = none.
    organ_lesions: dict[str, Any] = field(default_factory=dict)
    # The organ's HU and inner contrast changed at random, its mask unchanged
    # (napari_ctseg.training.labels.synthetic.DEFAULT_ORGAN_CONTRAST): other contrast phases; empty = none.
    organ_contrast: dict[str, Any] = field(default_factory=dict)
    # Before each validation, re-estimate the BatchNorm statistics on this many training
    # batches (exact averages for the current weights: "precise BN"); 0 = the running
    # averages. Running averages lag the weights at a high learning rate, and the liver's
    # second stage then swung between 0.0 and 0.84 validation Dice from epoch to epoch.
    bn_recalibration_batches: int = 0
    # > 0: validate, keep and ship an exponential moving average of the weights (decay per
    # step; 0.98 averages about the last 50 steps, two epochs) rather than the last step's
    # weights: a flatter, less lucky choice than one epoch's weights (Polyak averaging).
    ema_decay: float = 0.0
    # Infection: host slices made to look as normal lungs do on other scanners, the label
    # left empty (napari_ctseg.training.labels.negatives.DEFAULT_HARD_NEGATIVES); empty = none.
    hard_negatives: dict[str, Any] = field(default_factory=dict)
    # 8-bit slices with silver labels (the split's train_silver_slices): {"cleaning": {...}}
    # overrides napari_ctseg.training.labels.silver_slices.clean_pseudo_label's settings.
    silver_slices: dict[str, Any] = field(default_factory=dict)
    # Share of the labelled draws per case group ("expert", "silver_slices", "pseudo_hu"),
    # whatever each group's size; empty = every slice by its own weight.
    group_shares: dict[str, float] = field(default_factory=dict)
    # Start from a bundled version's weights ({"version": "v1"}, same target and network)
    # rather than from random ones; empty = from scratch.
    init_from: dict[str, Any] = field(default_factory=dict)
    # A guidance-aware (click-to-correct) version: how clicks become maps and are simulated in
    # training (napari_ctseg.training.guidance.DEFAULT_GUIDANCE); the architecture then needs
    # "guidance_channels": 3. Empty = a plain version.
    guidance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ORGAN_AUG = {"rotate_deg": 15.0, "scale": [0.8, 1.25], "translate": 0.08, "affine_p": 0.85,
              "dihedral": False, "brightness": 0.04, "contrast": 0.12, "gamma": [1.0, 1.0],
              "noise": 0.02}


def default_config(target: str) -> TrainingConfig:
    """The settings of the newest bundled version of ``target`` (older versions' settings are in
    their cards' ``training.config``)."""
    check_target(target)
    unet = {"name": "unet2d", "base": 16, "depth": 5, "max_channels": 128, "norm": "batch"}
    if target == "lungs":
        return TrainingConfig(
            architecture={**unet, "in_channels": 3, "n_classes": 4},
            preprocessing={"input": "hu", "window": [-1024.0, 600.0], "context": 1, "crop": "body",
                           "body_threshold_hu": -500.0, "crop_margin": 0.04, "pad_hu": -1024.0,
                           "size": [128, 128]},
            # No left-right flips: the labels are the right and left lung. (A first model
            # trained on IRCAD 7 alone took air outside the body for lung; the silver-labelled
            # CHAOS scan, with air between body and table, cured that.)
            augmentation=dict(_ORGAN_AUG),
            epochs=40,
            # v2: the airways of the silver-labelled chests as a class of their own, so the
            # network learns what is not lung next to it (v1 labelled 52 % of a held-out
            # chest's trachea and main bronchi lung, a first v2 without this class 17 %).
            extra_classes={"airway": 3},
        )
    if target == "liver":
        # v3: v1's network and data (the whole body's square at 128 x 128, about 3 mm a pixel,
        # 2.5D) with an exponential moving average of the weights (decay 0.99 a step: about
        # the last 4 epochs) validated, kept and shipped, its BatchNorm statistics re-estimated
        # before each validation. Over its last 15 epochs v1's validation Dice swung between
        # 0.83 and 0.93 (its best epoch was partly luck); the average's stayed in 0.920-0.928.
        # v2's recipe (coarse-to-fine, lesions) is in its card: ctseg train --config
        # weights/liver/v2/card.json.
        return TrainingConfig(
            architecture={**unet, "in_channels": 3, "n_classes": 2},
            preprocessing={"input": "hu", "window": [-200.0, 300.0], "context": 1, "crop": "body",
                           "body_threshold_hu": -500.0, "crop_margin": 0.04, "pad_hu": -1024.0,
                           "size": [128, 128]},
            augmentation={**_ORGAN_AUG, "brightness": 0.14, "contrast": 0.15},
            epochs=30,
            steps_per_epoch=25,
            bn_recalibration_batches=10,
            ema_decay=0.99,
        )
    # Infection v4: v1's network and input (one slice, 160 x 160; v2's 2.5D HU input lost
    # Dice on the 8-bit slices, which have no neighbours) on far more data: the 40 expert
    # slices, the 1600 silver-labelled slices of 20 other patients (cleaned; their doubtful
    # marks ignored) as the bulk of the positives, the COVID-19 chest's upper half with
    # pseudo-labels, and HU scans without COVID-19 as negatives, as hosts for synthetic
    # lesions and as synthetic hard negatives (expiration, atelectasis, cardiac motion,
    # thick slices, noise, kernels); hard negatives weighted by v3's false positives.
    # Chosen on the 10 expert validation slices and a held-out chest without COVID-19.
    # (v2's recipe: ctseg train --config weights/infection/v2/card.json.)
    return TrainingConfig(
        architecture={**unet, "in_channels": 1, "n_classes": 2},
        preprocessing={"input": "hu", "window": list(INFECTION_WINDOW), "context": 0, "crop": "body",
                       "body_threshold_hu": -500.0, "crop_margin": 0.04, "pad_hu": -1024.0,
                       "size": [160, 160], "notes": INFECTION_WINDOW_NOTE},
        batch_size=12,
        steps_per_epoch=40,
        epochs=30,
        lr=1e-3,
        # The training JPGs come in mixed orientations and auto-windowed contrasts, and
        # infection has no side: turns and flips are fine, and intensity jitter is wide.
        augmentation={"rotate_deg": 20.0, "scale": [0.8, 1.25], "translate": 0.08, "affine_p": 0.85,
                      "dihedral": True, "brightness": 0.08, "contrast": 0.2, "gamma": [0.75, 1.35],
                      "noise": 0.03},
        synthetic={**DEFAULT_SYNTHETIC, "host_fraction": 0.45, "p_lesion": 0.3, "hard_negative_model": "v3"},
        hard_negatives={**DEFAULT_HARD_NEGATIVES, "mass_p": 0.25},
        group_shares={"expert": 0.35, "silver_slices": 0.45, "pseudo_hu": 0.2},
        bn_recalibration_batches=10,
        ema_decay=0.99,
        # From v1's weights (0.749 on the expert validation slices): a first run from scratch
        # (40 epochs at lr 2e-3) was at 0.67 validation Dice and 0.8 % false infection on the
        # negative validation chest after 24 epochs, below v1/v3 on both, and was stopped.
        init_from={"version": "v1"},
    )


# The COVID-19 JPG slices carry no HU. Their lung window was estimated by matching the
# grey-level modes of each image (lung parenchyma: dark mode, soft tissue: bright mode)
# with typical HU: -870 for aerated lung (the expert lung masks of IRCAD patients 1 and 7
# have medians of -858 and -887 HU) and +40 for unenhanced soft tissue. Across the 50
# images the dark mode has median 44 (IQR 34-52) and the bright mode 214 (IQR 205-225),
# giving a lower limit with median -1104 HU (IQR -1164..-1048) and an upper limit with
# median +265 HU (IQR 213..310). See scripts/measure_infection_window.py.
INFECTION_WINDOW = (-1100.0, 250.0)
INFECTION_WINDOW_NOTE = (
    "window [-1100, 250] HU (W1350/L-425) estimated from the 8-bit COVID-SemiSeg JPGs: "
    "per-image dark (lung, ~-870 HU) and bright (soft tissue, ~+40 HU) grey-level modes give "
    "a lower limit of median -1104 HU (IQR -1164..-1048) and an upper limit of median +265 HU "
    "(IQR 213..310); the images vary (auto-windowed exports), hence wide intensity augmentation. "
    "8-bit slices in this window are read as v/255."
)


def _card_part(path, key: str, what: str) -> dict[str, Any]:
    """The object of a JSON file: a model card's ``training[key]``, or the file's own object
    (a bare config or split). ``TrainingError`` for a file that cannot be read or holds neither."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path}: cannot read a {what} ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("training"), dict):
        data = data["training"].get(key)
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: neither a model card with training.{key} nor a {what} object")
    return data


def config_from_file(path) -> TrainingConfig:
    """A run's whole settings from a JSON file: a model card (its ``training.config``, so an
    older version's recipe runs again) or a bare config. Fields it leaves out take the
    ``TrainingConfig`` defaults, not the target's default recipe. ``TrainingError`` for a file
    that cannot be read or names an unknown setting."""
    data = _card_part(path, "config", "training config")
    unknown = sorted(set(data) - {f.name for f in fields(TrainingConfig)})
    if unknown:
        raise TrainingError(f"{path}: unknown training setting(s): {', '.join(unknown)}")
    missing = [name for name in ("architecture", "preprocessing") if not isinstance(data.get(name), dict)]
    if missing:
        raise TrainingError(f"{path}: a training config needs {' and '.join(missing)}")
    return TrainingConfig(**data)


def split_from_file(path) -> dict[str, Any]:
    """A run's split from a JSON file: a model card (its ``training.split``, so an older
    version's cases are used again) or a bare split ({"train": [...], "validation": [...],
    ...} as in ``splits.json``). ``TrainingError`` for a file without one."""
    data = _card_part(path, "split", "split")
    if not isinstance(data.get("train"), list) or not isinstance(data.get("validation"), list):
        raise TrainingError(f"{path}: a split needs train and validation lists")
    return data


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise TrainingError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
