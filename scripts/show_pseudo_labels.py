"""Draw the pseudo-labels of the COVID-19 scan's training block, to check them by eye.

    python scripts/show_pseudo_labels.py --data ../shared/data --out .scratch/pseudo.png

Every slice of the block: lung window, the pseudo-label in red; a slice labelled clean by the
radiologists has a green frame, one labelled infected a red frame.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_ctseg.training import instance_numbers_by_z, load_pseudo_case, load_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default=".scratch/pseudo.png")
    args = ap.parse_args(argv)
    spec = load_splits()["infection"]["train_pseudo"][0]
    case = load_pseudo_case(args.data, spec)
    info = json.load(open(f"{args.data}/{spec['case']}/labels.json"))
    inst = instance_numbers_by_z(f"{args.data}/{spec['case']}/dicom", case.hu.shape[0])
    tiles = []
    for z in np.flatnonzero(case.slices):
        g = np.clip((case.hu[z].astype(np.float32) + 1100) / 1350, 0, 1)
        rgb = np.stack([g] * 3, -1)
        m = case.labels[z] > 0
        rgb[m] = 0.5 * rgb[m] + 0.5 * np.array([1.0, 0, 0])
        im = (rgb * 255).astype(np.uint8)
        col = (255, 0, 0) if inst[z] in info["infected_instances"] else (0, 200, 0)
        im[:6], im[-6:], im[:, :6], im[:, -6:] = col, col, col, col
        tiles.append(np.asarray(Image.fromarray(im).resize((200, 200))))
    cols = 10
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * 200, cols * 200, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * 200:(r + 1) * 200, c * 200:(c + 1) * 200] = t
    Image.fromarray(sheet).save(args.out)
    print(args.out, f"{int(case.slices.sum())} slices, {int((case.labels > 0).any(axis=(1, 2)).sum())} with pseudo-labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
