"""Draw the liver masks of two versions over a whole scan, to look at them before bundling.

    python scripts/show_liver_masks.py --case liver_chaos03 --out .scratch/liver_masks.png

Axial slices spread over the liver and one coronal slice, in a liver window: the expert
mask's outline in red (when the case has one), the first version's in yellow, the second's in
cyan.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_ctseg.segmentation.inference import ModelSet, segment
from napari_ctseg.io import read_scan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def outline(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m)


def tile(ct: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    g = (np.clip((ct + 150.0) / 400.0, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([g] * 3, axis=-1)
    for m, colour in masks:
        rgb[outline(m)] = colour
    return rgb


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--case", default="liver_chaos03")
    ap.add_argument("--versions", default="v1,v2")
    ap.add_argument("--out", default=".scratch/liver_masks.png")
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args(argv)
    folder = Path(args.data) / args.case
    vol = read_scan(folder / "ct.nii.gz" if (folder / "ct.nii.gz").exists() else folder / "dicom")
    ref = None
    if (folder / "liver.nii.gz").exists():
        ref = np.asarray(read_scan(folder / "liver.nii.gz").hu) > 0.5
    preds = []
    for v in args.versions.split(","):
        preds.append(segment(vol, "liver", "cpu", models=ModelSet({"liver": v})).masks["liver"] > 0)
    union = preds[0] | preds[-1] | (ref if ref is not None else False)
    zs = np.flatnonzero(union.any(axis=(1, 2)))
    picks = np.linspace(zs[0], zs[-1], args.n).round().astype(int)
    colours = [(255, 220, 0), (0, 230, 255)]
    tiles = []
    for z in picks:
        layers = ([(ref[z], (255, 40, 40))] if ref is not None else []) + \
                 [(p[z], c) for p, c in zip(preds, colours)]
        tiles.append(tile(np.asarray(vol.hu[z], np.float32), layers))
    h = max(t.shape[0] for t in tiles)
    rows = [np.concatenate(tiles[i:i + 4], axis=1) for i in range(0, len(tiles), 4)]
    y = int(np.argwhere(union).mean(axis=0)[1])
    cor_layers = ([(ref[:, y], (255, 40, 40))] if ref is not None else []) + \
                 [(p[:, y], c) for p, c in zip(preds, colours)]
    cor = tile(np.asarray(vol.hu[:, y], np.float32), cor_layers)
    scale = max(1, int(round(vol.spacing[0] / vol.spacing[2])))
    cor = np.repeat(cor, scale, axis=0)
    width = rows[0].shape[1]
    cor_img = np.zeros((cor.shape[0], width, 3), np.uint8)
    cor_img[:, :min(width, cor.shape[1])] = cor[:, :width]
    Image.fromarray(np.concatenate(rows + [cor_img], axis=0)).save(args.out)
    print(f"wrote {args.out}: slices {picks.tolist()}, coronal y {y}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
