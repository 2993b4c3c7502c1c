"""A small, fast 2D U-Net for 2.5D CT segmentation (neighbouring slices as channels).

Input (B, C, H, W) float32, output logits (B, n_classes, H, W). H and W must be
divisible by ``2 ** (depth - 1)``. Kept deliberately plain (conv-norm-ReLU blocks,
max-pool down, transposed-conv up) so that it runs fast on a CPU and its state dict
is a few MB.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from napari_ctseg.errors import ModelError

ARCHITECTURES = ("unet2d",)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ModelError(f"unknown normalisation {kind!r} (expected 'batch', 'instance' or 'none')")


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, norm, ReLU) layers."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", dropout: float = 0.0):
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class UNet2D(nn.Module):
    """A plain 2D U-Net.

    ``depth`` is the number of resolution levels (``depth - 1`` poolings); the number of
    channels doubles at each level from ``base`` up to ``max_channels``. ``dropout``
    applies at the lowest level only.

    ``guidance_channels`` > 0 makes a guidance-aware (click-to-correct) network, the DeepEdit
    way: after the ``in_channels`` image channels it takes that many guidance maps (see
    ``napari_ctseg.models.guidance``: the current mask, include and exclude clicks).
    ``forward(x)`` alone gets zero maps (no mask yet, no clicks), so the network segments a
    scan from scratch like any other version; ``forward(x, guidance)`` follows the clicks.
    """

    def __init__(self, in_channels: int, n_classes: int, base: int = 16, depth: int = 4,
                 max_channels: int = 256, norm: str = "batch", dropout: float = 0.0,
                 guidance_channels: int = 0):
        super().__init__()
        if depth < 1:
            raise ModelError(f"U-Net depth must be at least 1, not {depth}")
        if in_channels < 1 or n_classes < 1 or base < 1 or guidance_channels < 0:
            raise ModelError("U-Net channels and classes must be positive")
        self.in_channels, self.n_classes, self.depth = int(in_channels), int(n_classes), int(depth)
        self.guidance_channels = int(guidance_channels)
        widths = [min(base * 2 ** i, max_channels) for i in range(depth)]
        self.widths = widths
        self.down = nn.ModuleList()
        c = in_channels + self.guidance_channels
        for i, w in enumerate(widths):
            self.down.append(ConvBlock(c, w, norm, dropout if i == depth - 1 else 0.0))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in range(depth - 2, -1, -1):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2))
            self.up_blocks.append(ConvBlock(2 * widths[i], widths[i], norm))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.depth - 1)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``x`` (B, in_channels, H, W); a guidance-aware network also takes
        ``guidance`` (B, guidance_channels, H, W), or both in ``x`` (B, in + guidance, H, W)
        (how training batches carry them), or neither (zero maps)."""
        if self.guidance_channels:
            if guidance is not None:
                if guidance.shape[1] != self.guidance_channels:
                    raise ModelError(f"this network takes {self.guidance_channels} guidance maps, "
                                     f"not {guidance.shape[1]}")
                x = torch.cat([x, guidance.to(x.dtype)], dim=1)
            elif x.shape[1] == self.in_channels:
                x = torch.cat([x, x.new_zeros((x.shape[0], self.guidance_channels, *x.shape[2:]))], dim=1)
        elif guidance is not None:
            raise ModelError("this network takes no clicks (a version without guidance channels)")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for up, block in zip(self.up, self.up_blocks):
            x = up(x)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


def build_model(architecture: dict[str, Any]) -> nn.Module:
    """The network a model card's ``architecture`` dict describes (untrained weights).

    ``{"name": "unet2d", "in_channels": 3, "n_classes": 3, "base": 16, "depth": 5, ...}``;
    any other keys are passed to ``UNet2D``. Raises ``ModelError`` for an unknown name
    or arguments the architecture does not take.
    """
    if not isinstance(architecture, dict):
        raise ModelError(f"the model's architecture must be a dict, not {type(architecture).__name__}")
    args = dict(architecture)
    name = args.pop("name", None)
    if name != "unet2d":
        raise ModelError(
            f"unknown model architecture {name!r}: this version of napari-ctseg knows "
            f"{', '.join(ARCHITECTURES)}; update napari-ctseg or use another model version"
        )
    try:
        return UNet2D(**args)
    except TypeError as exc:
        raise ModelError(f"architecture {name!r}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
