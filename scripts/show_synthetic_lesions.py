"""Draw training samples with synthetic lesions, to check them by eye before training.

    python scripts/show_synthetic_lesions.py --data ../shared/data --out .scratch/synthetic.png

Each pair of tiles: the host slice (lung window) with lesions painted in, and the same
with the lesion mask outlined in red.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_ctseg.models.preprocess import Preprocessing
from napari_ctseg.training.labels.synthetic import LesionSettings
from napari_ctseg.training import _build_hosts, _sample_hosts, default_config, load_host_case, load_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default=".scratch/synthetic.png")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = default_config("infection")
    prep = Preprocessing.from_dict(cfg.preprocessing)
    names = load_splits()["infection"]["train_hosts"]
    hosts = _build_hosts([load_host_case(args.data, n) for n in names], prep)
    settings = LesionSettings.from_dict({**cfg.synthetic, "p_lesion": 1.0})
    rng = np.random.default_rng(args.seed)
    tiles = []
    while len(tiles) < 2 * args.n:
        xs, ys = _sample_hosts(hosts, prep, 1, rng, settings)
        x, y = xs[0].numpy()[prep.context], ys[0].numpy() > 0
        if not y.any():
            continue
        g = (np.stack([x] * 3, -1) * 255).astype(np.uint8)
        edge = y & ~ndimage.binary_erosion(y)
        o = g.copy()
        o[edge] = (255, 0, 0)
        tiles += [g, o]
    h, w = tiles[0].shape[:2]
    cols = 8
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    Image.fromarray(sheet).resize((cols * w * 3 // 2, rows * h * 3 // 2)).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
