"""Run a network over a whole volume or one 8-bit slice: labels on the input's own grid.

The raw network output, without post-processing (largest components, hole filling),
exactly as validation during training measures it. ``napari_ctseg.segmentation.inference`` builds
the user-facing segmentation (device choice, post-processing, progress) on top.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from napari_ctseg.models.preprocess import (
    Preprocessing,
    SliceCrop,
    find_crop,
    image8_to_input,
    labels_from_probs,
    slices_to_input,
)


def class_probs(model: nn.Module, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of the network's logits for input ``x`` (float32, on the CPU), with the card's
    operating point (``model.ctseg_logit_bias``, set by the registry's loader) added first;
    ``guidance``: a guidance-aware network's maps (``models.guidance``)."""
    logits = (model(x) if guidance is None else model(x, guidance)).float()
    bias = getattr(model, "ctseg_logit_bias", None)
    if bias is not None:
        logits = logits + bias.to(logits.device).view(1, -1, *([1] * (logits.dim() - 2)))
    return torch.softmax(logits, dim=1).cpu()


def predict_slices(model: nn.Module, hu_zyx: np.ndarray, zs, prep: dict | Preprocessing,
                   crop: SliceCrop, device: str | torch.device = "cpu", batch_size: int = 8,
                   on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Labels (len(zs), y, x) uint8 of the axial slices ``zs`` of a HU volume (z, y, x).

    The one slice-prediction loop (inference, validation during training, fine-tuning). The
    model must be in eval mode; its input follows the model's precision (a half model on a GPU
    gets half input) and memory format (channels-last when its weights are).
    ``on_batch(done, total)`` is called after each batch of slices (for progress bars).
    """
    prep = Preprocessing.from_dict(prep)
    zs = np.asarray(zs, dtype=int)
    out = np.zeros((len(zs), *hu_zyx.shape[1:]), dtype=np.uint8)
    weight = next((w for w in model.parameters() if w.dim() == 4), None)
    half = weight is not None and weight.dtype == torch.float16
    channels_last = weight is not None and not weight.is_contiguous() \
        and weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for start in range(0, len(zs), batch_size):
            z = zs[start:start + batch_size]
            x = slices_to_input(hu_zyx, z, prep, crop).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if half:
                x = x.half()
            probs = class_probs(model, x)
            out[start:start + len(z)] = labels_from_probs(probs, crop)
            if on_batch is not None:
                on_batch(start + len(z), len(zs))
    return out


def predict_volume(model: nn.Module, hu_zyx: np.ndarray, prep: dict | Preprocessing, *,
                   crop: SliceCrop | None = None, device: str | torch.device = "cpu",
                   batch_size: int = 8,
                   on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Labels (z, y, x) uint8 for a HU volume (z, y, x); the model must be in eval mode.

    ``on_batch(done, total)`` is called after each batch of slices (for progress bars).
    """
    prep = Preprocessing.from_dict(prep)
    hu_zyx = np.asarray(hu_zyx)
    if crop is None:
        crop = find_crop(hu_zyx, prep)
    return predict_slices(model, hu_zyx, np.arange(hu_zyx.shape[0]), prep, crop, device, batch_size, on_batch)


def predict_image8(model: nn.Module, image: np.ndarray, prep: dict | Preprocessing, *,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Labels (y, x) uint8 for one 8-bit slice already in the model's window (see ``image8_to_input``)."""
    x, crop = image8_to_input(image, prep)
    with torch.inference_mode():
        probs = class_probs(model, x.to(device))
    return labels_from_probs(probs, crop)[0]
