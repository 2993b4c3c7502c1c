"""Click to correct with a guidance-aware model (a version whose card ``takes_clicks``).

The learned counterpart of ``editing.refine``'s random walker: the version's network is
run, with the current mask and every click so far as guidance maps
(``napari_ctseg.models.guidance``), on the axial slices within ``reach_mm`` of the new
click. An include click adds what the network labels and the mask does not, an exclude
removes what the mask labels and the network does not, in the piece (face-connected, within
the sphere of ``reach_mm``) that holds the click's own 2 mm sphere, which is always what the
user said; the network's other disagreements with the mask are left alone (the user's
mask, right elsewhere, is not traded for the network's guess), and other labels are never
touched. One click gives one
``RegionEdit`` (one undo step). Qt-free; arrays on the display grid (z, y, x).

``GuidedRefiner`` keeps the network loaded (a click never pays for loading torch or the
weights) and the scan's network square (``find_crop``, the same square Segment volume
uses) per scan.
"""
from __future__ import annotations

import numpy as np

from napari_ctseg.editing.refine import CLICK_SPHERE_MM, Click, _piece_at, _sphere_mask, _spacing3, _tight
from napari_ctseg.editing.tools import RegionEdit
from napari_ctseg.errors import RefineError
from napari_ctseg.models.guidance import GuidanceSpec, label_probability
from napari_ctseg.models.preprocess import Preprocessing, find_crop, image_crop


class GuidedRefiner:
    """Refine clicks with a guidance-aware network (``model`` in eval mode, its ``card``)."""

    def __init__(self, model, card, device: str = "cpu"):
        if not getattr(card, "takes_clicks", False):
            raise RefineError(f"{card.target} {card.version} takes no clicks (not a guidance-aware version)")
        self._setup(model, GuidanceSpec.from_dict(card.guidance), Preprocessing.from_dict(card.preprocessing),
                    card.labels, f"{card.target} {card.version}", device)
        self.card = card

    @classmethod
    def from_parts(cls, model, spec: GuidanceSpec, prep, labels: dict[str, int], name: str = "network",
                   device: str = "cpu", whole_image: bool = False) -> GuidedRefiner:
        """A refiner for a network that has no card yet (validation during training)."""
        self = cls.__new__(cls)
        self._setup(model, spec, Preprocessing.from_dict(prep), labels, name, device)
        self.card = None
        self.whole_image = whole_image
        return self

    def _setup(self, model, spec, prep, labels, name, device) -> None:
        self.model, self.spec, self.prep, self.device = model.eval(), spec, prep, device
        self.labels, self.name = dict(labels), name
        self.whole_image = False  # True: an 8-bit slice export, seen whole (image_crop), not body-cropped
        self._crop_key = None
        self._crop = None

    @classmethod
    def load(cls, target: str, version: str | None = None, registry=None, device: str = "cpu") -> GuidedRefiner:
        from napari_ctseg.models.registry import as_registry

        model, card = as_registry(registry).load_model(target, version, device=device)
        return cls(model, card, device)

    def crop_for(self, hu: np.ndarray):
        """The network's square for this scan (computed once per scan)."""
        key = (id(hu), hu.shape)
        if key != self._crop_key:
            self._crop = image_crop(hu.shape[1:], self.prep) if self.whole_image else find_crop(hu, self.prep)
            self._crop_key = key
        return self._crop

    def _probability(self, hu, mask, label, zs, clicks, spacing, crop) -> np.ndarray:
        """(len(zs), y, x): the network's probability of ``label`` given the mask and the clicks."""
        return label_probability(self.model, hu, mask, label, zs, clicks, spacing, self.prep, crop, self.spec,
                                 self.device)

    def click(self, hu: np.ndarray, mask: np.ndarray, label: int, click: Click, spacing,
              history=(), crop=None) -> RegionEdit:
        """The edit of one ``click`` given the ``history`` (earlier clicks on this label)."""
        sp = _spacing3(spacing)
        if label not in self.labels.values():
            raise RefineError(f"{self.name} knows labels {sorted(self.labels.values())}, not {label}")
        crop = crop if crop is not None else self.crop_for(hu)
        reach = self.spec.reach_mm
        cz = click.zyx[0]
        dz = int(np.floor(reach / sp[0]))
        z0, z1 = max(cz - dz, 0), min(cz + dz + 1, hu.shape[0])
        # in-plane: the ball's box only (the network sees whole slices; the edit stays near)
        half = np.floor(reach / sp).astype(int)
        box = (slice(z0, z1),) + tuple(slice(max(c - h, 0), min(c + h + 1, n))
                                       for c, h, n in zip(click.zyx[1:], half[1:], hu.shape[1:]))
        clicks = list(history) + [click]
        prob = self._probability(hu, mask, label, np.arange(z0, z1), clicks, sp, crop)
        prob = prob[:, box[1], box[2]]
        old = np.asarray(mask[box])
        mine = old == label
        new_fg = prob > 0.5
        zz, yy, xx = np.ogrid[tuple(slice(b.start, b.stop) for b in box)]
        ball = (((zz - cz) * sp[0]) ** 2 + ((yy - click.zyx[1]) * sp[1]) ** 2
                + ((xx - click.zyx[2]) * sp[2]) ** 2) <= reach ** 2
        local = tuple(c - b.start for c, b in zip(click.zyx, box))
        seed = _sphere_mask(old.shape, local, CLICK_SPHERE_MM, sp)
        # what the click asks for, in the piece it is on: an include adds (on background), an
        # exclude removes; the network's other disagreements with the mask stay unapplied
        if click.include:
            add = _piece_at((ball & new_fg & (old == 0)) | (seed & (old == 0)), seed, 1)
            remove = np.zeros_like(add)
        else:
            remove = _piece_at((ball & ~new_fg & mine) | (seed & mine), seed, 1)
            add = np.zeros_like(remove)
        values = old.copy()
        values[add] = label
        values[remove] = 0
        return _tight(box, values, add | remove)


class NetworkRerun(GuidedRefiner):
    """The interactive-segmentation literature's baseline: a *plain* version's network (one
    that takes no clicks) re-run at each click on the slices within ``reach_mm`` of it, its
    label applied by the same rule as a guidance-aware one's (an include adds what the network
    labels in the piece at the click, an exclude removes what it does not). The clicks never
    enter its input, so it can only bring back what the network labels and the mask lacks (a
    piece post-processing removed, a hand edit); the click's own 2 mm sphere is always applied.
    For ``benchmarks/interactive.py`` (its "re-run" rows), not offered in the viewer."""

    def __init__(self, model, card, device: str = "cpu", reach_mm: float = 30.0):
        if card.stages:
            raise RefineError(f"{card.target} {card.version} has stages; a re-run of its one network is not its output")
        spec = GuidanceSpec.from_dict({"reach_mm": reach_mm})
        self._setup(model, spec, Preprocessing.from_dict(card.preprocessing), card.labels,
                    f"{card.target} {card.version} (re-run)", device)
        self.card = card

    def _probability(self, hu, mask, label, zs, clicks, spacing, crop) -> np.ndarray:
        return label_probability(self.model, hu, mask, label, zs, clicks, spacing, self.prep, crop, None,
                                 self.device)
