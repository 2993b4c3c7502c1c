"""The training slices, preprocessed once and kept in memory (``build_cache``), the host
volumes for synthetic lesions, and the batches drawn from them (``sample_batch``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_ctseg.models.preprocess import (
    Preprocessing,
    context_indices,
    find_crop,
    image8_to_input,
    labels_to_target,
    window_and_resize,
)
from napari_ctseg.training.cases import Case, case_crop


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
    spacing_z: list[float] | None = None  # per case, mm between slices (thick-slice negatives)


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
    return _Hosts(images, lungs, np.asarray(index, dtype=np.int64), w / w.sum(), hard,
                  [float(c.spacing[0]) if c.spacing else 1.0 for c in cases])


def _sample_hosts(hosts: _Hosts, prep: Preprocessing, n: int, rng: np.random.Generator,
                  settings, negatives=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Host samples: with ``negatives`` (``HardNegativeSettings``) some first look as normal
    lungs do on other scanners (label unchanged); then some get synthetic lesions."""
    from napari_ctseg.training.labels.synthetic import add_lesions

    xs, ys = [], []
    for k in rng.choice(len(hosts.index), size=n, p=hosts.weights):
        ci, z = hosts.index[k]
        idx = context_indices([z], hosts.images[ci].shape[0], prep.context)[0]
        changes = negatives.choose(rng) if negatives is not None else []
        if "thick" in changes:
            from napari_ctseg.training.labels.negatives import thick_slab

            spacing = hosts.spacing_z[ci] if hosts.spacing_z else 1.0
            x = thick_slab(hosts.images[ci], z, idx, spacing, rng.uniform(*negatives.thick_mm))
        else:
            x = hosts.images[ci][torch.as_tensor(idx)].numpy()
        if changes:
            from napari_ctseg.training.labels.negatives import add_hard_negatives

            x = add_hard_negatives(x, hosts.lungs[ci][idx], prep.window, rng, changes, negatives)
        y = np.zeros(x.shape[1:], bool)
        if rng.random() < settings.p_lesion:
            x, y = add_lesions(x, hosts.lungs[ci][idx], prep.window, rng, settings)
        xs.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        ys.append(torch.from_numpy(y.astype(np.int64)))
    return xs, ys


def build_cache(cases: list[Case], prep: Preprocessing, n_classes: int, fg_weight: float,
                group_shares: dict[str, float] | None = None) -> SliceCache:
    """The cases' slices at the network's size and their sampling weights (slices with
    foreground ``fg_weight``); ``group_shares`` ({case group: share}) gives each group of
    cases that share of the draws, whatever its size (groups not named: share 0 unless
    none is named). A case's ``ignore`` pixels become ``IGNORE_LABEL`` in its targets."""
    from napari_ctseg.training.engine import IGNORE_LABEL

    images, targets, index, weights, groups = [], [], [], [], []
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
            t = labels_to_target(case.labels, crop, prep, n_classes)
            if case.ignore is not None and case.ignore.any():
                t[labels_to_target(case.ignore.astype(np.uint8), crop, prep, 2) > 0] = IGNORE_LABEL
            targets.append(t)
        tt = targets[-1].flatten(1)
        has_fg = ((tt > 0) & (tt != IGNORE_LABEL)).any(dim=1).numpy()
        for z in range(targets[-1].shape[0]):
            if case.slices is not None and not case.slices[z]:
                continue  # not labelled (outside a pseudo-labelled block): context only
            if z_box is not None and not (len(z_box) and z_box[0] <= z <= z_box[-1]):
                continue  # a second stage never sees slices away from the organ
            index.append((ci, z))
            weights.append(fg_weight if has_fg[z] else 1.0)
            groups.append(case.group)
    w = np.asarray(weights, dtype=float)
    if group_shares:
        g = np.asarray(groups)
        for name in set(groups):
            sel = g == name
            share = float(group_shares.get(name, 0.0))
            w[sel] = share * w[sel] / w[sel].sum()
        if w.sum() <= 0:
            raise ValueError(f"group_shares {group_shares} give no weight to the groups {sorted(set(groups))}")
    return SliceCache(images, targets, np.asarray(index, dtype=np.int64), w / w.sum())


def _chance(rng: np.random.Generator, p) -> bool:
    """True with probability ``p`` (no draw when ``p`` is 0, so runs without it sample as before)."""
    return float(p) > 0 and rng.random() < float(p)


def sample_batch(cache: SliceCache, prep: Preprocessing, batch_size: int,
                  rng: np.random.Generator, hosts: _Hosts | None = None,
                  synthetic=None, organ_lesions: dict[str, Any] | None = None,
                  organ_contrast: dict[str, Any] | None = None, negatives=None,
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
        xs, ys = _sample_hosts(hosts, prep, n_hosts, rng, synthetic, negatives)
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
                from napari_ctseg.training.labels.synthetic import add_organ_lesions, shift_organ_contrast

                organ = (cache.targets[ci][idx] > 0).numpy()
                if contrast and organ.any():
                    x = torch.from_numpy(shift_organ_contrast(x.numpy(), organ, prep.window, rng, organ_contrast))
                if lesions and organ[prep.context].any():
                    x = torch.from_numpy(add_organ_lesions(x.numpy(), organ, prep.window, rng, organ_lesions))
            xs.append(x)
        ys.append(cache.targets[ci][z])
    return torch.stack(xs), torch.stack(ys)
