"""Guidance maps: what a guidance-aware (click-to-correct) network is given besides the image.

The DeepEdit way (Diaz-Pinto et al. 2022): the clicks become extra input channels of the
segmentation network. Ours are three maps per axial slice, on the network's grid:

* ``mask``: the current mask of the label being corrected (its fraction per network pixel);
* ``include`` and ``exclude``: a Gaussian of each click, ``exp(-d^2 / (2 sigma^2))`` with
  ``d`` the 3D distance in mm from the network pixel's centre on that slice to the click,
  the maximum over the clicks of each kind. A click therefore also reaches the slices
  around it, fading with the distance in z: one click corrects in 3D.

A network with ``guidance_channels`` (``napari_ctseg.models.unet.UNet2D``) given zero maps
segments from scratch (Segment volume); ``editing.refine_model`` gives it the maps of a
mask and its clicks. Qt-free; arrays on the display grid (z, y, x), spacing (z, y, x) mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from napari_ctseg.errors import ModelError
from napari_ctseg.models.preprocess import Preprocessing, SliceCrop, _crop_stack, _resize, probs_to_grid, slices_to_input

CHANNELS = ("mask", "include", "exclude")


@dataclass(frozen=True)
class GuidanceSpec:
    """How a version's clicks become maps (a card's ``guidance``).

    ``sigma_mm``: the Gaussian's width; ``reach_mm``: how far from a click (in z, and in 3D
    for what may change) a click's edit reaches.
    """

    sigma_mm: float = 10.0
    reach_mm: float = 30.0
    channels: tuple[str, ...] = CHANNELS

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GuidanceSpec:
        d = dict(d or {})
        channels = tuple(d.get("channels", CHANNELS))
        if channels != CHANNELS:
            raise ModelError(f"guidance channels {list(channels)}: this version of napari-ctseg "
                             f"knows {list(CHANNELS)}")
        spec = cls(float(d.get("sigma_mm", cls.sigma_mm)), float(d.get("reach_mm", cls.reach_mm)), channels)
        if not (spec.sigma_mm > 0 and spec.reach_mm > 0):
            raise ModelError(f"guidance sigma_mm and reach_mm must be positive, got {spec.sigma_mm}, {spec.reach_mm}")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "sigma_mm": self.sigma_mm, "reach_mm": self.reach_mm,
                "encoding": "3D Gaussian per click (exp(-d^2 / 2 sigma^2), d in mm), maximum per kind; "
                            "mask: the label's fraction per network pixel"}


def gaussian_maps(points_mm: np.ndarray, include: np.ndarray, plane_z_mm: np.ndarray,
                  rows_mm: np.ndarray, cols_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """(B, 2, H, W) float32: include and exclude maps on B axial planes.

    ``points_mm`` (N, 3) the clicks' (z, y, x) in mm; ``include`` (N,) bool; the planes are at
    ``plane_z_mm`` (B,), their pixel centres at ``rows_mm`` (H,) x ``cols_mm`` (W,), all in
    the same frame as the points.
    """
    plane_z_mm = np.asarray(plane_z_mm, dtype=np.float32).reshape(-1)
    rows = np.asarray(rows_mm, dtype=np.float32)
    cols = np.asarray(cols_mm, dtype=np.float32)
    out = np.zeros((len(plane_z_mm), 2, len(rows), len(cols)), dtype=np.float32)
    pts = np.asarray(points_mm, dtype=np.float32).reshape(-1, 3)
    inc = np.asarray(include, dtype=bool).reshape(-1)
    k = np.float32(-0.5 / sigma_mm ** 2)
    for (pz, py, px), is_inc in zip(pts, inc):
        wz = np.exp(k * (plane_z_mm - pz) ** 2)  # (B,)
        live = wz > 1e-4
        if not live.any():
            continue
        wy = np.exp(k * (rows - py) ** 2)
        wx = np.exp(k * (cols - px) ** 2)
        g = wz[live, None, None] * (wy[:, None] * wx[None, :])[None]
        ch = 0 if is_inc else 1
        out[live, ch] = np.maximum(out[live, ch], g)
    return out


def grid_mm(crop: SliceCrop, size: Sequence[int], spacing) -> tuple[np.ndarray, np.ndarray]:
    """The mm positions (rows, columns) of the network pixels' centres of ``crop`` on the
    display grid (pixel i of the slice at i * spacing mm)."""
    sz, sy, sx = (float(v) for v in spacing)
    h, w = int(size[0]), int(size[1])
    rows = (crop.y0 + (np.arange(h) + 0.5) * crop.side / h - 0.5) * sy
    cols = (crop.x0 + (np.arange(w) + 0.5) * crop.side / w - 0.5) * sx
    return rows, cols


def mask_map(mask_slices: np.ndarray, crop: SliceCrop, size: Sequence[int]) -> torch.Tensor:
    """(B, h, w) bool slices of the label -> (B, H, W) float32: its fraction per network pixel."""
    m = np.asarray(mask_slices, dtype=np.float32)
    if m.ndim == 2:
        m = m[None]
    return _resize(_crop_stack(m, crop, 0.0), size).clamp_(0.0, 1.0)


def guidance_for_slices(mask: np.ndarray, label: int, zs, clicks, crop: SliceCrop,
                        size: Sequence[int], spacing, spec: GuidanceSpec) -> torch.Tensor:
    """(B, 3, H, W) guidance for the axial slices ``zs`` of the display-grid ``mask``:
    the label's fraction, then the ``clicks``' include and exclude maps. ``clicks``:
    objects with ``zyx`` (display voxel indices) and ``include``."""
    zs = np.asarray(zs, dtype=int)
    sp = np.asarray(spacing, dtype=float)
    prior = mask_map(np.asarray(mask[zs]) == label, crop, size)
    clicks = list(clicks)
    pts = np.array([np.asarray(c.zyx, float) * sp for c in clicks], dtype=np.float32).reshape(-1, 3)
    inc = np.array([bool(c.include) for c in clicks], dtype=bool)
    rows, cols = grid_mm(crop, size, sp)
    maps = gaussian_maps(pts, inc, zs * sp[0], rows, cols, spec.sigma_mm)
    return torch.cat([prior[:, None], torch.from_numpy(maps)], dim=1)


def label_probability(model, hu: np.ndarray, mask: np.ndarray, label: int, zs, clicks, spacing,
                      prep: dict | Preprocessing, crop: SliceCrop, spec: GuidanceSpec | None,
                      device: str | torch.device = "cpu", batch_size: int = 8) -> np.ndarray:
    """(len(zs), y, x) float32: the guidance-aware ``model``'s probability of ``label`` on the
    axial slices ``zs`` of the display grid, given ``mask`` and ``clicks``. Eval mode, no grad.
    ``spec`` None: a plain network, given the slices only (``mask`` and ``clicks`` unused)."""
    from napari_ctseg.models.predict import class_probs

    prep = Preprocessing.from_dict(prep)
    zs = np.asarray(zs, dtype=int)
    out = np.zeros((len(zs), *hu.shape[1:]), dtype=np.float32)
    weight = next((w for w in model.parameters() if w.dim() == 4), None)
    dtype = weight.dtype if weight is not None else torch.float32
    with torch.inference_mode():
        for start in range(0, len(zs), batch_size):
            z = zs[start:start + batch_size]
            x = slices_to_input(hu, z, prep, crop).to(device, dtype)
            g = None if spec is None else \
                guidance_for_slices(mask, label, z, clicks, crop, prep.size, spacing, spec).to(device, dtype)
            probs = class_probs(model, x, g)
            # the label's probability on the slice grid (0 outside the square: class 0 is 1 there)
            out[start:start + len(z)] = probs_to_grid(probs[:, [0, label]], crop)[:, 1].numpy()
    return out
