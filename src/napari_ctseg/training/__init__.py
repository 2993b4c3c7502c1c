"""Train a target's model from CT with expert masks: a generator of progress reports (Qt-free).

This package holds what training data is and how it is seen, one part a file:

* ``config.py``: the settings (``TrainingConfig``, ``default_config``), read from a card or
  a JSON file (``config_from_file``, ``split_from_file``), the targets' labels and notes;
* ``datasets.py`` (with ``datasets.json``): where each data folder comes from, its license
  and what to cite, for the card;
* ``splits.py``: the splits (``load_splits``, ``make_infection_split``), a run's checked;
* ``cases.py``: reading cases and masks (``load_case``, ``read_mask``, host and
  pseudo-labelled cases);
* ``sampling.py``: the cached and sampled slices (``build_cache``, ``sample_batch``) and
  the host volumes for synthetic lesions;
* ``augment.py``: augmentation (``augment``);
* ``validation.py``: validation (``validate``);
* ``recipe.py``: ``train(...)``, the from-scratch strategy.

``train(...)`` is the from-scratch strategy on the one training engine
(``napari_ctseg.training.engine``, shared with fine-tuning): it reads the data, builds a fresh network
and hands the engine a plan that samples augmented batches, validates (after re-estimating
BatchNorm statistics when asked, through the locate stage's crops for a second stage) and
keeps the checkpoint with the best validation score. The engine yields a ``TrainingReport``
after every step and epoch and writes ``model.pt`` and ``card.json`` to a hidden
``.partial`` folder renamed to ``out_dir`` at the end (``"done"`` report with the card).
Closing the generator early (Cancel) writes the best checkpoint so far, marked as stopped,
when one exists; ``out_dir`` never replaces an existing model unless ``overwrite=True``.

Data layout (``data_dir``), as in the project's shared data folder:

* organs: ``<case>/ct.nii.gz`` (HU) with ``<case>/lungs.nii.gz`` or ``<case>/liver.nii.gz``
  on the same grid; a case is named by its folder;
* infection: ``<folder>/images/<id>.jpg`` (8-bit, lung window) with
  ``<folder>/masks/<id>.png`` (0/255); a case is named ``<folder>/<id>``.

The default splits are in ``napari_ctseg/models/splits.json``.

Every name is importable from ``napari_ctseg.training`` as before the split; a test that
patches one must patch it in the submodule that looks it up.
"""
from __future__ import annotations

from napari_ctseg.training.engine import (  # noqa: F401 - public here too
    TrainingReport,
    dice_ce_loss,
    optimisation_step,
    recalibrate_batchnorm,
    warmup_cosine,
)
from napari_ctseg.training.labels.silver import SILVER_LUNGS_METHOD, silver_lung_labels, silver_lungs_and_airways  # noqa: F401
from napari_ctseg.training.augment import augment
from napari_ctseg.training.cases import (  # noqa: F401
    MASK_FILES,
    PSEUDO_METHOD,
    Case,
    _load_infection_case,
    _read_case_scan,
    case_crop,
    instance_numbers_by_z,
    load_case,
    load_host_case,
    load_pseudo_case,
    read_mask,
)
from napari_ctseg.training.config import (  # noqa: F401
    _ORGAN_AUG,
    INFECTION_WINDOW,
    INFECTION_WINDOW_NOTE,
    TARGET_LABELS,
    TARGET_NOTES,
    TrainingConfig,
    _card_part,
    check_target,
    config_from_file,
    default_config,
    split_from_file,
)
from napari_ctseg.training.datasets import DATASETS, _citations, _data_record, _dataset_of  # noqa: F401
from napari_ctseg.training.recipe import (  # noqa: F401
    _checked_config,
    _final_validation,
    _locate_cases,
    _read_training_data,
    _reference_model,
    _training_card,
    _TrainingData,
    _written,
    run_to_end,
    torch_device,
    train,
)
from napari_ctseg.training.sampling import (  # noqa: F401
    _CHUNK,
    SliceCache,
    _build_hosts,
    _chance,
    _Hosts,
    _sample_hosts,
    build_cache,
    sample_batch,
)
from napari_ctseg.training.splits import (  # noqa: F401
    SPLITS_FILE,
    _checked_split,
    _natural,
    _SplitNames,
    load_splits,
    make_infection_split,
)
from napari_ctseg.training.validation import NEGATIVE_TOLERANCE_PCT, _predict_case, case_dice, validate  # noqa: F401

__all__ = [
    "TARGET_LABELS", "TrainingConfig", "TrainingReport", "Case", "default_config", "train", "validate",
    "augment", "dice_ce_loss", "load_splits", "make_infection_split", "load_case", "run_to_end",
    "INFECTION_WINDOW", "SliceCache", "build_cache", "sample_batch", "case_crop", "check_target",
    "torch_device", "read_mask", "optimisation_step", "warmup_cosine", "recalibrate_batchnorm",
]
