"""Write src/napari_ctseg/models/splits.json: the fixed train/validation splits per target.

Organ splits follow the shared data README. The COVID-19 slices are split 40/10 with a
fixed seed; slices of identical image size (likely the same patient and crop) are kept
on one side. Run once; the file is committed and never regenerated silently.

    python scripts/make_splits.py /path/to/data [--seed 0]
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

from PIL import Image

from napari_ctseg.training import SPLITS_FILE, make_infection_split

FOLDER = "covid_semiseg_train"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing splits.json")
    args = ap.parse_args()
    if SPLITS_FILE.exists() and not args.force:
        raise SystemExit(f"{SPLITS_FILE} exists; pass --force to replace it")
    ids, groups = [], {}
    sizes = defaultdict(list)
    for img in (args.data / FOLDER / "images").glob("*.jpg"):
        ids.append(img.stem)
        sizes[Image.open(img).size].append(img.stem)
    for size, members in sizes.items():
        for m in members:
            groups[m] = "x".join(map(str, size))
    split = make_infection_split(ids, n_validation=10, seed=args.seed, groups=groups)
    splits = {
        "lungs": {
            "train": ["liver_ircad07"],
            "train_silver": ["liver_chaos03"],
            "validation": ["liver_ircad01"],
            "note": "expert lung masks (0 background, 1 right, 2 left) of two abdominal CTs: lung bases "
                    "only; silver-standard labels made by napari_ctseg.training.silver_lung_labels on "
                    "liver_chaos03 (checked by eye slice by slice, all 78 slices, 2026-11-23; the method "
                    "scores Dice 0.983/0.975 (right/left) on liver_ircad01 and 0.992/0.993 on "
                    "liver_ircad07 against the expert masks); silver labels are never used for validation",
        },
        "liver": {
            "train": ["liver_ircad01", "liver_ircad07"],
            "validation": ["liver_chaos03", "liver_dcmqi_3slice"],
            "note": "validation on another centre (CHAOS, healthy donor) and a 3-slice DICOM example",
        },
        "infection": {
            "train": [f"{FOLDER}/{i}" for i in split["train"]],
            "validation": [f"{FOLDER}/{i}" for i in split["validation"]],
            "seed": args.seed,
            "method": "make_infection_split(ids, n_validation=10, seed) with images of identical "
                      "size grouped (same patient likely)",
        },
    }
    SPLITS_FILE.write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SPLITS_FILE}: infection validation {split['validation']}")


if __name__ == "__main__":
    main()
