"""Time the bundled models' raw inference on a 512 x 512 x 300 CT, and an R231-sized U-Net.

Raw inference = body crop, windowing and resizing, the network, and the labels back on
the 512 x 512 grid (``napari_ctseg.models.predict_volume``), without post-processing.
The comparison network has lungmask R231's size (a U-Net of depth 5 with 64..1024
channels on 256 x 256 slices; Hofmanninger et al. 2020), with random weights: only its
time matters. Its time is measured on a few slices and scaled to 300.

    python benchmarks/model_speed.py [--threads 2] [--slices 300] [--ct path.nii.gz]
"""
import argparse
import time

import numpy as np
import torch

from napari_ctseg.models import load_model, predict_volume
from napari_ctseg.models.unet import UNet2D


def synthetic_ct(n_slices: int, path: str | None) -> np.ndarray:
    if path:
        from napari_ctseg.io.nifti import read_nifti

        hu = read_nifti(path).hu
        reps = int(np.ceil(n_slices / hu.shape[0]))
        return np.concatenate([hu] * reps)[:n_slices]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) / 200) ** 2 + ((xx - 256) / 240) ** 2 <= 1
    lungs = (((yy - 230) / 110) ** 2 + ((np.abs(xx - 256) - 110) / 70) ** 2) <= 1
    sl = np.full((512, 512), -1000, np.int16)
    sl[body] = 40
    sl[lungs] = -850
    return (sl[None] + rng.normal(0, 20, (n_slices, 512, 512))).astype(np.int16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--ct", default=None, help="a NIfTI CT to tile to --slices (default: synthetic)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reference-slices", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hu = synthetic_ct(args.slices, args.ct)
    print(f"CT {hu.shape} (z, y, x), {args.threads} threads, torch {torch.__version__}")
    total = 0.0
    times = {}
    for target in ("lungs", "liver", "infection"):
        model, card = load_model(target)
        predict_volume(model, hu[:4], card.preprocessing, batch_size=args.batch)  # warm-up
        t = time.perf_counter()
        predict_volume(model, hu, card.preprocessing, batch_size=args.batch)
        times[target] = time.perf_counter() - t
        total += times[target]
        print(f"{target:10s} {card.version}: {times[target]:6.1f} s  ({card.preprocessing['size']} px)")
    print(f"all three:     {total:6.1f} s")

    ref = UNet2D(1, 3, base=64, depth=5, max_channels=1024).eval()
    x = torch.rand(args.reference_slices, 1, 256, 256)
    with torch.inference_mode():
        ref(x[:2])
        t = time.perf_counter()
        for i in range(0, len(x), args.batch):
            ref(x[i:i + args.batch])
        per_slice = (time.perf_counter() - t) / len(x)
    r231 = per_slice * args.slices
    print(f"R231-sized U-Net, network only, {args.slices} slices (from {len(x)}): {r231:6.1f} s")
    print(f"lungs speed-up over it: {r231 / times['lungs']:.1f}x")


if __name__ == "__main__":
    main()
