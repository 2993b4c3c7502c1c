"""Run a network over a whole volume or one 8-bit slice: labels on the input's own grid.

The raw network output, without post-processing (largest components, hole filling),
exactly as validation during training measures it. ``napari_ctseg.inference`` builds
the user-facing segmentation (device choice, post-processing, progress) on top.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .preprocess import (
    Preprocessing,
    SliceCrop,
    find_crop,
    image8_to_input,
    labels_from_probs,
    slices_to_input,
)


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
    n = hu_zyx.shape[0]
    out = np.zeros(hu_zyx.shape, dtype=np.uint8)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            z = np.arange(start, min(start + batch_size, n))
            x = slices_to_input(hu_zyx, z, prep, crop).to(device)
            probs = torch.softmax(model(x), dim=1).float().cpu()
            out[start:start + len(z)] = labels_from_probs(probs, crop)
            if on_batch is not None:
                on_batch(int(z[-1]) + 1, n)
    return out


def predict_image8(model: nn.Module, image: np.ndarray, prep: dict | Preprocessing, *,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Labels (y, x) uint8 for one 8-bit slice already in the model's window (see ``image8_to_input``)."""
    x, crop = image8_to_input(image, prep)
    with torch.inference_mode():
        probs = torch.softmax(model(x.to(device)), dim=1).float().cpu()
    return labels_from_probs(probs, crop)[0]
