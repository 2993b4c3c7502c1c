"""Draw the synthetic hard negatives (napari_ctseg.training.labels.negatives), to check them by eye before training.

    python scripts/show_hard_negatives.py --data ../shared/data --out .scratch/hard_negatives.png

One row per host slice: the slice as the network sees it (lung window, 160 x 160), then the
same slice after each change (expiration, atelectasis, cardiac motion, thick slices, noise,
kernel). The infection label of every tile is empty.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_ctseg.models.preprocess import Preprocessing
from napari_ctseg.training.labels.negatives import CHANGES, HardNegativeSettings, add_hard_negatives, thick_slab
from napari_ctseg.training import _build_hosts, default_config, load_host_case, load_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default=".scratch/hard_negatives.png")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hosts", default=None, help="comma-separated host cases (default: the split's)")
    args = ap.parse_args(argv)
    cfg = default_config("infection")
    prep = Preprocessing.from_dict(cfg.preprocessing)
    names = args.hosts.split(",") if args.hosts else load_splits()["infection"]["train_hosts"]
    hosts = _build_hosts([load_host_case(args.data, n) for n in names], prep)
    settings = HardNegativeSettings.from_dict(cfg.hard_negatives)
    rng = np.random.default_rng(args.seed)
    rows = []
    while len(rows) < args.rows:
        ci, z = hosts.index[rng.integers(len(hosts.index))]
        lung = hosts.lungs[ci][[z]]
        if lung.sum() < 1500:  # slices with much lung show the changes best
            continue
        x = hosts.images[ci][[z]].numpy()
        tiles = [x[0]]
        for change in CHANGES:
            if change == "thick":
                y = thick_slab(hosts.images[ci], z, [z], hosts.spacing_z[ci], rng.uniform(*settings.thick_mm))
            else:
                y = add_hard_negatives(x, lung, prep.window, rng, [change], settings)
            tiles.append(y[0])
        rows.append(np.concatenate(tiles, 1))
    sheet = (np.clip(np.concatenate(rows, 0), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(sheet).save(args.out)
    print(args.out, "columns: original,", ", ".join(CHANGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
