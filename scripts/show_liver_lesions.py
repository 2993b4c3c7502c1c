"""Draw liver training samples with synthetic tumour-like lesions (or a new liver contrast),
to check them by eye.

    python scripts/show_liver_lesions.py --data ../shared/data --out .scratch/liver_lesions.png
    python scripts/show_liver_lesions.py --change contrast --config weights/liver/v3/card.json

Each pair of tiles: a training sample (the newest liver recipe's crop, or that of
``--config``: a card or a config file, as ``ctseg train --config`` takes it; liver window)
as it is, and the same sample with lesions painted in (``--change lesions``) or the liver's
HU and inner contrast changed (``--change contrast``); the liver outline (the label, which
neither changes) in orange on the second.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from napari_ctseg.models.preprocess import Preprocessing
from napari_ctseg.training.labels.synthetic import DEFAULT_ORGAN_CONTRAST, add_organ_lesions, shift_organ_contrast
from napari_ctseg.training import build_cache, config_from_file, default_config, load_case, load_splits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default=".scratch/liver_lesions.png")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--change", choices=("lesions", "contrast"), default="lesions")
    ap.add_argument("--config", default=None, help="a model card or config file (default: the newest recipe)")
    args = ap.parse_args(argv)
    cfg = config_from_file(args.config) if args.config else default_config("liver")
    prep = Preprocessing.from_dict(cfg.preprocessing)
    cases = [load_case("liver", args.data, n) for n in load_splits()["liver"]["train"]]
    cache = build_cache(cases, prep, 2, 1.0)
    rng = np.random.default_rng(args.seed)
    tiles = []
    while len(tiles) < 2 * args.n:
        ci, z = cache.index[rng.integers(len(cache.index))]
        stack, target = cache.images[ci], cache.targets[ci]
        idx = np.clip(np.arange(z - prep.context, z + prep.context + 1), 0, stack.shape[0] - 1)
        organ = (target[idx] > 0).numpy()
        if organ[prep.context].sum() < 400:
            continue
        x = stack[idx].numpy()
        if args.change == "lesions":
            painted = add_organ_lesions(x, organ, prep.window, rng, {**cfg.organ_lesions})
        else:
            painted = shift_organ_contrast(x, organ, prep.window, rng, cfg.organ_contrast or DEFAULT_ORGAN_CONTRAST)
        a = (x[prep.context] * 255).astype(np.uint8)
        b = (painted[prep.context] * 255).astype(np.uint8)
        rgb = np.stack([b] * 3, axis=-1)
        edge = organ[prep.context] & ~ndimage.binary_erosion(organ[prep.context])
        rgb[edge] = (255, 150, 40)
        tiles += [np.stack([a] * 3, axis=-1), rgb]
    rows = [np.concatenate(tiles[i:i + 6], axis=1) for i in range(0, len(tiles), 6)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
