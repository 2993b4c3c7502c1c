"""Accuracy of the active models on their validation cases, beside published figures.

For every target, evaluates the active (bundled) model on the validation split of
``napari_ctseg/models/splits.json`` with the data in ``../shared/data`` (never copied into
the repository) and prints one table: target, case, Dice, IoU, HD95, ASD, each target's
mean, the published anchors and the size of our training data.

  * liver: liver_chaos03 and liver_dcmqi_3slice (volumes; distances in mm)
  * lungs: liver_ircad01 (expert masks exist only for ircad01 and ircad07; lung bases only)
  * infection: the 10 validation slices of covid_semiseg_train (8-bit slices without pixel
    size: distances in pixels). These are not the published COVID-SemiSeg test slices, so
    the anchors are context, not a like-for-like comparison.

Organs are segmented as a user gets them (``inference.segment``, post-processing included);
infection slices go through ``predict_image8``. Predictions go to a temporary folder
(or ``--out``), outside the repository.

Every bundled version of each target is evaluated (v1 and v2 side by side), and then the
full chest checks of ``benchmarks/chest.py`` (airways, infection on chests without COVID-19,
slice-level sensitivity and specificity on a COVID-19 chest) are printed for lungs and
infection.

Run: .venv/bin/python benchmarks/accuracy.py [--data ../shared/data] [--device cpu]
     [--targets liver,lungs,infection] [--versions v1,v2] [--no-chest] [--out DIR] [--json]
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

from _setup import argument_parser, data_folder, use_source_tree

TARGETS = ("liver", "lungs", "infection")

# Published figures (Dice) and what each method was trained on. Context only: other data,
# other test cases.
ANCHORS = {
    "lungs": [("lungmask R231 (Hofmanninger et al., Eur Radiol Exp 2020)", 0.98,
               "231 routine CT scans")],
    "liver": [("TotalSegmentator (Wasserthal et al., Radiol AI 2023)", 0.965, "1204 CT scans")],
    "infection": [
        ("U-Net on COVID-SemiSeg test (Fan et al., IEEE TMI 2020, Table II)", 0.439, "50 labelled slices"),
        ("Inf-Net, same table", 0.682, "50 labelled slices"),
        ("Semi-Inf-Net, same table", 0.739, "50 labelled + 1600 unlabelled slices"),
    ],
}


def training_size(target: str, data: Path, version: str | None = None) -> str:
    """What a model was trained on: number of volumes and slices, from its card."""
    from napari_ctseg.evaluation.evaluate import load_split
    from napari_ctseg.models.registry import get_card

    try:
        split = get_card(target, version).training.get("split", {})
        train = list(split.get("train", []))
        extra = list(split.get("train_silver", [])) + list(split.get("train_hosts", []))
        pseudo = list(split.get("train_pseudo", []))
        silver_slices = list(split.get("train_silver_slices", []))
        training = get_card(target, version).training
        counts = {n: s for n, s in training.get("labels_source", {}).items() if n in silver_slices}
        hard = "synthetic_hard_negatives" in training
    except Exception:  # noqa: BLE001 - a card without a split: fall back to splits.json
        train, extra, pseudo, silver_slices, counts, hard = [], [], [], [], {}, False
    if not train:
        train = load_split(target, "train")
    if target == "infection":
        silver = "".join(f" + {str(counts.get(f, '')).split(' slices')[0] or 'the'} silver-labelled 8-bit "
                         f"slices of {f}" for f in silver_slices)
        return (f"{len(train)} expert 8-bit slices" + silver
                + (f" + {len(extra)} CT volumes without COVID-19 (negatives, synthetic-lesion hosts"
                   + (", synthetic hard negatives" if hard else "") + ")" if extra else "")
                + "".join(f" + {p['case']} instances {p['instances'][0]}-{p['instances'][1]} (pseudo-labels)"
                          for p in pseudo))
    if extra:
        return f"{len(train)} expert + {len(extra)} silver-labelled CT volumes"
    import nibabel as nib

    slices = 0
    for case in train:
        try:
            slices += int(nib.load(data / case / "ct.nii.gz").shape[2])
        except (OSError, IndexError):
            return f"{len(train)} CT volume(s)"
    return f"{len(train)} CT volume(s), {slices} slices"


def fmt(v, digits):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-" if v is None else "n/a"
    return f"{v:.{digits}f}"


def main(argv=None) -> int:
    parser = argument_parser(__doc__, data_help="the shared data folder")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--out", default=None, help="folder for the predictions (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="also print every report as JSON")
    parser.add_argument("--versions", default=None, help="versions to evaluate (default: every bundled one)")
    parser.add_argument("--no-chest", action="store_true", help="skip the full chest checks")
    args = parser.parse_args(argv)

    use_source_tree()
    from napari_ctseg.errors import CTSegError
    from napari_ctseg.evaluation.evaluate import evaluate, load_split

    data = data_folder(args.data, "accuracy")
    if data is None:
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ctseg-accuracy-"))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    from napari_ctseg.models.registry import list_versions, version_source

    reports = {}
    for target in targets:
        versions = (args.versions.split(",") if args.versions else
                    [c.version for c in list_versions(target) if version_source(c) == "bundled"])
        for version in versions:
            t0 = time.perf_counter()
            try:
                reports[(target, version)] = evaluate(target, data, out / target / version, version=version,
                                                      device=args.device, cases=load_split(target, "validation"))
            except CTSegError as exc:
                print(f"accuracy: {target} {version}: {exc}", file=sys.stderr)
                continue
            print(f"[{target} {version}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)

    head = f"{'target':<10} {'case':<34} {'Dice':>6} {'IoU':>6} {'HD95':>8} {'ASD':>7}  {'unit':<4} note"
    lines = [head, "-" * len(head)]
    for (target, version), r in reports.items():
        unit = r.distance_unit
        for c in r.cases:
            lines.append(f"{target:<10} {c.name:<34} {fmt(c.dice, 3):>6} {fmt(c.iou, 3):>6} "
                         f"{fmt(c.hd95, 1):>8} {fmt(c.asd, 2):>7}  {unit:<4} {c.note}".rstrip())
            for name, f in c.labels.items():
                lines.append(f"{'':<10} {'  ' + name:<34} {fmt(f['dice'], 3):>6} {fmt(f['iou'], 3):>6} "
                             f"{fmt(f['hd95'], 1):>8} {fmt(f['asd'], 2):>7}  {unit}")
        m = r.mean()
        note = f"model {r.version}; trained on {training_size(target, data, r.version)}"
        if m["n_no_distance"]:
            note += f"; {m['n_no_distance']} case(s) without a defined distance"
        lines.append(f"{target:<10} {'MEAN (' + str(m['n']) + ' cases)':<34} {fmt(m['dice'], 3):>6} "
                     f"{fmt(m['iou'], 3):>6} {fmt(m['hd95'], 1):>8} {fmt(m['asd'], 2):>7}  {unit:<4} {note}")
        last = [v for (t, v) in reports if t == target][-1]
        for name, dice, trained in (ANCHORS.get(target, []) if version == last else []):
            lines.append(f"{target:<10} {'published':<34} {dice:>6.3f} {'':>6} {'':>8} {'':>7}  "
                         f"{'':<4} {name}; trained on {trained}")
        lines.append("")
    print("\n".join(lines).rstrip())
    print(f"\npredictions: {out}")
    chest = None
    if not args.no_chest and {"lungs", "infection"} & set(targets):
        import chest as chest_checks

        versions = sorted({v for (t, v) in reports if t in ("lungs", "infection")},
                          key=lambda v: [int(p) if p.isdigit() else p for p in v.replace("v", " ").split()])
        t0 = time.perf_counter()
        chest = chest_checks.run(data, versions)
        print()
        print(chest_checks.table(chest))
        print(f"[chest checks: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    if args.json:
        print(json.dumps({f"{t} {v}": r.to_dict() for (t, v), r in reports.items()} | {"chest": chest}, indent=1))
    return 0 if reports else 1


if __name__ == "__main__":
    sys.exit(main())
