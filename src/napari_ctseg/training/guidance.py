"""Training a guidance-aware (click-to-correct) version, the DeepEdit way.

The network sees the CT slices, the current mask and the include/exclude clicks as guidance
maps (``napari_ctseg.models.guidance``) and learns to give the true label. What it is
trained on:

1. **Current masks** (a pool per training case, on the network's grid, in 3D): the
   ``reference`` version's own prediction (the errors a user really meets), the expert mask
   with made errors (shrunk or grown by 1-3 network pixels, a cap of 10-30 mm cut off the top
   or bottom, a ball of 12-35 mm cut out at the edge or one of neighbouring tissue added),
   and no mask at all (a user's first click on an empty layer; with no click, plain
   segmentation, which Segment volume uses).
2. **Clicks simulated on their errors** as the robot user makes them: the deepest point
   (3D distance, in mm) of each of the largest error regions (include on a miss, exclude
   on an excess), the first 0..``max_clicks`` of them; the slice drawn is near one of the
   clicks (so the maps reach it faded by the distance in z) or anywhere on the organ.
3. **Plain samples** (``p_plain`` of each batch): drawn as the plain recipe draws them
   (synthetic lesions and hard negatives included), with zero maps: Segment volume's case.
4. **Iterated on its own errors** (``iterate``): with probability ``p_iterate`` the network,
   as it is at that step, predicts the batch without gradients; a click goes on the deepest
   point of each sample's largest error on that slice, the mask channel becomes that
   prediction, once or twice, and the network is trained on the result. So it learns to
   follow a second and third click given the mask its first edit left.

Geometry is augmented on the image and the maps together; intensity on the image only.
Qt-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_ctseg.models.guidance import GuidanceSpec, gaussian_maps
from napari_ctseg.models.preprocess import Preprocessing, context_indices

DEFAULT_GUIDANCE: dict[str, Any] = {
    "sigma_mm": 10.0, "reach_mm": 30.0, "pool_per_case": 16, "pool_per_slice": 3, "max_clicks": 5, "p_empty": 0.1,
    "p_near_click": 0.75, "p_reference": 0.25, "p_plain": 0.25, "p_iterate": 0.5, "max_iterations": 2, "reference_version": None,
}


@dataclass
class _Prior:
    mask: np.ndarray  # (Z, H, W) bool on the network's grid
    clicks: list[tuple[int, int, int, bool]]  # (z, y, x, include), network grid, largest error first
    kind: str


@dataclass
class GuidancePool:
    """Per training case and label (a unit): the stacks, the label, the grid's mm and the
    current masks of that label. A target of several labels (the lungs: right, left) has a
    unit per label of each case, sharing the case's stacks; a unit's clicks and mask channel
    are that label's, its target the case's whole label map."""

    spec: GuidanceSpec
    settings: dict[str, Any]
    labels: list[int] = field(default_factory=list)  # per unit: the label its mask and clicks are of
    images: list[torch.Tensor] = field(default_factory=list)  # (Z, H, W)
    truths: list[np.ndarray] = field(default_factory=list)  # (Z, H, W) bool
    targets: list[torch.Tensor] = field(default_factory=list)  # (Z, H, W) int64
    mm: list[tuple[float, float]] = field(default_factory=list)  # (z spacing, pixel size)
    priors: list[list[_Prior]] = field(default_factory=list)
    organ_z: list[np.ndarray] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    weights: np.ndarray | None = None  # per case: the share of the draws (group_shares)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entries in self.priors:
            for p in entries:
                out[p.kind] = out.get(p.kind, 0) + 1
        return out


def settings_of(guidance: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULT_GUIDANCE, **(guidance or {})}


# --- clicks on a 3D error ------------------------------------------------------------------------
def error_clicks(truth: np.ndarray, mask: np.ndarray, mm: tuple[float, float], n: int) -> list:
    """The robot's clicks on the ``n`` largest error regions (6-connected) of ``mask``
    against ``truth`` (both (Z, H, W) bool), each at its deepest point (3D, in mm)."""
    regions = []
    for include, err in ((True, truth & ~mask), (False, mask & ~truth)):
        if not err.any():
            continue
        pieces, k = ndimage.label(err)
        sizes = np.bincount(pieces.ravel(), minlength=k + 1)
        for i, sl in enumerate(ndimage.find_objects(pieces), 1):
            if sl is not None and sizes[i] >= 4:
                regions.append((int(sizes[i]), include, sl, pieces[sl] == i))
    regions.sort(key=lambda r: -r[0])
    sampling = (mm[0], mm[1], mm[1])
    out = []
    for _, include, sl, region in regions[:n]:
        depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
        local = np.unravel_index(int(np.argmax(depth)), depth.shape)
        out.append((*(int(s.start + v) for s, v in zip(sl, local)), include))
    return out


def _ball(shape, centre, radius_mm, mm) -> np.ndarray:
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (((zz - centre[0]) * mm[0]) ** 2 + ((yy - centre[1]) * mm[1]) ** 2
            + ((xx - centre[2]) * mm[1]) ** 2) <= radius_mm ** 2


def made_error(truth: np.ndarray, mm: tuple[float, float], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The expert mask with errors a model makes: shrunk or grown, a cap cut, a ball cut out or added."""
    m = truth.copy()
    kinds = []
    if rng.random() < 0.5:
        r = int(rng.integers(1, 4))
        st = ndimage.generate_binary_structure(3, 1)
        st[0] = st[2] = False  # in-plane only: z steps are several mm
        m = ndimage.binary_erosion(m, st, r) if rng.random() < 0.5 else ndimage.binary_dilation(m, st, r)
        kinds.append("shrunk/grown")
    pieces, n_pieces = ndimage.label(truth)
    if n_pieces > 1 and rng.random() < 0.4:  # a whole lesion (or piece) missed
        m &= pieces != int(rng.integers(1, n_pieces + 1))
        kinds.append("piece missed")
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    if zs.size and truth.shape[0] > 1 and rng.random() < 0.4:
        cut = max(int(round(rng.uniform(10.0, 30.0) / mm[0])), 1)
        if rng.random() < 0.6:
            m[zs[0]:zs[0] + cut] = False  # the top of the volume (z = 0 is the head end for our scans)
        else:
            m[zs[-1] - cut + 1:zs[-1] + 1] = False
        kinds.append("cap")
    edge = truth & ~ndimage.binary_erosion(truth)
    pts = np.argwhere(edge)
    for _ in range(int(rng.integers(0, 3))):
        if not len(pts):
            break
        c = pts[int(rng.integers(len(pts)))]
        ball = _ball(m.shape, c, rng.uniform(12.0, 35.0), mm)
        if rng.random() < 0.5:
            m &= ~ball
            kinds.append("ball cut")
        else:
            m |= ball & ~truth & ndimage.binary_dilation(truth, iterations=6)
            kinds.append("ball added")
    return m, "+".join(kinds) or "expert"


# --- the pool ----------------------------------------------------------------------------------
def build_pool(cache, cases, prep: Preprocessing, labels, guidance: dict[str, Any],
               rng: np.random.Generator, reference=None, group_shares: dict[str, float] | None = None
               ) -> GuidancePool:
    """The current masks and clicks per training case (``cache``'s order) and label of
    ``labels`` (an int or several: the target's labels, each a unit of its own): HU stacks and
    single 8-bit slices (``pool_per_slice`` masks each; their pixel is taken as 1 mm, as the
    slices carry no size). ``reference``: a plain model of the same target and grid whose
    own predictions are current masks too. ``group_shares``: each case group's share of the
    draws (as the plain recipe samples them), split evenly between its cases' labels."""
    from napari_ctseg.training.cases import case_crop

    st = settings_of(guidance)
    labels = [int(v) for v in np.atleast_1d(labels)]
    pool = GuidancePool(GuidanceSpec.from_dict(st), st)
    for ci, case in enumerate(cases):
        single = cache.images[ci].shape[0] < 2
        if case.hu is not None and not single:
            crop, _ = case_crop(case, prep)
            sz = float(case.spacing[0]) if case.spacing else 1.0
            px = float(crop.side * (case.spacing[1] if case.spacing else 1.0) / prep.size[0])
        else:  # an 8-bit slice: no size; the network's pixel taken as 1 mm x (image / network size)
            side = max(np.shape(case.image8)[:2]) if case.image8 is not None else prep.size[0]
            sz, px = 1.0, float(side) / prep.size[0]
        mm = (sz, px)
        pred_all = None
        if reference is not None:
            pred_all = _predict_stack(reference, cache.images[ci], prep)
        for label in labels:
            truth = (cache.targets[ci] == label).numpy()
            if single and not truth.any():
                continue
            entries = []
            if pred_all is not None:
                pred = pred_all == label
                entries.append(_Prior(pred, error_clicks(truth, pred, mm, st["max_clicks"]), "reference"))
            empty = np.zeros_like(truth)
            entries.append(_Prior(empty, error_clicks(truth, empty, mm, st["max_clicks"]), "empty"))
            while len(entries) < (st["pool_per_slice"] if single else st["pool_per_case"]):
                m, kind = made_error(truth, mm, rng)
                entries.append(_Prior(m, error_clicks(truth, m, mm, st["max_clicks"]), kind))
            pool.labels.append(label)
            pool.groups.append(case.group)
            pool.images.append(cache.images[ci])
            pool.targets.append(cache.targets[ci])
            pool.truths.append(truth)
            pool.mm.append(mm)
            pool.priors.append(entries)
            pool.organ_z.append(np.flatnonzero(truth.any(axis=(1, 2))))
    w = np.ones(len(pool.groups))
    if group_shares:
        g = np.asarray(pool.groups)
        for name in set(pool.groups):
            sel = g == name
            w[sel] = float(group_shares.get(name, 0.0)) / sel.sum()
    pool.weights = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / max(len(w), 1))
    return pool


def _predict_stack(model, stack: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for z0 in range(0, stack.shape[0], 16):
            z = np.arange(z0, min(z0 + 16, stack.shape[0]))
            x = stack[torch.as_tensor(context_indices(z, stack.shape[0], prep.context))]
            out.append(model(x).argmax(dim=1).numpy())
    return np.concatenate(out)


def _maps(clicks, z: int, shape_hw, mm, sigma: float) -> np.ndarray:
    """(2, H, W) include/exclude maps on slice ``z`` of the network grid."""
    if not clicks:
        return np.zeros((2, *shape_hw), np.float32)
    pts = np.array([(c[0] * mm[0], c[1] * mm[1], c[2] * mm[1]) for c in clicks], np.float32)
    inc = np.array([c[3] for c in clicks], bool)
    rows = np.arange(shape_hw[0]) * mm[1]
    cols = np.arange(shape_hw[1]) * mm[1]
    return gaussian_maps(pts, inc, [z * mm[0]], rows, cols, sigma)[0]


def sample_guided(pool: GuidancePool, prep: Preprocessing, n: int, rng: np.random.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A batch (x (n, C + 3, H, W): image, mask, include, exclude; y (n, H, W); per sample,
    the label its mask and clicks are of)."""
    st = pool.settings
    xs, ys, labels = [], [], []
    for _ in range(n):
        ci = int(rng.choice(len(pool.images), p=pool.weights))
        stack, mm = pool.images[ci], pool.mm[ci]
        entries = pool.priors[ci]
        empty = [p for p in entries if p.kind == "empty"]
        ref = [p for p in entries if p.kind == "reference"]
        made = [p for p in entries if p.kind not in ("empty", "reference")]
        u = rng.random()
        if empty and u < st["p_empty"]:
            prior = empty[0]
        elif ref and u < st["p_empty"] + st["p_reference"]:
            prior = ref[0]
        else:
            choices = made or entries
            prior = choices[int(rng.integers(len(choices)))]
        k = int(rng.integers(0, len(prior.clicks) + 1))
        clicks = prior.clicks[:k]
        zmax = stack.shape[0] - 1
        if clicks and rng.random() < st["p_near_click"]:
            c = clicks[int(rng.integers(len(clicks)))]
            z = int(np.clip(round(c[0] + rng.normal(0.0, pool.spec.sigma_mm / mm[0])), 0, zmax))
        else:
            oz = pool.organ_z[ci]
            lo, hi = (int(oz[0]) - 3, int(oz[-1]) + 3) if oz.size else (0, zmax)
            z = int(rng.integers(max(lo, 0), min(hi, zmax) + 1))
        idx = torch.as_tensor(context_indices([z], stack.shape[0], prep.context)[0])
        img = stack[idx]
        maps = _maps(clicks, z, img.shape[1:], mm, pool.spec.sigma_mm)
        g = torch.cat([torch.from_numpy(prior.mask[z].astype(np.float32))[None], torch.from_numpy(maps)])
        xs.append(torch.cat([img, g]))
        ys.append(pool.targets[ci][z])
        labels.append(pool.labels[ci])
    return torch.stack(xs), torch.stack(ys), labels


def augment_guided(x: torch.Tensor, y: torch.Tensor, aug: dict[str, Any], pad_value: float, gen,
                   image_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometry on the image and the maps together, intensity on the image only."""
    from napari_ctseg.training.augment import augment

    geometry = {k: v for k, v in aug.items() if k in ("dihedral", "rotate_deg", "scale", "translate", "affine_p")}
    intensity = {k: v for k, v in aug.items() if k not in geometry}
    shifted = x.clone()
    shifted[:, :image_channels] -= pad_value  # pads as 0, the maps' "nothing"
    moved, y = augment(shifted, y, geometry, 0.0, gen)
    img = (moved[:, :image_channels] + pad_value).clamp(0.0, 1.0)
    img, _ = augment(img, y, intensity, pad_value, gen)
    return torch.cat([img, moved[:, image_channels:].clamp(0.0, 1.0)], dim=1).contiguous(), y


def _deepest_2d(region: np.ndarray) -> tuple[int, int]:
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return np.unravel_index(int(np.argmax(depth)), depth.shape)


def iterate(model, x: torch.Tensor, y: torch.Tensor, pool: GuidancePool, image_channels: int,
            rng: np.random.Generator, ignore_label: int | None = None, labels=None) -> torch.Tensor:
    """DeepEdit's simulation: once or twice, the network's own prediction of the batch (of
    each sample's label, ``labels``; default the pool's first) becomes the mask channel and a
    click goes on each sample's largest error (in plane). ``x`` is modified in place and
    returned. No-op with probability 1 - ``p_iterate``."""
    st = pool.settings
    if rng.random() >= st["p_iterate"]:
        return x
    labels = np.asarray(labels if labels is not None else [pool.labels[0]] * x.shape[0])[:, None, None]
    sigma_px = pool.spec.sigma_mm / float(np.median([m[1] for m in pool.mm]))
    hh, ww = x.shape[-2:]
    yy, xx = np.mgrid[0:hh, 0:ww]
    was_training = model.training
    model.eval()
    try:
        for _ in range(int(rng.integers(1, st["max_iterations"] + 1))):
            with torch.no_grad():
                pred = model(x).argmax(dim=1).cpu().numpy() == labels
            truth = (y.cpu().numpy() == labels)
            valid = np.ones_like(truth) if ignore_label is None else (y.cpu().numpy() != ignore_label)
            for b in range(x.shape[0]):
                x[b, image_channels] = torch.from_numpy(pred[b].astype(np.float32))
                best = None
                for include, err in ((True, truth[b] & ~pred[b] & valid[b]), (False, pred[b] & ~truth[b] & valid[b])):
                    if not err.any():
                        continue
                    pieces, k = ndimage.label(err)
                    sizes = np.bincount(pieces.ravel(), minlength=k + 1)
                    sizes[0] = 0
                    i = int(np.argmax(sizes))
                    if best is None or sizes[i] > best[0]:
                        best = (int(sizes[i]), include, pieces == i)
                if best is None or best[0] < 4:
                    continue
                cy, cx = _deepest_2d(best[2])
                g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_px ** 2)).astype(np.float32)
                ch = image_channels + (1 if best[1] else 2)
                x[b, ch] = torch.maximum(x[b, ch], torch.from_numpy(g).to(x.device))
    finally:
        model.train(was_training)
    return x


def guided_batch(model, pool: GuidancePool, sample_plain, cfg, prep: Preprocessing, rng: np.random.Generator,
                 gen, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of a guidance-aware version: guided samples (augmented, iterated on
    the network's own errors) and a ``p_plain`` share of plain ones (``sample_plain(n, rng)``, as
    the plain recipe draws them) with zero maps."""
    from napari_ctseg.training.augment import augment
    from napari_ctseg.training.engine import IGNORE_LABEL

    n_plain = min(int(rng.binomial(cfg.batch_size, pool.settings["p_plain"])), cfg.batch_size - 1)
    x, y, labels = sample_guided(pool, prep, cfg.batch_size - n_plain, rng)
    x, y = augment_guided(x, y, cfg.augmentation, prep.pad_value, gen, prep.channels)
    x, y = x.to(dev), y.to(dev)
    x = iterate(model, x, y, pool, prep.channels, rng, IGNORE_LABEL, labels)
    if n_plain:
        xp, yp = augment(*sample_plain(n_plain, rng), cfg.augmentation, prep.pad_value, gen)
        xp = torch.cat([xp, xp.new_zeros((n_plain, x.shape[1] - xp.shape[1], *xp.shape[2:]))], dim=1)
        x, y = torch.cat([x, xp.to(dev)]), torch.cat([y, yp.to(dev)])
    return x, y


def click_validation(model, cases, prep: Preprocessing, labels: dict[str, int], spec: GuidanceSpec,
                     n_clicks: int = 3, device="cpu") -> dict[str, Any]:
    """The robot user on each validation volume: from the network's own mask (no clicks),
    ``n_clicks`` clicks refined by the network itself. {"cases": {name: [Dice after 0..n]},
    "mean": mean Dice after the last click}."""
    from napari_ctseg.editing.refine_model import GuidedRefiner
    from napari_ctseg.evaluation.robot import robot_user
    from napari_ctseg.models.predict import predict_image8, predict_volume

    was_training = model.training
    model.eval()
    refiner = GuidedRefiner.from_parts(model, spec, prep, labels, device=device)
    out: dict[str, Any] = {}
    slices = GuidedRefiner.from_parts(model, spec, prep, labels, device=device, whole_image=True)
    try:
        for case in cases:
            if case.negative:
                continue
            if case.hu is None:  # an 8-bit slice: HU from the window, 1 mm pixels, the whole image seen
                hu, reference = image8_as_hu(case.image8, prep), np.asarray(case.labels)[None]
                start = predict_image8(model, case.image8, prep, device=device)[None]
                run = robot_user(hu, start, reference, sorted(labels.values()), (1.0, 1.0, 1.0), n_clicks,
                                 refiner=slices)
            else:
                start = predict_volume(model, case.hu, prep, device=device)
                run = robot_user(case.hu, start, case.labels, sorted(labels.values()), case.spacing, n_clicks,
                                 refiner=refiner)
            out[case.name] = [round(float(d), 4) for d in run.dice]
    finally:
        model.train(was_training)
    mean = float(np.mean([d[-1] for d in out.values()])) if out else float("nan")
    return {"cases": out, "mean": mean, "clicks": n_clicks}


def image8_as_hu(image8: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """(1, y, x) float32 HU of an 8-bit slice already in ``prep``'s window (v = 0..255 stands for
    low + v / 255 x (high - low)); windowing it again gives back v / 255."""
    lo, hi = (float(v) for v in Preprocessing.from_dict(prep).window)
    img = np.asarray(image8, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    return (lo + img / 255.0 * (hi - lo))[None]


def card_note(pool: GuidancePool) -> dict[str, Any]:
    """What a guidance-aware card says about its training clicks."""
    return {"settings": {k: v for k, v in pool.settings.items()},
            "current_masks": pool.counts,
            "note": __doc__.split("\n\n", 1)[1].strip()}
