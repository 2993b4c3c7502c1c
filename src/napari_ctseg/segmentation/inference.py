"""Segment volume: lungs, liver and COVID-19 infection masks for a CT in HU (Qt-free).

``segment_steps`` is a generator: it yields a ``Progress`` after every batch of slices and
returns a ``SegmentResult`` (so a napari ``thread_worker`` can wrap it, and stopping the
iteration cancels the job). ``segment`` runs it inline, for the CLI and tests.
``segment_in_child`` runs it in a child process (``jobs.in_child_process``), the volume and the
masks in shared memory: what Segment volume does, so that the network's work never shares the
viewer's GIL and a crash in torch cannot take napari down.

Masks are uint8 on the volume's own display grid (z, y, x). Post-processing follows the
anatomy: one connected component per lung (1 = right, 2 = left) and for the liver, holes
filled; infection is searched only in the slices that hold lung and kept only inside it.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from napari_ctseg.segmentation.caveats import Caveat, infection_caveats
from napari_ctseg.errors import CTSegError
from napari_ctseg.jobs import Cancelled, Progress  # the one event type and cancel of long jobs
from napari_ctseg.models.predict import predict_image8, predict_slices
from napari_ctseg.models.preprocess import Preprocessing, find_crop, mask_crop
# the post-processing primitives, importable from here as before the move
from napari_ctseg.segmentation.postprocess import (  # noqa: F401
    fill_holes_axial,
    largest_components,
    partial_volume_band,
)
from napari_ctseg.models.definition import HU_OPS, apply_postprocess, label_display_name, locate_stage
from napari_ctseg.models.registry import ModelCard, ModelRegistry, as_registry
from napari_ctseg.io.volume import CTVolume

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SegmentResult:
    masks: dict[str, np.ndarray]
    volumes_ml: dict[str, dict[str, float]]
    lung_involvement_pct: float | None
    device: str
    versions: dict[str, str]
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)
    cards: dict[str, ModelCard] = field(default_factory=dict, repr=False)  # the card behind each mask
    # Infection per lung: {"right lung": {"ml": .., "pct": .. of that lung}, ...}, and the
    # axial slices (display z, 0 = the head end) that hold infection: (first, last, count).
    infection_by_lung: dict[str, dict[str, float]] | None = None
    infection_slices: tuple[int, int, int] | None = None
    # An 8-bit slice (segment_image8): pixels per target and % of the image; no volumes.
    pixels: dict[str, tuple[int, float]] | None = None
    # Reasons to doubt the infection figure (raised lung density, gravity-dependent infection:
    # ``napari_ctseg.segmentation.caveats``), measured for a HU volume with a lung mask; the figures stay the mask's.
    caveats: list[Caveat] = field(default_factory=list)


    def write_seg(self, target: str, volume, path):
        """Write ``target``'s mask as a DICOM SEG on ``volume``'s series: the card's label names,
        the model and its version as the algorithm (``io.dicom_objects.write_seg``)."""
        from napari_ctseg.io.dicom_objects import write_seg

        card = self.cards.get(target)
        labels = {int(v): k for k, v in card.labels.items()} if card is not None else {1: target}
        algorithm = f"napari-ctseg {target} {self.versions.get(target, '')}".strip()
        return write_seg(self.masks[target], labels, volume, path, algorithm=algorithm)

    def write_rtstruct(self, volume, path):
        """Write every target's mask as the ROIs of one RT Structure Set on ``volume``'s series
        (ROIs may overlap there: infection inside the lungs): the cards' label names, each model
        and its version as the ROI's algorithm (``io.dicom_objects.write_rois``)."""
        from napari_ctseg.io.dicom_objects import label_rois, write_rois

        rois = []
        for target, mask in self.masks.items():
            card = self.cards.get(target)
            labels = {int(v): k for k, v in card.labels.items()} if card is not None else {1: target}
            algorithm = f"napari-ctseg {target} {self.versions.get(target, '')}".strip()
            rois += label_rois(mask, labels, algorithm=algorithm, what=str(path))
        return write_rois(rois, volume, path)
    def report(self) -> str:
        """Volumes and lung involvement as plain text, one line per figure."""
        lines = []
        for target, per_label in self.volumes_ml.items():
            if len(per_label) > 1:
                total = sum(per_label.values())
                parts = ", ".join(f"{name} {v:.1f} mL" for name, v in per_label.items())
                lines.append(f"{target}: {total:.1f} mL ({parts})")
            else:
                lines.append(f"{target}: {sum(per_label.values()):.1f} mL")
        if self.lung_involvement_pct is not None:
            lines.append(f"lung involved by infection: {self.lung_involvement_pct:.1f} %")
        lines.extend(f"  caution: {c.message}" for c in self.caveats)
        for lung, fig in (self.infection_by_lung or {}).items():
            pct = "n/a" if fig["pct"] is None else f"{fig['pct']:.1f} %"
            lines.append(f"  {lung}: {fig['ml']:.1f} mL infected ({pct} of that lung)")
        for target, (n, pct) in (self.pixels or {}).items():
            lines.append(f"{target}: {n} pixels ({pct:.1f} % of the image; a 2D slice has no volume)")
        if self.infection_slices is not None:
            first, last, count = self.infection_slices
            lines.append(f"infection on {count} axial slices, z {first}-{last}" if count else
                         "infection on no slice")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "volumes_ml": self.volumes_ml,
            "lung_involvement_pct": self.lung_involvement_pct,
            "device": self.device,
            "versions": self.versions,
            "seconds": self.seconds,
            "notes": self.notes,
            "infection_by_lung": self.infection_by_lung,
            "pixels": self.pixels,
            "infection_slices": None if self.infection_slices is None else
            dict(zip(("first", "last", "count"), self.infection_slices)),
            "caveats": [c.to_dict() for c in self.caveats],
        }


def choose_device(request: str = "auto") -> tuple[torch.device, str | None]:
    """The torch device for 'auto', 'cpu' or 'cuda', and a note when CUDA was asked for but is absent."""
    request = (request or "auto").lower()
    if request not in DEVICES:
        raise CTSegError(f"unknown device {request!r}: choose one of {', '.join(DEVICES)}")
    if request == "cpu":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    if request == "cuda":
        return torch.device("cpu"), "CUDA is not available on this machine: ran on the CPU"
    return torch.device("cpu"), None


class ModelSet:
    """Loaded models by (target, version, device), so several scans load each model once.

    ``versions`` names a version per target (default: the registry's active one);
    ``registry`` is where they are found (default: ``ModelRegistry.default()``).
    """

    def __init__(self, versions: dict[str, str] | None = None, registry: ModelRegistry | None = None):
        self.versions = dict(versions or {})
        self.registry = as_registry(registry)
        self._cache: dict[tuple, tuple[torch.nn.Module, ModelCard]] = {}
        self._lock = threading.Lock()

    def get(self, target: str, device: torch.device, version: str | None = None
            ) -> tuple[torch.nn.Module, ModelCard]:
        """The model and card of ``version`` (default: this set's choice for ``target``)."""
        # Keyed by the version resolved now and its checksum: the active version changes when
        # a fine-tuned one is promoted, and a removed version's name may come back.
        card = self.registry.get_card(target, version or self.versions.get(target))
        key = (target, card.version, card.sha256, str(device))
        with self._lock:
            if key not in self._cache:
                model, card = self.registry.load_model(target, card.version, device="cpu")
                model = fuse_for_inference(model)
                model = model.to(device=device, memory_format=torch.channels_last)
                if device.type == "cuda":
                    model = model.half()
                self._cache[key] = (model, card)
            return self._cache[key]


def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each BatchNorm into the convolution before it (eval mode only; same outputs).

    With channels-last this is about 1.4x faster on the CPU (benchmarks/speed.py). A model
    that torch.fx cannot trace is used as it is.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        fused = fuse(model)
    except Exception:  # noqa: BLE001 - tracing is an optimisation, never a requirement
        return model
    fused.ctseg_logit_bias = getattr(model, "ctseg_logit_bias", None)  # the card's operating point
    return fused


def parse_targets(targets: str | Iterable[str], registry: ModelRegistry | None = None) -> list[str]:
    """``"lungs,liver"`` or a list as a list of targets that ``registry`` has models for."""
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = list(dict.fromkeys(targets))
    known = as_registry(registry).targets()
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise CTSegError(f"unknown target(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(known)}")
    return targets


def default_batch_size(device: torch.device) -> int:
    return 32 if device.type == "cuda" else 8


def segment_steps(volume: CTVolume, targets: str | Iterable[str], device: str = "auto", *,
                  models: ModelSet | None = None, versions: dict[str, str] | None = None,
                  lungs: np.ndarray | None = None, batch_size: int | None = None,
                  threads: int | None = None,
                  ) -> Generator[Progress, None, SegmentResult]:
    """Segment ``volume`` for ``targets``; yields ``Progress``, returns ``SegmentResult`` (see
    ``_segment_steps``). On the CPU it uses ``threads`` torch threads (default: every core)
    while it runs and then gives torch's thread count back as it was (a process-wide setting);
    several workers on one machine each pass their share of the cores."""
    before = torch.get_num_threads()
    try:
        return (yield from _segment_steps(volume, targets, device, models=models, versions=versions,
                                          lungs=lungs, batch_size=batch_size, threads=threads))
    finally:
        torch.set_num_threads(before)


def _segment_steps(volume: CTVolume, targets: str | Iterable[str], device: str = "auto", *,
                   models: ModelSet | None = None, versions: dict[str, str] | None = None,
                   lungs: np.ndarray | None = None, batch_size: int | None = None,
                   threads: int | None = None,
                   ) -> Generator[Progress, None, SegmentResult]:
    """Segment ``volume`` for ``targets``; yields ``Progress``, returns ``SegmentResult``.

    ``lungs`` (a lung mask on the volume's grid, e.g. from an edited layer) is used where
    a card requires the lungs (infection); without it the lungs are segmented first. What
    each target needs, and how its output is finished, comes from its model card
    (``napari_ctseg.models.definition``).
    """
    models = models or ModelSet(versions)
    targets = parse_targets(targets, models.registry)
    dev, note = choose_device(device)
    notes = [note] if note else []
    if dev.type == "cpu":
        torch.set_num_threads(max(1, threads or os.cpu_count() or 1))
    hu = volume.hu
    n = hu.shape[0]
    given = {"lungs": lungs} if lungs is not None else {}
    runs = _run_order(targets, models, given)
    total = n * len(runs)  # a target restricted to another's slices needs fewer; the bar then jumps ahead
    done = 0
    masks: dict[str, np.ndarray] = {}
    cards: dict[str, ModelCard] = {}
    seconds: dict[str, float] = {}
    used_versions: dict[str, str] = {}
    state = {"dev": dev, "models": models}

    def run_network(target, version, z_list, crop, prep, offset, span, out, at):
        """``version``'s labels of the slices ``z_list`` into ``out[at]`` (yields Progress)."""
        model, _ = state["models"].get(target, state["dev"], version)
        bs = batch_size or default_batch_size(state["dev"])
        i = 0
        while i < len(z_list):
            z = z_list[i:i + bs]
            try:
                out[at[i:i + len(z)]] = predict_slices(model, hu, z, prep, crop, state["dev"], len(z))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if bs > 1:
                    bs = max(1, bs // 2)
                    continue
                state["dev"] = torch.device("cpu")
                notes.append("the GPU ran out of memory: finished on the CPU")
                state["models"] = ModelSet(state["models"].versions, state["models"].registry)
                model, _ = state["models"].get(target, state["dev"], version)
                continue
            i += len(z)
            yield Progress(offset + int(i * span / max(len(z_list), 1)), total,
                           f"{target}: slice {i}/{len(z_list)}", target)

    for target in runs:
        t0 = time.perf_counter()
        _, card = state["models"].get(target, state["dev"])
        used_versions[target] = card.version
        cards[target] = card
        prep = Preprocessing.from_dict(card.preprocessing)
        context = {t: (given[t] if t in given else masks[t]) for t in card.requires}
        # A target kept only inside another is only searched in the slices that hold it.
        within = [context[s["target"]] for s in card.postprocess if s.get("op") == "restrict_to"]
        if within:
            z_list = np.flatnonzero(np.logical_and.reduce(
                [np.asarray(m).reshape(n, -1).any(axis=1) for m in within]))
        else:
            z_list = np.arange(n)
        raw = np.zeros(hu.shape, dtype=np.uint8)
        stage = locate_stage(card)
        if stage is not None and len(z_list):
            # Coarse-to-fine: the locate version, one slice every ``every_mm``, finds the organ;
            # this version's network then sees the organ's square on the organ's slices.
            _, loc_card = state["models"].get(target, state["dev"], stage["version"])
            loc_prep = Preprocessing.from_dict(loc_card.preprocessing)
            step = max(1, int(round(float(stage["every_mm"]) / float(volume.spacing[0]))))
            loc_z = z_list[::step]
            if loc_z[-1] != z_list[-1]:
                loc_z = np.append(loc_z, z_list[-1])
            coarse = np.zeros((len(loc_z),) + hu.shape[1:], dtype=np.uint8)
            yield from run_network(target, loc_card.version, loc_z, find_crop(hu, loc_prep), loc_prep,
                                   done, n // 3, coarse, np.arange(len(loc_z)))
            coarse = apply_postprocess(loc_card, coarse, {t: m[loc_z] for t, m in context.items()},
                                       (volume.spacing[0] * step,) + tuple(volume.spacing[1:]), hu=hu[loc_z])
            found = mask_crop(coarse, volume.spacing, prep, z_positions=loc_z, n_slices=n)
            del coarse
            if found is None:
                notes.append(f"{target}: not found in this scan")
                z_list = z_list[:0]
            else:
                crop, z_box = found
                z_list = np.intersect1d(z_list, z_box)
            offset, span = done + n // 3, n - n // 3
        elif len(z_list):
            crop = find_crop(hu, prep)
            offset, span = done, n
        if len(z_list):
            yield from run_network(target, card.version, z_list, crop, prep, offset, span, raw, z_list)
        done += n
        yield Progress(done, total, f"{target}: post-processing", target)
        masks[target] = apply_postprocess(card, raw, context, volume.spacing, hu=hu)
        del raw  # before the next target allocates its own
        seconds[target] = time.perf_counter() - t0
    dev = state["dev"]
    volumes = {t: volumes_ml(masks[t], cards[t], volume.voxel_volume_ml) for t in targets}
    result = SegmentResult(masks={t: masks[t] for t in targets}, volumes_ml=volumes,
                           lung_involvement_pct=None, device=str(dev), versions=used_versions,
                           seconds=seconds, notes=notes, cards={t: cards[t] for t in targets})
    if "infection" in targets:
        lung_mask = given.get("lungs", masks.get("lungs"))
        lung_card = cards.get("lungs")
        if lung_mask is not None:
            result.lung_involvement_pct = lung_involvement_pct(masks["infection"], lung_mask)
            result.infection_by_lung = infection_per_lung(masks["infection"], lung_mask, lung_card,
                                                          volume.voxel_volume_ml)
            result.caveats = infection_caveats(hu, lung_mask, masks["infection"], volume.spacing)
        result.infection_slices = slices_with(masks["infection"])
    return result


def image8_assumption(card: ModelCard) -> str:
    """What an 8-bit slice is taken to be for ``card``: one line for the user."""
    lo, hi = (float(v) for v in Preprocessing.from_dict(card.preprocessing).window)
    return (f"8-bit image read as a CT slice in the window {lo:g}..{hi:g} HU (value v = {lo:g} + "
            f"v/255 x {hi - lo:g} HU, the window of {card.target} {card.version}'s training images), "
            "already cropped to the body; no lung mask on a lone slice, so opacities outside the "
            "lungs may be marked too")


def check_image8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A 2D 8-bit grey (or RGB(A) export of a grey) image as (y, x) uint8; ``CTSegError`` otherwise."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float32).mean(axis=-1)
    if img.ndim != 2:
        raise CTSegError(f"'{name}' is not a 2D image (shape {np.asarray(image).shape})")
    if img.size and (float(img.min()) < 0 or float(img.max()) > 255):
        raise CTSegError(f"'{name}' holds values {float(img.min()):g}..{float(img.max()):g}, not an 8-bit "
                         "export (0..255); open the CT scan itself (NIfTI or DICOM) to use HU")
    return np.rint(img).astype(np.uint8)


def segment_image8(image: np.ndarray, targets: str | Iterable[str], device: str = "auto", *,
                   models: ModelSet | None = None, versions: dict[str, str] | None = None,
                   name: str = "image") -> SegmentResult:
    """Segment one 8-bit slice (a JPG/PNG export in a model's window) with the targets whose
    card accepts ``"image8"`` input; the others are skipped with a note saying why.

    Masks are (y, x) uint8 on the image's grid; a card's ``restrict_to`` steps are not applied
    (a lone slice has no lung mask), which the notes say. ``CTSegError`` when no target can run.
    """
    models = models or ModelSet(versions)
    targets = parse_targets(targets, models.registry)
    img = check_image8(image, name)
    dev, note = choose_device(device)
    notes = [note] if note else []
    masks, cards, seconds, used = {}, {}, {}, {}
    skipped = []
    for target in targets:
        card = models.registry.get_card(target, models.versions.get(target))
        if "image8" not in card.inputs:
            skipped.append(target)
            continue
        t0 = time.perf_counter()
        model, card = models.get(target, dev)
        raw = predict_image8(model, img, card.preprocessing, device=dev)
        steps = [st for st in card.postprocess if st.get("op") not in ("restrict_to", *HU_OPS)]
        masks[target] = apply_postprocess(replace(card, postprocess=steps), raw[None], {}, None)[0]
        cards[target], used[target] = card, card.version
        seconds[target] = time.perf_counter() - t0
        notes.append(image8_assumption(card))
    if skipped:
        why = (f"{' and '.join(skipped)} need{'s' if len(skipped) == 1 else ''} a CT in Hounsfield units "
               f"(a 3D scan); '{name}' is an 8-bit 2D image, whose grey values are not HU")
        if not masks:
            raise CTSegError(why)
        notes.append(f"not run: {why}")
    pixels = {t: int(np.count_nonzero(m)) for t, m in masks.items()}
    return SegmentResult(masks=masks, volumes_ml={}, lung_involvement_pct=None, device=str(dev),
                         versions=used, seconds=seconds, notes=notes, cards=cards,
                         pixels={t: (k, 100.0 * k / max(img.size, 1)) for t, k in pixels.items()})


def _run_order(targets: list[str], models: ModelSet, given: dict[str, np.ndarray]) -> list[str]:
    """The targets to run, each after the ones its card requires (unless given as masks)."""
    order: list[str] = []

    def visit(t: str, path: tuple[str, ...]) -> None:
        if t in order or t in given:
            return
        if t in path:
            raise CTSegError(f"model cards require each other in a circle: {' -> '.join(path + (t,))}")
        for req in models.registry.get_card(t, models.versions.get(t)).requires:
            visit(req, path + (t,))
        order.append(t)

    for t in targets:
        visit(t, ())
    return order


def segment(volume: CTVolume, targets: str | Iterable[str], device: str = "auto", *,
            progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None, **kwargs) -> SegmentResult:
    """Run ``segment_steps`` to the end with the one job driver (``jobs.run``): ``progress`` gets
    each ``Progress``; setting ``cancel`` (a ``threading.Event`` or ``jobs.CancelToken``) stops
    it with ``Cancelled``."""
    from napari_ctseg.jobs import run

    return run(segment_steps(volume, targets, device, **kwargs), on_event=progress, cancel=cancel)


CHILD_JOB = "napari_ctseg.segmentation.inference:_child_segment"
_CHILD_MODELS: dict[tuple, ModelSet] = {}  # in the child: the loaded models, per registry


def segment_in_child(volume: CTVolume, targets: str | Iterable[str], device: str = "auto", *,
                     versions: dict[str, str] | None = None, registry: ModelRegistry | None = None,
                     lungs: np.ndarray | None = None, cancel: threading.Event | None = None,
                     process=None,
                     ) -> Generator[Progress, None, tuple[SegmentResult, dict[str, list[int]]]]:
    """``segment_steps`` in a fresh child process: yields its ``Progress`` here, returns the
    ``SegmentResult`` and each 3D mask's slice fingerprints (``editing.corrections.slice_digests``,
    the baseline of 'changed slices', computed there too).

    The volume (and ``lungs``) go over in shared memory, the masks come back the same way, each
    copied a slice at a time (``jobs.SharedArray``). ``cancel`` (or closing the generator) stops
    the child (``Cancelled``); a child that dies raises ``JobError`` here and leaves this process
    unharmed. ``process``: a warm ``jobs.WorkerProcess`` to run it in (it keeps torch and the
    loaded weights between runs); without one (or while it is busy) a process of its own
    (``jobs.in_child_process``), which costs its start: importing torch, about 3 s on a 2-core
    CPU. The device is chosen here (``choose_device``), so its note is this process's view.
    """
    from napari_ctseg.jobs import SharedArray, SharedMemoryFull, in_child_process

    registry = as_registry(registry)
    targets = parse_targets(targets, registry)
    dev, note = choose_device(device)
    shared = []
    try:
        shared.append(SharedArray.copy_of(volume.hu))
        if lungs is not None:
            shared.append(SharedArray.copy_of(lungs))
    except SharedMemoryFull as exc:  # a small /dev/shm (a container's): here, as before
        for s in shared:
            s.free()
        result = yield from segment_steps(volume, targets, str(dev), models=ModelSet(versions, registry),
                                          lungs=lungs)
        result.notes.insert(0, f"segmented in this process, not a worker process ({exc})")
        if note:
            result.notes.insert(0, note)
        return result, _digests(result)
    args = (CHILD_JOB, shared[0], volume.geometry, volume.name, targets, str(dev))
    kwargs = dict(versions=dict(versions or {}), registry=registry, lungs=shared[1] if lungs is not None else None,
                  cancel=cancel)
    try:
        if process is not None and not process.busy:
            result, digests = yield from process.job(*args, **kwargs)
        else:
            result, digests = yield from in_child_process(*args, **kwargs)
    finally:
        for s in shared:
            s.free()
    if note:
        result.notes.insert(0, note)
    masks = {}
    try:
        for target, mask in result.masks.items():
            masks[target] = mask.take() if isinstance(mask, SharedArray) else mask
    finally:
        for mask in result.masks.values():
            if isinstance(mask, SharedArray):
                mask.free()
    return replace(result, masks=masks), digests


def _digests(result: SegmentResult) -> dict[str, list[int]]:
    """Each 3D mask's slice fingerprints: the baseline of 'changed slices'."""
    from napari_ctseg.editing.corrections import slice_digests

    return {t: slice_digests(m) for t, m in result.masks.items() if m.ndim == 3}


def _child_segment(hu, geometry, name, targets, device, *, versions, registry, lungs=None):
    """``segment_in_child``'s job, in the child: the shared arrays mapped, the masks sent back shared."""
    from napari_ctseg.jobs import SharedArray

    volume = CTVolume(hu=hu.array, geometry=geometry, name=name)
    given = lungs.array if lungs is not None else None
    key = (registry.roots, registry.user_dir)
    models = _CHILD_MODELS.get(key)
    if models is None:  # loaded once per registry in a warm worker; a version's checksum keys its cache
        models = _CHILD_MODELS[key] = ModelSet(registry=registry)
    models.versions = dict(versions)
    try:
        result = yield from segment_steps(volume, targets, device, models=models, lungs=given)
    finally:
        del volume, given
        hu.close()
        if lungs is not None:
            lungs.close()
    digests = _digests(result)
    shared = {}
    for target, mask in result.masks.items():
        out = SharedArray.copy_of(mask)
        out.close()  # the memory stays until the parent takes it
        shared[target] = out
    return replace(result, masks=shared), digests


# --- post-processing (the primitives: segmentation.postprocess) -------------------------

def postprocess(card: ModelCard, labels: np.ndarray, context: dict[str, np.ndarray] | None = None,
                spacing=None, hu: np.ndarray | None = None) -> np.ndarray:
    """The card's post-processing of raw network labels (z, y, x) -> uint8 mask."""
    return apply_postprocess(card, labels, context, spacing, hu=hu)


def volumes_ml(mask: np.ndarray, card: ModelCard, voxel_ml: float) -> dict[str, float]:
    """Volume in mL of each label of a card's mask, by the label's display name."""
    # count_nonzero per label: bincount would first copy the mask as 8-byte integers
    return {label_display_name(name): float(np.count_nonzero(mask == v)) * voxel_ml
            for name, v in card.labels.items()}


def infection_per_lung(infection: np.ndarray, lungs: np.ndarray, lung_card: ModelCard | None,
                       voxel_ml: float) -> dict[str, dict[str, float]] | None:
    """Infected mL and % of each lung, by the lung labels (the card's names, else 1 = right,
    2 = left as the lungs models write them); None when the lungs mask has a single label."""
    lungs = np.asarray(lungs)
    names = ({int(v): label_display_name(k) for k, v in lung_card.labels.items()} if lung_card is not None
             else {1: "right lung", 2: "left lung"})
    present = [v for v in names if np.any(lungs == v)]
    if len(present) < 2:
        return None
    inf = np.asarray(infection) > 0
    out = {}
    for v in sorted(names):
        lung = lungs == v
        n = int(np.count_nonzero(lung))
        k = int(np.count_nonzero(inf & lung))
        out[names[v]] = {"ml": k * voxel_ml, "pct": (100.0 * k / n) if n else None}
    return out


def slices_with(mask: np.ndarray) -> tuple[int, int, int]:
    """(first, last, count) of the axial slices (display z) that hold the mask; (0, 0, 0) if none."""
    z = np.flatnonzero(np.asarray(mask).reshape(mask.shape[0], -1).any(axis=1))
    return (int(z[0]), int(z[-1]), int(z.size)) if z.size else (0, 0, 0)


def lung_involvement_pct(infection: np.ndarray, lungs: np.ndarray) -> float | None:
    """Percentage of the lung volume involved by infection (None without lung)."""
    lung = np.asarray(lungs) > 0
    n = int(lung.sum())
    if n == 0:
        return None
    return 100.0 * float(np.count_nonzero((np.asarray(infection) > 0) & lung)) / n
