"""Draw the silver COVID-19 slices (covid_semiseg_pseudo) with their cleaned pseudo-labels.

    python scripts/show_pseudo_slices.py --data ../shared/data --out .scratch/pseudo.png

Each tile: the slice in the experts' orientation; magenta = the mark kept, yellow = a mark
dropped by the cleaning (outside the lungs found on the slice), cyan outline = those lungs.
Prints, per volume, how much of the label the cleaning dropped.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_ctseg.training.labels.silver_slices import (PSEUDO_FOLDER, clean_pseudo_label, lung_region_8bit,
                                        pseudo_volumes, read_pseudo_slice)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default=".scratch/pseudo.png")
    ap.add_argument("--per-volume", type=int, default=6)
    ap.add_argument("--tile", type=int, default=150)
    args = ap.parse_args(argv)
    folder = Path(args.data) / PSEUDO_FOLDER
    rows = []
    for volume, ks in pseudo_volumes(folder).items():
        tiles, raw_px, kept_px = [], 0, 0
        picks = {ks[int(q * (len(ks) - 1))] for q in np.linspace(0, 1, args.per_volume)}
        for k in ks:
            image, label = read_pseudo_slice(folder, volume, k)
            kept = clean_pseudo_label(image, label)
            raw_px += int(label.sum())
            kept_px += int(kept.sum())
            if k not in picks:
                continue
            lung = lung_region_8bit(image)
            rgb = np.stack([image] * 3, -1).astype(np.float32)
            rgb[kept] = 0.5 * rgb[kept] + [127, 0, 110]
            rgb[label & ~kept] = 0.4 * rgb[label & ~kept] + [150, 150, 0]
            rgb[lung & ~ndimage.binary_erosion(lung)] = (0, 220, 220)
            tiles.append(np.asarray(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize((args.tile,) * 2)))
        print(f"{volume:60s} {len(ks):4d} slices  label dropped {100.0 * (raw_px - kept_px) / max(raw_px, 1):5.1f} %")
        while len(tiles) < args.per_volume:
            tiles.append(np.zeros_like(tiles[0]))
        rows.append(np.concatenate(tiles, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
