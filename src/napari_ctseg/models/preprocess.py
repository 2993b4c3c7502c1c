"""CT slices to network input, and network output back to the scan's grid.

One description, a model card's ``preprocessing`` dict, drives training and inference
alike, so a model always sees its input prepared exactly as during training::

    {
        "input": "hu",              # the values are Hounsfield units
        "window": [-1024, 600],     # HU clipped to [low, high], then scaled to [0, 1]
        "context": 1,               # axial slices on each side as extra channels (edges replicated)
        "crop": "body",             # in-plane square around the body ("body") or the whole slice ("none")
        "body_threshold_hu": -500,  # what counts as body when cropping
        "crop_margin": 0.04,        # margin around the body, as a fraction of its size, on each side
        "pad_hu": -1024,            # value of the square's parts outside the slice (air)
        "size": [128, 128],         # the network's in-plane size (bilinear, antialiased)
    }

A second-stage model (a card with ``stages``, see ``napari_ctseg.models.definition``) uses
``"crop": "mask"``: its square is the bounding box of the first stage's mask over the whole
volume widened by ``crop_margin_mm`` on each side, and it runs only on the slices of that
box widened by ``z_margin_mm`` (``mask_crop``). The square then covers the organ, not the
body, so the same network size sees it at about three times the resolution.

Axes: volumes are (z, y, x) as in ``CTVolume``; network tensors are (B, C, H, W) with
H along y and W along x. The crop is one square per volume (so neighbouring slices
line up); it keeps the in-plane aspect ratio, and parts of the square that fall outside
the slice are filled with ``pad_hu``.

8-bit slices that are already windowed (like the COVID-19 JPG training slices) use
``image8_to_input``: a value v in 0..255 is read as the window's ``low + v / 255 *
(high - low)``, so such an image and a HU scan windowed with the same ``window`` give
the network the same numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_ctseg.errors import ModelError

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "input": "hu",
    "window": [-1024.0, 600.0],
    "context": 1,
    "crop": "body",
    "body_threshold_hu": -500.0,
    "crop_margin": 0.04,
    "pad_hu": -1024.0,
    "size": [128, 128],
}
CROP_KINDS = ("body", "none", "mask")
# The body crop is found on a grid of about this many pixels across (fast, and exact
# enough for a bounding box with a margin).
_CROP_GRID = 128


@dataclass(frozen=True)
class Preprocessing:
    """The parsed ``preprocessing`` dict of a model card (see the module docstring)."""

    window: tuple[float, float] = (-1024.0, 600.0)
    context: int = 1
    size: tuple[int, int] = (128, 128)
    crop: str = "body"
    body_threshold_hu: float = -500.0
    crop_margin: float = 0.04
    pad_hu: float = -1024.0
    input: str = "hu"
    notes: str = ""
    crop_margin_mm: float = 20.0  # "mask" crops: margin around the first stage's mask, in-plane
    z_margin_mm: float = 15.0  # "mask" crops: slices above and below the mask that are also run

    @classmethod
    def from_dict(cls, prep: dict[str, Any] | Preprocessing) -> Preprocessing:
        """Parse and check a card's dict (missing keys take the defaults); ``ModelError`` if invalid."""
        if isinstance(prep, Preprocessing):
            return prep
        if not isinstance(prep, dict):
            raise ModelError(f"preprocessing must be a dict, not {type(prep).__name__}")
        d = {**DEFAULT_PREPROCESSING, **prep}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelError(f"preprocessing has unknown setting(s) {', '.join(unknown)}; "
                             "this model needs a newer napari-ctseg")
        try:
            window = tuple(float(v) for v in d["window"])
            size = tuple(int(v) for v in d["size"])
            out = cls(window=window, context=int(d["context"]), size=size, crop=str(d["crop"]),
                      body_threshold_hu=float(d["body_threshold_hu"]),
                      crop_margin=float(d["crop_margin"]), pad_hu=float(d["pad_hu"]),
                      input=str(d["input"]), notes=str(d.get("notes", "")),
                      crop_margin_mm=float(d.get("crop_margin_mm", 20.0)),
                      z_margin_mm=float(d.get("z_margin_mm", 15.0)))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"preprocessing settings are not valid: {exc}") from None
        if out.input != "hu":
            raise ModelError(f"preprocessing input {out.input!r} is not supported (expected 'hu')")
        if len(window) != 2 or not window[0] < window[1]:
            raise ModelError(f"preprocessing window {list(window)} must be [low, high] HU with low < high")
        if len(size) != 2 or min(size) < 1:
            raise ModelError(f"preprocessing size {list(size)} must be [height, width] in pixels")
        if out.context < 0:
            raise ModelError("preprocessing context must be 0 or more slices")
        if out.crop not in CROP_KINDS:
            raise ModelError(f"preprocessing crop {out.crop!r} is not one of {', '.join(CROP_KINDS)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"], d["size"] = list(self.window), list(self.size)
        if not d["notes"]:
            del d["notes"]
        if self.crop != "mask":  # only a mask crop reads them
            del d["crop_margin_mm"], d["z_margin_mm"]
        return d

    @property
    def channels(self) -> int:
        """Input channels of the network: the slice and ``context`` slices on each side."""
        return 2 * self.context + 1

    @property
    def pad_value(self) -> float:
        """``pad_hu`` after windowing."""
        return float(self.apply_window(np.float32(self.pad_hu)))

    def apply_window(self, hu: np.ndarray) -> np.ndarray:
        """HU clipped to the window and scaled to [0, 1] (float32)."""
        lo, hi = self.window
        out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        if isinstance(out, np.ndarray) and out.ndim:
            return np.clip(out, 0.0, 1.0, out=out)
        return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class SliceCrop:
    """The square of an axial slice the network sees, in the slice's pixels.

    Rows ``y0 .. y0 + side`` and columns ``x0 .. x0 + side``; it may reach past the
    slice's edges (those parts are padding). ``height`` and ``width`` are the slice's.
    """

    y0: int
    x0: int
    side: int
    height: int
    width: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> SliceCrop:
        return cls(**{k: int(d[k]) for k in ("y0", "x0", "side", "height", "width")})


def _square(y0: float, x0: float, y1: float, x1: float, height: int, width: int,
            margin: float) -> SliceCrop:
    """The square centred on box [y0, y1) x [x0, x1) with a margin on each side."""
    side = max(y1 - y0, x1 - x0) * (1.0 + 2.0 * margin)
    side = max(int(round(side)), 8)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    return SliceCrop(int(round(cy - side / 2.0)), int(round(cx - side / 2.0)), side, int(height), int(width))


def image_crop(shape_hw: Sequence[int], prep: dict | Preprocessing) -> SliceCrop:
    """The crop of a 2D image that is already cropped to the body (the whole image, squared, with the margin)."""
    prep = Preprocessing.from_dict(prep)
    h, w = int(shape_hw[0]), int(shape_hw[1])
    margin = prep.crop_margin if prep.crop == "body" else 0.0
    return _square(0, 0, h, w, h, w, margin)


def find_crop(hu_zyx: np.ndarray, prep: dict | Preprocessing) -> SliceCrop:
    """The in-plane square the network sees for this volume (z, y, x) in HU.

    ``crop == "body"``: the bounding box of the body (the largest connected region above
    ``body_threshold_hu`` in at least 5% of the slices, after an opening that drops thin
    things like the table), squared and widened by ``crop_margin``; the whole slice if
    no body is found. ``crop == "none"``: the whole slice, squared.
    """
    prep = Preprocessing.from_dict(prep)
    hu_zyx = np.asarray(hu_zyx)
    if hu_zyx.ndim == 2:
        hu_zyx = hu_zyx[np.newaxis]
    _, h, w = hu_zyx.shape
    if prep.crop == "mask":
        raise ModelError("this model crops around the mask of a first stage (crop 'mask'): "
                         "use mask_crop with that mask")
    if prep.crop == "none":
        return _square(0, 0, h, w, h, w, 0.0)
    step = max(1, int(round(min(h, w) / _CROP_GRID)))
    zstep = max(1, hu_zyx.shape[0] // 64)
    sub = hu_zyx[::zstep, ::step, ::step] > prep.body_threshold_hu
    proj = sub.mean(axis=0) >= 0.05
    proj = ndimage.binary_opening(proj, structure=np.ones((3, 3), bool), iterations=2)
    labels, n = ndimage.label(proj)
    if n == 0:
        return _square(0, 0, h, w, h, w, 0.0)
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    y0, y1 = ys.min() * step, min((ys.max() + 1) * step, h)
    x0, x1 = xs.min() * step, min((xs.max() + 1) * step, w)
    return _square(y0, x0, y1, x1, h, w, prep.crop_margin)


def mask_crop(mask_zyx: np.ndarray, spacing, prep: dict | Preprocessing,
              z_positions: np.ndarray | None = None, n_slices: int | None = None,
              ) -> tuple[SliceCrop, np.ndarray] | None:
    """The square and the slices a ``"mask"``-crop model sees, from a first stage's mask.

    ``mask_zyx`` (z, y, x), nonzero = the organ; ``spacing`` (z, y, x) mm of the volume.
    The square is the in-plane bounding box of the mask over all its slices, widened by
    ``crop_margin_mm``, then squared; the slices are those of the mask's z range widened
    by ``z_margin_mm`` on each side. When the mask holds only some slices of the volume
    (a first stage run every few slices), ``z_positions`` gives the volume's slice index
    of each of its slices (the gap between them is added to the margin) and ``n_slices``
    the volume's count; ``spacing`` is then the volume's. None when the mask is empty.
    """
    prep = Preprocessing.from_dict(prep)
    m = np.asarray(mask_zyx) > 0
    zs = np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return None
    ys = np.flatnonzero(m[zs[0]:zs[-1] + 1].any(axis=(0, 2)))
    xs = np.flatnonzero(m[zs[0]:zs[-1] + 1].any(axis=(0, 1)))
    h, w = m.shape[1:]
    sz, sy, sx = (float(v) for v in spacing)
    my, mx = prep.crop_margin_mm / sy, prep.crop_margin_mm / sx
    y0, y1 = ys[0] - my, ys[-1] + 1 + my
    x0, x1 = xs[0] - mx, xs[-1] + 1 + mx
    crop = _square(y0, x0, y1, x1, h, w, 0.0)
    positions = np.arange(m.shape[0]) if z_positions is None else np.asarray(z_positions)
    n = m.shape[0] if n_slices is None else int(n_slices)
    dz = int(np.ceil(prep.z_margin_mm / sz))
    if z_positions is not None and len(positions) > 1:  # the organ may end between two run slices
        dz += int(np.max(np.diff(positions))) - 1
    first, last = int(positions[zs[0]]) - dz, int(positions[zs[-1]]) + dz
    return crop, np.arange(max(first, 0), min(last, n - 1) + 1)


def _crop_stack(stack: np.ndarray, crop: SliceCrop, pad_value: float) -> np.ndarray:
    """(N, H, W) -> (N, side, side): the crop's square, padded where it leaves the slice."""
    n, h, w = stack.shape
    s = crop.side
    ys, ye = max(crop.y0, 0), min(crop.y0 + s, h)
    xs, xe = max(crop.x0, 0), min(crop.x0 + s, w)
    if crop.y0 == 0 and crop.x0 == 0 and s <= h and s <= w:
        return stack[:, :s, :s]
    out = np.full((n, s, s), pad_value, dtype=stack.dtype)
    if ye > ys and xe > xs:
        out[:, ys - crop.y0:ye - crop.y0, xs - crop.x0:xe - crop.x0] = stack[:, ys:ye, xs:xe]
    return out


def _resize(stack: np.ndarray | torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, h, w) float -> (N, H, W) float32 tensor, bilinear (antialiased when shrinking)."""
    t = torch.as_tensor(np.ascontiguousarray(stack) if isinstance(stack, np.ndarray) else stack,
                        dtype=torch.float32)
    if tuple(t.shape[-2:]) == tuple(size):
        return t.clone() if not isinstance(stack, np.ndarray) else t
    shrinking = t.shape[-2] > size[0] or t.shape[-1] > size[1]
    return F.interpolate(t[:, None], size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=shrinking)[:, 0]


def window_and_resize(hu_slices: np.ndarray, prep: dict | Preprocessing, crop: SliceCrop) -> torch.Tensor:
    """(N, H, W) HU slices -> (N, size_y, size_x) windowed [0, 1] float32 tensor."""
    prep = Preprocessing.from_dict(prep)
    hu_slices = np.asarray(hu_slices)
    if hu_slices.dtype not in (np.int16, np.int32, np.float32, np.float64):
        hu_slices = hu_slices.astype(np.float32)  # so that pad_hu fits
    # Crop before windowing: the square is usually smaller than the slice.
    cropped = _crop_stack(hu_slices, crop, prep.pad_hu)
    return _resize(prep.apply_window(cropped), prep.size)


def context_indices(z_indices: Sequence[int], n_slices: int, context: int) -> np.ndarray:
    """(B, 2 * context + 1) slice indices around each z, clipped to the volume (edges replicated)."""
    z = np.asarray(z_indices, dtype=np.int64).reshape(-1, 1)
    offsets = np.arange(-context, context + 1, dtype=np.int64).reshape(1, -1)
    return np.clip(z + offsets, 0, n_slices - 1)


def slices_to_input(hu_zyx: np.ndarray, z_indices: Sequence[int], prep: dict | Preprocessing,
                    crop: SliceCrop | None = None) -> torch.Tensor:
    """Network input for the axial slices ``z_indices`` of a HU volume (z, y, x).

    Returns a float32 tensor (B, 2 * context + 1, size_y, size_x), channel ``context``
    being slice z itself and the others its neighbours (z - context ... z + context).
    Pass ``crop`` (from ``find_crop`` on the whole volume) when calling this slice batch
    by slice batch, so every batch uses the same square.
    """
    prep = Preprocessing.from_dict(prep)
    hu_zyx = np.asarray(hu_zyx)
    if hu_zyx.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got shape {hu_zyx.shape}")
    if crop is None:
        crop = find_crop(hu_zyx, prep)
    idx = context_indices(z_indices, hu_zyx.shape[0], prep.context)
    needed, inverse = np.unique(idx, return_inverse=True)
    resized = window_and_resize(hu_zyx[needed], prep, crop)  # each slice once
    return resized[torch.as_tensor(inverse.reshape(idx.shape))]


def image8_to_input(image: np.ndarray, prep: dict | Preprocessing,
                    crop: SliceCrop | None = None) -> tuple[torch.Tensor, SliceCrop]:
    """Network input (1, C, size_y, size_x) for one 8-bit slice already in the model's window.

    The value v (0..255) stands for HU ``low + v / 255 * (high - low)``; the image is
    taken as cropped to the body already (``image_crop``). All context channels are the
    slice itself. Returns the input and the crop (for ``probs_to_grid``).
    """
    prep = Preprocessing.from_dict(prep)
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):  # an RGB(A) export of a grey image
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {np.asarray(image).shape}")
    if crop is None:
        crop = image_crop(img.shape, prep)
    values = img.astype(np.float32)[np.newaxis] / np.float32(255.0)
    resized = _resize(_crop_stack(values, crop, prep.pad_value), prep.size)
    return resized[:, None].expand(1, prep.channels, *prep.size).contiguous(), crop


def labels_to_target(labels: np.ndarray, crop: SliceCrop, prep: dict | Preprocessing,
                     n_classes: int) -> torch.Tensor:
    """Label slices (N, H, W) on the slice grid -> (N, size_y, size_x) int64 training targets.

    Each class's indicator is resampled like the image (bilinear, antialiased) and the
    most likely class kept, so thin structures survive better than with nearest-neighbour.
    """
    prep = Preprocessing.from_dict(prep)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    cropped = _crop_stack(labels, crop, 0)
    onehot = np.stack([(cropped == k).astype(np.float32) for k in range(n_classes)], axis=1)
    n = onehot.shape[0]
    resized = _resize(onehot.reshape(n * n_classes, *onehot.shape[-2:]), prep.size)
    return resized.reshape(n, n_classes, *prep.size).argmax(dim=1)


def probs_to_grid(probs: torch.Tensor, crop: SliceCrop) -> torch.Tensor:
    """Class probabilities (B, K, size_y, size_x) -> (B, K, height, width) on the slice grid.

    Bilinear; outside the crop's square everything is background (class 0).
    """
    probs = torch.as_tensor(probs, dtype=torch.float32)
    b, k = probs.shape[:2]
    s = crop.side
    up = F.interpolate(probs, size=(s, s), mode="bilinear", align_corners=False)
    out = torch.zeros((b, k, crop.height, crop.width), dtype=torch.float32)
    out[:, 0] = 1.0
    ys, ye = max(crop.y0, 0), min(crop.y0 + s, crop.height)
    xs, xe = max(crop.x0, 0), min(crop.x0 + s, crop.width)
    if ye > ys and xe > xs:
        out[:, :, ys:ye, xs:xe] = up[:, :, ys - crop.y0:ye - crop.y0, xs - crop.x0:xe - crop.x0]
    return out


def labels_from_probs(probs: torch.Tensor, crop: SliceCrop, chunk: int = 16) -> np.ndarray:
    """Class probabilities (B, K, size_y, size_x) -> labels (B, height, width) uint8 on the slice grid.

    Works ``chunk`` slices at a time so a full-resolution (B, K, H, W) array is never held.
    """
    probs = torch.as_tensor(probs)
    out = np.zeros((probs.shape[0], crop.height, crop.width), dtype=np.uint8)
    for i in range(0, probs.shape[0], chunk):
        out[i:i + chunk] = class_argmax(probs_to_grid(probs[i:i + chunk], crop))
    return out


def class_argmax(probs: torch.Tensor) -> np.ndarray:
    """argmax over the class axis of (B, K, H, W) as uint8 (B, H, W); ties go to the lower class.

    A running maximum over the few classes: torch's ``argmax(dim=1)`` is many times slower
    on the CPU for small K.
    """
    best = probs[:, 0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for k in range(1, probs.shape[1]):
        better = probs[:, k] > best
        labels[better] = k
        torch.maximum(best, probs[:, k], out=best)
    return labels.numpy()
