"""Choose a one-class model's operating point on validation and write it as a definition file.

    python scripts/choose_operating_point.py --target infection --version v4 \\
        --data ../shared/data --out scripts/definitions/infection_v5.json
    ctseg models derive infection v4 --out weights/infection/v5 \\
        --definition scripts/definitions/infection_v5.json

Runs ``napari_ctseg.training.operating_point.sweep`` on the target's validation split of
``models/splits.json`` only (the expert validation slices and the validation negative scan),
prints one line per threshold, and writes ``{"decision": {"threshold": t, ...}}`` with the
chosen threshold, the rule and the whole sweep. The held-out figures of the derived version
come from ``benchmarks/chest.py``, afterwards.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_ctseg.io import read_scan
from napari_ctseg.training import load_case, load_splits
from napari_ctseg.training.operating_point import DEFAULT_GRID, choose, sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import DATA  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def scan_folder(data: Path, name: str) -> Path:
    folder = data / name
    return folder / "ct.nii.gz" if (folder / "ct.nii.gz").is_file() else folder / "dicom"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="infection")
    ap.add_argument("--version", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", required=True, help="the definition file to write (JSON)")
    ap.add_argument("--max-negative-pct", type=float, default=0.5,
                    help="the most of the lungs a validation negative may have marked (the goal)")
    ap.add_argument("--grid", default=",".join(str(t) for t in DEFAULT_GRID))
    args = ap.parse_args(argv)
    data = Path(args.data)
    split = load_splits()[args.target]
    positives = []
    for name in split["validation"]:
        case = load_case(args.target, data, name)
        positives.append((name, case.image8, case.labels))
    negatives = [(name, read_scan(scan_folder(data, name))) for name in split.get("validation_negative", [])]
    rows = sweep(args.target, args.version, positives, negatives,
                 [float(t) for t in args.grid.split(",")], progress=lambda m: print(m, file=sys.stderr))
    best = choose(rows, args.max_negative_pct)
    print(f"{'threshold':>9}  {'val Dice':>8}  " + "  ".join(f"{n:>12}" for n, _ in negatives))
    for r in rows:
        mark = "  <- chosen" if r is best else ""
        print(f"{r.threshold:>9.2f}  {r.dice:>8.4f}  "
              + "  ".join(f"{r.negative_pct[n]:>11.2f}%" for n, _ in negatives) + mark)
    rule = (f"the best mean Dice of the raw network on the {len(positives)} validation positives among the "
            f"thresholds that keep every validation negative at <= {args.max_negative_pct} % of the lungs "
            "(post-processed, lungs segmented by the active lungs version); ties go to the higher threshold")
    definition = {"decision": {"threshold": best.threshold, "rule": rule,
                               "chosen_on": [n for n, *_ in positives] + [n for n, _ in negatives],
                               "sweep": [r.to_dict() for r in rows]}}
    Path(args.out).write_text(json.dumps(definition, indent=1) + "\n")
    print(f"wrote {args.out}: threshold {best.threshold}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
