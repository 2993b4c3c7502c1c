"""What a model version's output means, read from its card alone (Qt-free).

A card's ``labels`` name the values of the output mask; ``requires`` lists the targets
whose masks must exist first (infection needs the lungs); ``postprocess`` is a list of
steps applied in order to the network's raw labels; ``display`` gives each label's colour,
the drawing style (``"fill"`` or ``"contour"``), the opacity and the stacking order. The
engine (``inference``), the CLI and the widgets read these; nothing is kept per target
in code, so a new target or version is a new card.

Post-processing steps (``op``):

* ``largest_component`` (``keep``: N): per label, keep the N largest 3D components;
* ``fill_holes_axial``: per label, fill holes slice by slice;
* ``restrict_to`` (``target``): keep only voxels inside that target's mask (any label);
* ``remove_small`` (``min_mm3``): drop 3D components smaller than this, per label;
* ``drop_partial_volume`` (``within``, ``mm``, ``tissue_hu``): drop voxels of the ``within``
  target's mask that lie within ``mm`` along the slice axis of tissue outside it (HU above
  ``tissue_hu``): where a slice cuts the diaphragm's dome or the apex almost flat, the lung
  looks like ground glass (``segmentation.postprocess.partial_volume_band``); needs the scan's HU;
* ``grow_into_hu`` (``below``, ``steps``, ``above``): grow each label by ``steps`` face-neighbour
  layers into background voxels below ``below`` HU (and at least ``above``, when given): the partial-volume rim that a hand-drawn lung outline
  includes (``segmentation.postprocess.grow_into_hu``); needs the scan's HU.

Stages (coarse-to-fine). ``stages`` lists what runs before the version's own network;
one kind exists, ``{"name": "locate", "version": "v1", "every_mm": 4.0}``: the named version
of the same target (its own network and post-processing) runs on one slice every
``every_mm`` mm, and its mask gives the square and the slices that this version's network
sees (preprocessing ``"crop": "mask"``; ``preprocess.mask_crop``). The version's own
post-processing finishes the result. A version without ``stages`` is one network.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from napari_ctseg.errors import ModelError

STAGE_KEYS = ("name", "version", "every_mm")
OPS = ("largest_component", "fill_holes_axial", "restrict_to", "remove_small", "drop_partial_volume",
       "grow_into_hu")
HU_OPS = ("drop_partial_volume", "grow_into_hu")  # steps that read the scan's HU (skipped on an 8-bit slice)
STYLES = ("fill", "contour")

# Colours used when a card names none: distinct, strong, never one of the cards' own.
FALLBACK_COLORS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0")


def label_display_name(name: str) -> str:
    """'right_lung' -> 'right lung'."""
    return name.replace("_", " ")


def check_postprocess(steps: Sequence[Mapping[str, Any]]) -> None:
    for step in steps:
        op = step.get("op") if isinstance(step, Mapping) else None
        if op not in OPS:
            raise ModelError(f"post-processing step {step!r} is not one of {', '.join(OPS)}; "
                             "this model needs a newer napari-ctseg")


def logit_bias(card):
    """The card's operating point as a bias added to the logits, or None (plain argmax).

    ``decision = {"threshold": t}`` on a network with one foreground class: a voxel is that
    class when its probability is above ``t`` (argmax means 0.5). Softmax gives p1 > t exactly
    when logit1 - logit0 > log(t / (1 - t)), so adding ``log((1 - t) / t)`` to the foreground
    logit and taking the argmax is the same decision, on every path that takes labels.
    """
    import math

    import torch

    decision = dict(card.decision or {})
    if not decision:
        return None
    unknown = sorted(set(decision) - {"threshold", "chosen_on", "rule", "sweep"})
    if unknown:
        raise ModelError(f"{card.target}/{card.version}: decision {', '.join(unknown)} is not understood; "
                         "this model needs a newer napari-ctseg")
    t = decision.get("threshold")
    if not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0:
        raise ModelError(f"{card.target}/{card.version}: decision threshold {t!r} is not a probability "
                         "between 0 and 1")
    if card.n_classes != 2:
        raise ModelError(f"{card.target}/{card.version}: a decision threshold needs a network with one "
                         f"foreground class, not {card.n_classes - 1}")
    return torch.tensor([0.0, math.log((1.0 - float(t)) / float(t))], dtype=torch.float32)


def locate_stage(card) -> dict[str, Any] | None:
    """The card's first stage (``{"name": "locate", "version": ..., "every_mm": ...}``), or None."""
    stages = list(card.stages or [])
    if not stages:
        return None
    if len(stages) > 1 or not isinstance(stages[0], Mapping) or stages[0].get("name") != "locate" \
            or not stages[0].get("version"):
        raise ModelError(f"{card.target}/{card.version}: stages {stages!r} are not understood "
                         "(one 'locate' stage naming a version); this model needs a newer napari-ctseg")
    if stages[0]["version"] == card.version:
        raise ModelError(f"{card.target}/{card.version}: its locate stage names the version itself")
    if card.preprocessing.get("crop") != "mask":
        raise ModelError(f"{card.target}/{card.version}: a version with a locate stage must crop "
                         "around its mask (preprocessing crop 'mask')")
    return {"every_mm": 0.0, **stages[0]}


def colors(card) -> dict[int, str]:
    """Label value -> colour (#rrggbb) for a card."""
    named = (card.display or {}).get("colors", {})
    out, k = {}, 0
    for name, value in card.labels.items():
        if name in named:
            out[int(value)] = str(named[name])
        else:
            out[int(value)] = FALLBACK_COLORS[k % len(FALLBACK_COLORS)]
            k += 1
    return out


def style(card) -> dict[str, Any]:
    """Drawing style: {"style": fill|contour, "opacity": float, "contour": px, "order": int}."""
    d = card.display or {}
    kind = d.get("style", "fill")
    if kind not in STYLES:
        kind = "fill"
    return {"style": kind, "opacity": float(d.get("opacity", 0.5)), "contour": int(d.get("contour_px", 2)),
            "order": int(d.get("order", 0))}


def _largest(mask: np.ndarray, keep: int) -> np.ndarray:
    from napari_ctseg.segmentation.postprocess import largest_components

    return largest_components(mask, keep=keep, in_place=True)  # ``mask`` is post-processing's own


def _context_mask(card, context: Mapping[str, np.ndarray], target: str) -> np.ndarray:
    other = context.get(target)
    if other is None:
        raise ModelError(f"{card.target}/{card.version}: post-processing needs the {target or '(unnamed)'} mask")
    return np.asarray(other) > 0


def apply_postprocess(card, raw: np.ndarray, context: Mapping[str, np.ndarray] | None = None,
                      spacing: Sequence[float] | None = None, *, hu: np.ndarray | None = None) -> np.ndarray:
    """The card's post-processing of raw network labels (z, y, x) -> uint8 mask.

    ``context`` holds the masks of the targets in ``card.requires`` (for ``restrict_to`` and
    ``drop_partial_volume``); ``hu`` the scan's HU on the same grid.
    """
    from napari_ctseg.segmentation.postprocess import SLAB, fill_holes_axial, partial_volume_band

    check_postprocess(card.postprocess)
    context = context or {}
    values = [int(v) for v in card.labels.values()]
    parts = {v: raw == v for v in values}
    for step in card.postprocess:
        op = step["op"]
        if op == "largest_component":
            parts = {v: _largest(m, int(step.get("keep", 1))) for v, m in parts.items()}
        elif op == "fill_holes_axial":
            parts = {v: fill_holes_axial(m, in_place=True) for v, m in parts.items()}
        elif op == "restrict_to":
            inside = _context_mask(card, context, step["target"])
            parts = {v: m & inside for v, m in parts.items()}
        elif op == "drop_partial_volume":
            inside = _context_mask(card, context, step.get("within", ""))
            if hu is None or spacing is None or np.shape(hu) != raw.shape:
                raise ModelError(f"{card.target}/{card.version}: post-processing step drop_partial_volume "
                                 "needs the scan's HU and voxel size on the mask's grid")
            found = partial_volume_band(inside, hu, spacing, float(step.get("mm", 3.0)),
                                        float(step.get("tissue_hu", -300.0)))
            if found is not None:
                box, band = found
                for m in parts.values():
                    m[box] &= ~band
        elif op == "grow_into_hu":
            if hu is None or np.shape(hu) != raw.shape:
                raise ModelError(f"{card.target}/{card.version}: post-processing step grow_into_hu "
                                 "needs the scan's HU on the mask's grid")
            from napari_ctseg.segmentation.postprocess import grow_into_hu

            above = step.get("above")
            parts = grow_into_hu(parts, hu, float(step.get("below", -300.0)), int(step.get("steps", 1)),
                                 None if above is None else float(above))
        elif op == "remove_small":
            from skimage.morphology import remove_small_objects

            vox = float(np.prod(spacing)) if spacing is not None else 1.0
            min_vox = int(np.ceil(float(step.get("min_mm3", 0.0)) / vox))
            parts = {v: remove_small_objects(m, max_size=min_vox - 1) for v, m in parts.items()}
    out = np.zeros(raw.shape, dtype=np.uint8)
    for z in range(0, raw.shape[0], SLAB):  # by slabs: no full-size temporaries
        o = out[z:z + SLAB]
        for v, m in parts.items():
            o[m[z:z + SLAB] & (o == 0)] = v
    return out


# The starting definition of each known target: what ``ctseg train`` writes into a new
# card (``training.default_config``), and what a card written before cards carried a
# definition (format 1: the v1 models' fine-tuned versions) is read with. Only cards are
# read at inference.
STARTER_DEFINITIONS = {
    "lungs": {"display": {"colors": {"right_lung": "#4f9ae0", "left_lung": "#1f4e9c", "right lung": "#4f9ae0",
                                     "left lung": "#1f4e9c"},
                          "style": "contour", "opacity": 0.8, "contour_px": 2, "order": 0},
              "postprocess": [{"op": "largest_component", "keep": 1}, {"op": "fill_holes_axial"}],
              "requires": []},
    "liver": {"display": {"colors": {"liver": "#c8782a"}, "style": "fill", "opacity": 0.45, "order": 1},
              "postprocess": [{"op": "largest_component", "keep": 1}, {"op": "fill_holes_axial"}],
              "requires": []},
    "infection": {"display": {"colors": {"infection": "#ff1fd2"}, "style": "fill", "opacity": 0.75, "order": 2},
                  "postprocess": [{"op": "restrict_to", "target": "lungs"},
                                  {"op": "drop_partial_volume", "within": "lungs", "mm": 3.0, "tissue_hu": -300.0}],
                  "requires": ["lungs"], "inputs": ["hu", "image8"]},
}


def starter_definition(target: str, labels: Mapping[str, int]) -> dict[str, Any]:
    """display/postprocess/requires for a new model of ``target`` (empty for an unknown target)."""
    d = STARTER_DEFINITIONS.get(target)
    if d is None:
        return {"display": {}, "postprocess": [], "requires": [], "inputs": ["hu"]}
    return {"display": {**d["display"], "colors": {k: v for k, v in d["display"]["colors"].items() if k in labels}},
            "postprocess": [dict(s) for s in d["postprocess"]], "requires": list(d["requires"]),
            "inputs": list(d.get("inputs", ["hu"]))}


def upgrade_legacy_card(card) -> None:
    """Give a card written before cards carried a definition its target's starter definition."""
    d = starter_definition(card.target, card.labels)
    card.display, card.postprocess, card.requires = d["display"], d["postprocess"], d["requires"]
    card.inputs = d["inputs"]
