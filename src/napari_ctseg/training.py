"""Train a target's model from CT with expert masks: a generator of progress reports (Qt-free).

This module holds what training data is and how it is seen: the settings
(``TrainingConfig``, ``default_config``), the splits, reading cases and masks
(``load_case``, ``read_mask``), the cached and sampled slices (``build_cache``,
``sample_batch``), augmentation and validation (``validate``). ``train(...)`` is the
from-scratch strategy on the one training engine (``napari_ctseg.engine``, shared with
fine-tuning): it reads the data, builds a fresh network and hands the engine a plan that
samples augmented batches, validates (after re-estimating BatchNorm statistics when asked,
through the locate stage's crops for a second stage) and keeps the checkpoint with the
best validation score. The engine yields a ``TrainingReport`` after every step and epoch
and writes ``model.pt`` and ``card.json`` to a hidden ``.partial`` folder renamed to
``out_dir`` at the end (``"done"`` report with the card). Closing the generator early
(Cancel) writes the best checkpoint so far, marked as stopped, when one exists;
``out_dir`` never replaces an existing model unless ``overwrite=True``.

Data layout (``data_dir``), as in the project's shared data folder:

* organs: ``<case>/ct.nii.gz`` (HU) with ``<case>/lungs.nii.gz`` or ``<case>/liver.nii.gz``
  on the same grid; a case is named by its folder;
* infection: ``<folder>/images/<id>.jpg`` (8-bit, lung window) with
  ``<folder>/masks/<id>.png`` (0/255); a case is named ``<folder>/<id>``.

The default splits are in ``napari_ctseg/models/splits.json``.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .engine import (  # noqa: F401 - dice_ce_loss, warmup_cosine, optimisation_step: public here too
    Evaluation,
    Outcome,
    TrainingPlan,
    TrainingReport,
    dice_ce_loss,
    merged_settings,
    optimisation_step,
    recalibrate_batchnorm,
    run,
    seeded,
    warmup_cosine,
)
from .errors import ModelError, TrainingError
from .metrics import compare, dice
from .models.predict import predict_image8, predict_volume
from .models.preprocess import (
    Preprocessing,
    SliceCrop,
    context_indices,
    find_crop,
    mask_crop,
    image8_to_input,
    labels_to_target,
    window_and_resize,
)
from .models.registry import (
    LICENSE_NOTE,
    TARGETS,
    WEIGHTS_FILE,
    ModelCard,
    half_state_dict,
    write_version,
)
from .models.unet import build_model, count_parameters
from .silver import SILVER_LUNGS_METHOD, silver_lung_labels, silver_lungs_and_airways  # noqa: F401
from .synthetic import DEFAULT_SYNTHETIC
from .models.definition import starter_definition

SPLITS_FILE = Path(__file__).resolve().parent / "models" / "splits.json"

TARGET_LABELS: dict[str, dict[str, int]] = {
    "lungs": {"right_lung": 1, "left_lung": 2},
    "liver": {"liver": 1},
    "infection": {"infection": 1},
}
MASK_FILES = {"lungs": "lungs.nii.gz", "liver": "liver.nii.gz"}

# What each data folder is, for the card: where it comes from, its license, what to cite.
DATASETS: dict[str, dict[str, str]] = {
    "liver_ircad": {
        "source": "3D-IRCADb-01 (IRCAD, Strasbourg)",
        "license": "CC BY-NC-ND 4.0 (non-commercial research use)",
        "cite": "3D-IRCADb-01 database, IRCAD, Strasbourg, France "
                "(https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/)",
    },
    "liver_chaos": {
        "source": "CHAOS challenge, CT set 3 (Dokuz Eylul University, Izmir)",
        "license": "no license stated by the source; CHAOS is published under CC BY-NC-SA 4.0 "
                   "(non-commercial research use)",
        "cite": "Kavur A.E. et al., CHAOS Challenge - combined (CT-MR) healthy abdominal organ "
                "segmentation, Medical Image Analysis 69:101950, 2021",
    },
    "liver_dcmqi": {
        "source": "QIICR/dcmqi test data (RSNA 2016 interoperability example)",
        "license": "BSD-3-Clause",
        "cite": "QIICR dcmqi (https://github.com/QIICR/dcmqi), test data",
    },
    "chest_itk00": {
        "source": "ITKElastix example data (InsightSoftwareConsortium/ITKElastix), a full chest CT",
        "license": "Apache-2.0 repository; the data's origin is not stated (research use)",
        "cite": "ITKElastix example data, InsightSoftwareConsortium/ITKElastix",
    },
    "chest_lungdx": {
        "source": "Lung-PET-CT-Dx, patient A0001 (The Cancer Imaging Archive)",
        "license": "CC BY 4.0",
        "cite": "Li P. et al., A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis "
                "(Lung-PET-CT-Dx), The Cancer Imaging Archive 2020, doi:10.7937/TCIA.2020.NNC2-0461",
    },
    "chest_ctmd": {
        "source": "COVID-CT-MD sample data (ShahinSHH/COVID-CT-MD)",
        "license": "reportedly CC BY 4.0, not verified (research use)",
        "cite": "Afshar P. et al., COVID-CT-MD, COVID-19 computed tomography scan dataset applicable in "
                "machine learning and deep learning, Scientific Data 8:121, 2021",
    },
    "covid_semiseg": {
        "source": "COVID-SemiSeg training split, from the MedSeg / SIRM COVID-19 CT segmentation dataset",
        "license": "non-commercial use only",
        "cite": "Fan D.-P. et al., Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT "
                "Images, IEEE Transactions on Medical Imaging 39(8):2626-2637, 2020; MedSeg, COVID-19 "
                "CT segmentation dataset (http://medicalsegmentation.com/covid19/)",
    },
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
    "infection": "Trained on 40 axial 8-bit JPG slices of COVID-19 patients (COVID-SemiSeg) that carry no "
                 "HU; validated on the 10 held-out slices of the same set (not the published test set). "
                 "On HU scans the input is the lung window estimated from those JPGs (see "
                 "preprocessing.notes). A 2D model, slice by slice; it also marks infection-like "
                 "opacities outside the lungs unless the result is restricted to a lung mask.",
}


def _dataset_of(case: str) -> dict[str, str] | None:
    folder = case.split("/")[0]
    for prefix, info in DATASETS.items():
        if folder.startswith(prefix):
            return info
    return None


# ---------------------------------------------------------------------------------------
# Settings


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
    # napari_ctseg.synthetic.DEFAULT_SYNTHETIC); empty = none. "hard_negative_model" names a
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
    # (napari_ctseg.synthetic.DEFAULT_ORGAN_LESIONS); empty = none.
    organ_lesions: dict[str, Any] = field(default_factory=dict)
    # The organ's HU and inner contrast changed at random, its mask unchanged
    # (napari_ctseg.synthetic.DEFAULT_ORGAN_CONTRAST): other contrast phases; empty = none.
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
    # Infection v2 (v1: one slice, the 40 JPG slices only, 60 epochs of batch 8): the slice and
    # its neighbours in HU (a partial-volume diaphragm dome is obvious across slices), the JPG
    # slices (context = the slice itself) plus healthy chest and abdominal CTs as negatives and
    # hosts for synthetic lesions, hard negatives from v1's false positives.
    return TrainingConfig(
        architecture={**unet, "in_channels": 3, "n_classes": 2},
        preprocessing={"input": "hu", "window": list(INFECTION_WINDOW), "context": 1, "crop": "body",
                       "body_threshold_hu": -500.0, "crop_margin": 0.04, "pad_hu": -1024.0,
                       "size": [160, 160], "notes": INFECTION_WINDOW_NOTE},
        batch_size=10,
        steps_per_epoch=25,
        epochs=60,
        # The training JPGs come in mixed orientations and auto-windowed contrasts, and
        # infection has no side: turns and flips are fine, and intensity jitter is wide.
        augmentation={"rotate_deg": 20.0, "scale": [0.8, 1.25], "translate": 0.08, "affine_p": 0.85,
                      "dihedral": True, "brightness": 0.08, "contrast": 0.2, "gamma": [0.75, 1.35],
                      "noise": 0.03},
        synthetic={**DEFAULT_SYNTHETIC, "hard_negative_model": "v1"},
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


# ---------------------------------------------------------------------------------------
# Splits and data


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
class Case:
    """One training or validation case: a HU volume (z, y, x) or an 8-bit windowed slice, with labels."""

    name: str
    labels: np.ndarray
    hu: np.ndarray | None = None
    image8: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    lungs: np.ndarray | None = None  # lung mask on the volume's grid (infection hosts and negatives)
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
    from .inference import ModelSet, segment
    from .io import read_scan

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
    return Case(name=f"{spec['case']}[{first}-{last}]", labels=labels, hu=np.asarray(vol.hu),
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
    from .io.nifti import read_nifti

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
    """An expert or corrected mask (NIfTI) on the CT's display grid, uint8: the one mask reader
    of training, fine-tuning and evaluation (same shape *and* affine as the scan, only the
    ``labels`` values, default the target's training labels; ``TrainingError`` otherwise)."""
    from .evaluation import EvaluationError, read_reference_volume

    try:
        labels = read_reference_volume(Path(path), ct.geometry, target,
                                       labels if labels is not None else TARGET_LABELS[target])
    except EvaluationError as exc:
        raise TrainingError(str(exc)) from None
    return np.ascontiguousarray(ct.geometry.to_display(labels)).astype(np.uint8)


def _read_case_scan(folder: Path, name: str):
    """A case's CT: ``ct.nii.gz``, or else the DICOM series in ``dicom/`` (read by our reader)."""
    from .io import read_scan
    from .io.nifti import read_nifti

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


@dataclass
class SliceCache:
    """Preprocessed training slices at the network's size (kept in memory)."""

    images: list[torch.Tensor]  # per case: (Z, H, W) organs (one entry per slice) or (1, H, W)
    targets: list[torch.Tensor]  # per case: (Z, H, W) int64
    index: np.ndarray  # (N, 2): case, slice
    weights: np.ndarray  # (N,) sampling probabilities


_CHUNK = 8


@dataclass
class _Hosts:
    """Host volumes for synthetic lesions, at the network's size."""

    images: list[torch.Tensor]  # per case (Z, H, W)
    lungs: list[np.ndarray]  # per case (Z, H, W) bool
    index: np.ndarray  # (N, 2): case, slice
    weights: np.ndarray  # (N,) sampling probabilities
    hard: int = 0  # slices weighted up as hard negatives


def _build_hosts(cases: list[Case], prep: Preprocessing, reference=None,
                 hard_weight: float = 1.0) -> _Hosts:
    """Windowed host slices and their lungs; slices where ``reference`` (a model of the same
    target, input channels and grid) marks infection inside the lung get ``hard_weight``."""
    images, lungs, index, weights = [], [], [], []
    hard = 0
    for ci, case in enumerate(cases):
        crop = find_crop(case.hu, prep)
        chunks = range(0, case.hu.shape[0], _CHUNK)
        img = torch.cat([window_and_resize(case.hu[z:z + _CHUNK], prep, crop) for z in chunks])
        lung = torch.cat([labels_to_target(case.lungs[z:z + _CHUNK].astype(np.uint8), crop, prep, 2)
                          for z in chunks]).numpy() > 0
        images.append(img)
        lungs.append(lung)
        fp = np.zeros(img.shape[0], bool)
        if reference is not None and hard_weight > 1:
            model, ref_channels = reference
            with torch.inference_mode():
                for z0 in range(0, img.shape[0], 16):
                    z = np.arange(z0, min(z0 + 16, img.shape[0]))
                    ctx = (ref_channels - 1) // 2
                    x = img[torch.as_tensor(context_indices(z, img.shape[0], ctx))]
                    pred = model(x).argmax(dim=1).numpy() > 0
                    fp[z] = (pred & lung[z]).reshape(len(z), -1).sum(axis=1) >= 10
        hard += int(fp.sum())
        for z in range(img.shape[0]):
            index.append((ci, z))
            weights.append(hard_weight if fp[z] else 1.0)
    w = np.asarray(weights, dtype=float)
    return _Hosts(images, lungs, np.asarray(index, dtype=np.int64), w / w.sum(), hard)


def _sample_hosts(hosts: _Hosts, prep: Preprocessing, n: int, rng: np.random.Generator,
                  settings) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from .synthetic import add_lesions

    xs, ys = [], []
    for k in rng.choice(len(hosts.index), size=n, p=hosts.weights):
        ci, z = hosts.index[k]
        idx = context_indices([z], hosts.images[ci].shape[0], prep.context)[0]
        x = hosts.images[ci][torch.as_tensor(idx)].numpy()
        y = np.zeros(x.shape[1:], bool)
        if rng.random() < settings.p_lesion:
            x, y = add_lesions(x, hosts.lungs[ci][idx], prep.window, rng, settings)
        xs.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        ys.append(torch.from_numpy(y.astype(np.int64)))
    return xs, ys


def build_cache(cases: list[Case], prep: Preprocessing, n_classes: int, fg_weight: float) -> SliceCache:
    images, targets, index, weights = [], [], [], []
    for ci, case in enumerate(cases):
        z_box = None
        if case.hu is not None:
            crop, z_box = case_crop(case, prep)
            # In chunks of slices: a whole-volume array operation would hold the GIL for a
            # long time and freeze the GUI when this runs in a napari worker.
            chunks = range(0, case.hu.shape[0], _CHUNK)
            images.append(torch.cat([window_and_resize(case.hu[z:z + _CHUNK], prep, crop) for z in chunks]))
            targets.append(torch.cat([labels_to_target(case.labels[z:z + _CHUNK], crop, prep, n_classes)
                                      for z in chunks]))
        else:
            x, crop = image8_to_input(case.image8, prep)
            images.append(x[0, :1])
            targets.append(labels_to_target(case.labels, crop, prep, n_classes))
        has_fg = targets[-1].flatten(1).amax(dim=1).numpy() > 0
        for z in range(targets[-1].shape[0]):
            if case.slices is not None and not case.slices[z]:
                continue  # not labelled (outside a pseudo-labelled block): context only
            if z_box is not None and not (len(z_box) and z_box[0] <= z <= z_box[-1]):
                continue  # a second stage never sees slices away from the organ
            index.append((ci, z))
            weights.append(fg_weight if has_fg[z] else 1.0)
    w = np.asarray(weights, dtype=float)
    return SliceCache(images, targets, np.asarray(index, dtype=np.int64), w / w.sum())


def _chance(rng: np.random.Generator, p) -> bool:
    """True with probability ``p`` (no draw when ``p`` is 0, so runs without it sample as before)."""
    return float(p) > 0 and rng.random() < float(p)


def sample_batch(cache: SliceCache, prep: Preprocessing, batch_size: int,
                  rng: np.random.Generator, hosts: _Hosts | None = None,
                  synthetic=None, organ_lesions: dict[str, Any] | None = None,
                  organ_contrast: dict[str, Any] | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (x, y): from the labelled cases and, with ``hosts``, a share
    (``synthetic.host_fraction``) of host slices, some with synthetic lesions; with
    ``organ_contrast``, some organ stacks get a new organ contrast, and with
    ``organ_lesions`` tumour-like lesions (labels unchanged)."""
    n_hosts = 0
    if hosts is not None and len(hosts.index):
        n_hosts = int(rng.binomial(batch_size, synthetic.host_fraction))
    picks = rng.choice(len(cache.index), size=batch_size - n_hosts, p=cache.weights) if cache.index.size else []
    xs, ys = [], []
    if n_hosts:
        xs, ys = _sample_hosts(hosts, prep, n_hosts, rng, synthetic)
    for k in picks:
        ci, z = cache.index[k]
        stack = cache.images[ci]
        if stack.shape[0] == 1:  # a single slice: its context is itself
            xs.append(stack[[0] * prep.channels])
        else:
            idx = torch.as_tensor(context_indices([z], stack.shape[0], prep.context)[0])
            x = stack[idx]
            contrast = _chance(rng, (organ_contrast or {}).get("p", 0.0))
            lesions = _chance(rng, (organ_lesions or {}).get("p_lesion", 0.0))
            if contrast or lesions:
                from .synthetic import add_organ_lesions, shift_organ_contrast

                organ = (cache.targets[ci][idx] > 0).numpy()
                if contrast and organ.any():
                    x = torch.from_numpy(shift_organ_contrast(x.numpy(), organ, prep.window, rng, organ_contrast))
                if lesions and organ[prep.context].any():
                    x = torch.from_numpy(add_organ_lesions(x.numpy(), organ, prep.window, rng, organ_lesions))
            xs.append(x)
        ys.append(cache.targets[ci][z])
    return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------------------------------
# Augmentation


def augment(x: torch.Tensor, y: torch.Tensor, aug: dict[str, Any], pad_value: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometric and intensity changes of a batch: x (B, C, H, W) in [0, 1], y (B, H, W)."""
    b = x.shape[0]

    def uniform(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    if aug.get("dihedral"):
        xs, ys = [], []
        turns = torch.randint(0, 4, (b,), generator=gen)
        flips = torch.rand(b, generator=gen) < 0.5
        for i in range(b):
            xi, yi = torch.rot90(x[i], int(turns[i]), (1, 2)), torch.rot90(y[i], int(turns[i]), (0, 1))
            if flips[i]:
                xi, yi = xi.flip(-1), yi.flip(-1)
            xs.append(xi)
            ys.append(yi)
        x, y = torch.stack(xs), torch.stack(ys)

    rot = math.radians(float(aug.get("rotate_deg", 0.0)))
    smin, smax = aug.get("scale", [1.0, 1.0])
    shift = float(aug.get("translate", 0.0))
    if rot > 0 or smin != 1.0 or smax != 1.0 or shift > 0:
        angle = uniform(-rot, rot)
        scale = torch.exp(uniform(math.log(smin), math.log(smax)))
        tx, ty = uniform(-shift, shift), uniform(-shift, shift)
        keep = torch.rand(b, generator=gen) >= float(aug.get("affine_p", 1.0))
        angle[keep], scale[keep], tx[keep], ty[keep] = 0.0, 1.0, 0.0, 0.0
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x - pad_value, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) + pad_value
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0].round().long()

    shape = (b, 1, 1, 1)
    c = float(aug.get("contrast", 0.0))
    if c > 0:
        x = (x - 0.5) * (1.0 + uniform(-c, c)).view(shape) + 0.5
    br = float(aug.get("brightness", 0.0))
    if br > 0:
        x = x + uniform(-br, br).view(shape)
    x = x.clamp(0.0, 1.0)
    gmin, gmax = aug.get("gamma", [1.0, 1.0])
    if gmin != 1.0 or gmax != 1.0:
        x = x.clamp_min(1e-6) ** torch.exp(uniform(math.log(gmin), math.log(gmax))).view(shape)
    sigma = float(aug.get("noise", 0.0))
    if sigma > 0:
        x = x + torch.randn(x.shape, generator=gen) * uniform(0.0, sigma).view(shape)
        x = x.clamp(0.0, 1.0)
    return x.contiguous(), y.contiguous()


# ---------------------------------------------------------------------------------------
# Validation


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


# ---------------------------------------------------------------------------------------
# Training from scratch: a strategy on the engine (napari_ctseg.engine)


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

    def batch():
        x, y = augment(*data.sample(cfg.batch_size, rng), cfg.augmentation, prep.pad_value, gen)
        return x.to(dev), y.to(dev)

    def evaluate(model, epoch: int) -> Evaluation | None:
        if epoch % cfg.val_every and epoch != cfg.epochs:
            return None
        if cfg.bn_recalibration_batches:
            recalibrate_batchnorm(model, (batch()[0] for _ in range(cfg.bn_recalibration_batches)), dev)
        val = validate(model, data.val_cases, prep, labels, dev)
        return Evaluation(val["selection"], {"val_dice": val["mean_dice"]}, val["cases"],
                          f"validation Dice {val['mean_dice']:.4f}")

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
class _SplitNames:
    """The cases of a training run by role (see ``splits.json``)."""

    train: list[str]
    validation: list[str]
    silver: list[str]
    hosts: list[str]
    pseudo: list[dict[str, Any]]
    negative: list[str]

    @property
    def all(self) -> list[str]:
        return (self.train + self.silver + self.hosts + [s["case"] for s in self.pseudo]
                + self.validation + self.negative)

    def to_card(self) -> dict[str, Any]:
        return {"train": self.train, "validation": self.validation,
                **({"train_silver": self.silver} if self.silver else {}),
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
                        list(split.get("train_pseudo", [])), list(split.get("validation_negative", [])))
    if not names.train or not names.validation:
        raise TrainingError(f"the {target} split needs training and validation cases")
    overlap = sorted(set(names.train + names.silver + names.hosts) & set(names.validation + names.negative))
    if overlap:
        raise TrainingError(f"cases both in training and validation: {overlap}")
    return names


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

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_batch(self.cache, self.prep, n, rng, self.hosts, self.lesion_settings,
                            self.organ_lesions, self.organ_contrast)


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
    val_cases = [load_case(target, data_dir, n) for n in names.validation]
    val_cases += [load_host_case(data_dir, n) for n in names.negative]
    if cfg.stages:
        yield start(f"locating the {target} in the validation cases with {target} "
                    f"{cfg.stages[0].get('version')}")
        _locate_cases(target, cfg.stages, val_cases, prep)
    n_classes = int(cfg.architecture.get("n_classes", len(TARGET_LABELS[target]) + 1))
    data = _TrainingData(names, prep, train_cases, val_cases, pseudo_names,
                         build_cache(train_cases, prep, n_classes, cfg.foreground_weight),
                         organ_lesions=cfg.organ_lesions, organ_contrast=cfg.organ_contrast)
    if names.hosts:
        from .synthetic import LesionSettings

        data.lesion_settings = LesionSettings.from_dict(cfg.synthetic)
        host_cases = [load_host_case(data_dir, n) for n in names.hosts]
        data.hosts = _build_hosts(host_cases, prep, _reference_model(target, cfg.synthetic, prep),
                                  data.lesion_settings.hard_negative_weight)
    return data


def _training_card(target: str, version: str, cfg: TrainingConfig, prep: Preprocessing,
                   labels: dict[str, int], data: _TrainingData, outcome: Outcome, notes: str | None) -> ModelCard:
    """The card of a trained version (its ``validation`` is filled by the caller)."""
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
                              **{n: PSEUDO_METHOD for n in data.pseudo_names}},
            **({"hard_negative_slices": data.hosts.hard} if data.hosts is not None else {}),
            **({"extra_classes": extra, "extra_classes_note": "training-only classes learnt from the "
                "silver labels (airway: the trachea and main bronchi found by the classical method); "
                "the output counts them as background"} if extra else {}),
            "epochs": cfg.epochs, "epochs_run": outcome.epochs_run, "stopped_early": outcome.stopped,
            "best_epoch": outcome.best_epoch,
            "selection": ("best mean of (mean validation Dice) and (negative score = 1 - min(1, "
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
    from .models.definition import apply_postprocess
    from .models.registry import load_model

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
    from .models.registry import load_model

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


def _data_record(names: list[str]) -> list[dict[str, str]]:
    out = []
    for n in names:
        info = _dataset_of(n) or {}
        out.append({"case": n, **{k: v for k, v in info.items() if k != "cite"}})
    return out


def _citations(names: list[str]) -> list[str]:
    cites: list[str] = []
    for n in names:
        info = _dataset_of(n)
        if info and info["cite"] not in cites:
            cites.append(info["cite"])
    return cites


def run_to_end(reports) -> ModelCard | None:
    """Drive a ``train`` generator to its end without threads; return the card it wrote."""
    card = None
    for report in reports:
        if report.card is not None:
            card = report.card
    return card


__all__ = [
    "TARGET_LABELS", "TrainingConfig", "TrainingReport", "Case", "default_config", "train", "validate",
    "augment", "dice_ce_loss", "load_splits", "make_infection_split", "load_case", "run_to_end",
    "INFECTION_WINDOW", "SliceCache", "build_cache", "sample_batch", "case_crop", "check_target",
    "torch_device", "read_mask", "optimisation_step", "warmup_cosine", "recalibrate_batchnorm",
]
