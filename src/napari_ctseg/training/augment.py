"""Random geometric and intensity changes of a training batch."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, y: torch.Tensor, aug: dict[str, Any], pad_value: float,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometric and intensity changes of a batch: x (B, C, H, W) in [0, 1], y (B, H, W)."""
    b = x.shape[0]

    def uniform(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    if aug.get("dihedral"):
        xs, ys = [], []
        turns = torch.randint(0, 4, (b,), generator=gen)
        flips = torch.rand(b, generator=gen) < 0.5
        for i in range(b):
            xi, yi = torch.rot90(x[i], int(turns[i]), (1, 2)), torch.rot90(y[i], int(turns[i]), (0, 1))
            if flips[i]:
                xi, yi = xi.flip(-1), yi.flip(-1)
            xs.append(xi)
            ys.append(yi)
        x, y = torch.stack(xs), torch.stack(ys)

    rot = math.radians(float(aug.get("rotate_deg", 0.0)))
    smin, smax = aug.get("scale", [1.0, 1.0])
    shift = float(aug.get("translate", 0.0))
    if rot > 0 or smin != 1.0 or smax != 1.0 or shift > 0:
        angle = uniform(-rot, rot)
        scale = torch.exp(uniform(math.log(smin), math.log(smax)))
        tx, ty = uniform(-shift, shift), uniform(-shift, shift)
        keep = torch.rand(b, generator=gen) >= float(aug.get("affine_p", 1.0))
        angle[keep], scale[keep], tx[keep], ty[keep] = 0.0, 1.0, 0.0, 0.0
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x - pad_value, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) + pad_value
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0].round().long()

    shape = (b, 1, 1, 1)
    c = float(aug.get("contrast", 0.0))
    if c > 0:
        x = (x - 0.5) * (1.0 + uniform(-c, c)).view(shape) + 0.5
    br = float(aug.get("brightness", 0.0))
    if br > 0:
        x = x + uniform(-br, br).view(shape)
    x = x.clamp(0.0, 1.0)
    gmin, gmax = aug.get("gamma", [1.0, 1.0])
    if gmin != 1.0 or gmax != 1.0:
        x = x.clamp_min(1e-6) ** torch.exp(uniform(math.log(gmin), math.log(gmax))).view(shape)
    sigma = float(aug.get("noise", 0.0))
    if sigma > 0:
        x = x + torch.randn(x.shape, generator=gen) * uniform(0.0, sigma).view(shape)
        x = x.clamp(0.0, 1.0)
    return x.contiguous(), y.contiguous()
