"""Full chest CTs: what a user sees on the scans the plugin is for (held-out cases only).

For each version given (default: v1 and the newest), segments the held-out full chests of
``napari_ctseg/models/splits.json`` as a user gets them (``inference.segment``,
post-processing included) and prints:

* lungs on ``holdout_chest`` (lungs split): the share of the trachea and main bronchi
  labelled lung (goal < 5 %): the airways of ``silver.airway_mask`` (undilated) outside each
  silver lung's axial outline (those inside are intrapulmonary bronchi, which lung masks
  count as lung; the share of all airways found is printed too), lung Dice against the
  silver-standard lungs with the airways removed, and whether the apex-to-base extent
  is covered (first and last lung slice, ours vs silver);


* infection on ``holdout_covid`` (COVID-19, radiologists' slice labels keyed by DICOM
  InstanceNumber, 1 = the head end; the held-out block of instances, and the whole scan,
  marked when a version trained on its other block): slice-level sensitivity and specificity, a slice
  counting as infected above 100 mm2 of predicted infection (goals >= 0.90), and the
  lobes of the largest predicted slice beside the radiologists' lobes.

Run: .venv/bin/python benchmarks/chest.py [--data ../shared/data] [--versions v1,v2] [--json]
Printed by benchmarks/accuracy.py too.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from _setup import REPO, argument_parser, use_source_tree
from napari_ctseg.training import instance_numbers_by_z

SLICE_MM2 = 100.0
NON_COVID_CHESTS = ("chest_ctmd_normal001", "chest_itk00", "chest_lungdx_a0001", "liver_ircad01")
# The demo's sample (Lung-PET-CT-Dx A0001, downsampled to 2.2 x 2.2 x 5 mm), bundled in the package.
SAMPLE_CASE = "bundled chest sample"
SAMPLE_PATH = REPO / "src" / "napari_ctseg" / "data" / "chest_ct.nii.gz"


def scan_path(data: Path, case: str) -> Path:
    if case == SAMPLE_CASE:
        return SAMPLE_PATH
    folder = data / case
    return folder / "ct.nii.gz" if (folder / "ct.nii.gz").is_file() else folder / "dicom"


def segment_case(data: Path, case: str, versions: dict[str, str], targets, cache: dict):
    from napari_ctseg.segmentation.inference import ModelSet, segment
    from napari_ctseg.io import read_scan

    if case not in cache:
        cache[case] = read_scan(scan_path(data, case))
    vol = cache[case]
    res = segment(vol, targets, "cpu", models=ModelSet(versions))
    return vol, res


def lungs_check(data: Path, case: str, version: str, cache: dict) -> dict:
    from napari_ctseg.evaluation.metrics import dice
    from napari_ctseg.training.labels.silver import airway_mask, inside_body_air, silver_lung_labels

    vol, res = segment_case(data, case, {"lungs": version}, ["lungs"], cache)
    hu = np.asarray(vol.hu)
    key = ("silver", case)
    if key not in cache:
        cache[key] = (silver_lung_labels(hu, vol.spacing),
                      airway_mask(hu, vol.spacing, inside_body_air(hu), dilate_mm=0.0))
    silver, air = cache[key]
    # Central airways (trachea, main bronchi): outside each silver lung's axial outline. The
    # airways inside the outline are intrapulmonary bronchi, which lung masks count as lung.
    from scipy import ndimage

    outline = np.zeros(silver.shape, bool)
    for v in (1, 2):
        for z in range(silver.shape[0]):
            if (silver[z] == v).any():
                outline[z] |= ndimage.binary_fill_holes(silver[z] == v)
    central = air & ~outline
    lungs = res.masks["lungs"]
    zs = lambda m: np.flatnonzero(m.reshape(m.shape[0], -1).any(axis=1))  # noqa: E731
    z_ours, z_silver = zs(lungs > 0), zs(silver > 0)
    return {"case": case, "version": version,
            "airway_ml": float(air.sum()) * vol.voxel_volume_ml,
            "central_airway_ml": float(central.sum()) * vol.voxel_volume_ml,
            "airway_as_lung_pct": 100.0 * float(np.count_nonzero((lungs > 0) & central)) / max(int(central.sum()), 1),
            "all_airways_as_lung_pct": 100.0 * float(np.count_nonzero((lungs > 0) & air)) / max(int(air.sum()), 1),
            "dice_vs_silver": dice(lungs > 0, silver > 0),
            "dice_right": dice(lungs == 1, silver == 1), "dice_left": dice(lungs == 2, silver == 2),
            "z_range": [int(z_ours[0]), int(z_ours[-1])] if z_ours.size else None,
            "z_range_silver": [int(z_silver[0]), int(z_silver[-1])] if z_silver.size else None}


def infection_fp(data: Path, case: str, versions: dict[str, str], cache: dict) -> dict:
    vol, res = segment_case(data, case, versions, ["lungs", "infection"], cache)
    inf = res.masks["infection"] > 0
    px = vol.spacing[1] * vol.spacing[2]
    per_slice = inf.reshape(inf.shape[0], -1).sum(axis=1) * px
    return {"case": case, "versions": versions, "pct_of_lungs": res.lung_involvement_pct or 0.0,
            "ml": float(inf.sum()) * vol.voxel_volume_ml, "slices_over_100mm2": int((per_slice > SLICE_MM2).sum())}


def covid_slices(data: Path, case: str, versions: dict[str, str], cache: dict,
                 instances: tuple[int, int] | None = None) -> dict:
    """Slice-level figures on the slices whose InstanceNumber lies in ``instances`` (all by default)."""
    labels = json.loads((data / case / "labels.json").read_text())
    vol, res = segment_case(data, case, versions, ["lungs", "infection"], cache)
    inst = instance_numbers_by_z(data / case / "dicom", vol.shape[0])
    lo, hi = instances or (min(inst), max(inst))
    keep = np.array([lo <= i <= hi for i in inst])
    truth = np.array([i in set(labels["infected_instances"]) for i in inst])
    inf = res.masks["infection"] > 0
    area = inf.reshape(inf.shape[0], -1).sum(axis=1) * vol.spacing[1] * vol.spacing[2]
    pred = area > SLICE_MM2
    truth, pred, area_k = truth[keep], pred[keep], np.where(keep, area, -1.0)
    tp, fn = int((pred & truth).sum()), int((~pred & truth).sum())
    tn, fp = int((~pred & ~truth).sum()), int((pred & ~truth).sum())
    z_max = int(np.argmax(area_k))
    lungs = res.masks["lungs"]
    side = {1: "right", 2: "left"}
    on = inf[z_max]
    sides = sorted({side[v] for v in np.unique(lungs[z_max][on]) if v in side}) if on.any() else []
    return {"case": case, "instances": [int(lo), int(hi)], "versions": versions, "sensitivity": tp / max(tp + fn, 1),
            "specificity": tn / max(tn + fp, 1), "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "pct_of_lungs": res.lung_involvement_pct or 0.0,
            "largest_slice": {"instance": inst[z_max], "mm2": float(area[z_max]), "sides": sides,
                              "radiologists": labels.get("lobes_by_instance", {}).get(str(inst[z_max]), [])}}


def run(data: Path, versions: list[str], trained_on: dict[str, set[str]] | None = None) -> dict:
    """Lungs checks per version; infection checks per pair (lungs v, infection v) for each
    version, plus the pair active by default when it is not among them."""
    from napari_ctseg.models.registry import active_version, get_card, list_versions

    cache: dict = {}
    out = {"lungs": [], "infection_negative": [], "infection_covid": []}
    lung_split = json.loads((REPO / "src/napari_ctseg/models/splits.json").read_text())
    holdout_chest = lung_split["lungs"].get("holdout_chest", ["chest_lungdx_a0001"])
    inf_split = lung_split["infection"]
    have = {t: {c.version for c in list_versions(t)} for t in ("lungs", "infection")}
    for v in versions:
        for case in holdout_chest if v in have["lungs"] else []:
            out["lungs"].append(lungs_check(data, case, v, cache))
    # infection vN with lungs vN, or with the active lungs where there is no lungs vN
    pairs = [{"lungs": v if v in have["lungs"] else active_version("lungs"), "infection": v}
             for v in versions if v in have["infection"]]
    default = {"lungs": active_version("lungs"), "infection": active_version("infection")}
    if default not in pairs:
        pairs.append(default)
    for pair in pairs:
        v = pair["infection"]
        card = get_card("infection", v)
        split = card.training.get("split", {})
        trained = set(split.get("train_hosts", []))
        chosen = set(split.get("validation_negative", []))
        for case in NON_COVID_CHESTS + (SAMPLE_CASE,):
            r = infection_fp(data, case, pair, cache)
            source = "chest_lungdx_a0001" if case == SAMPLE_CASE else case
            r["trained_on"] = source in trained
            r["chosen_on"] = source in chosen
            out["infection_negative"].append(r)
        trained_blocks = {tuple(s["instances"]) for s in card.training.get("split", {}).get("train_pseudo", [])}
        for spec in inf_split.get("holdout_covid", [{"case": "chest_ctmd_covid_p001"}]):
            spec = spec if isinstance(spec, dict) else {"case": spec}
            r = covid_slices(data, spec["case"], pair, cache, tuple(spec["instances"]) if "instances" in spec else None)
            r["held_out"] = True
            out["infection_covid"].append(r)
            whole = covid_slices(data, spec["case"], pair, cache)
            whole["held_out"] = not trained_blocks
            out["infection_covid"].append(whole)
    return out


def _pair(versions: dict[str, str]) -> str:
    """'v2' for lungs v2 + infection v2, 'v1+L2' for infection v1 with lungs v2."""
    inf, lungs = versions["infection"], versions["lungs"]
    return inf if inf == lungs else f"{inf}+L{lungs.lstrip('v')}"


def table(res: dict) -> str:
    lines = ["Full chest CTs (held out unless marked; infection rows: infection and lungs of the same "
             "version, or vN+LM = infection vN with lungs vM)",
             f"{'check':<44} {'version':<8} {'figure':>10}  goal / note"]
    for r in res["lungs"]:
        lines.append(f"{'lungs: trachea+main bronchi labelled lung':<44} {r['version']:<8} "
                     f"{r['airway_as_lung_pct']:>9.1f}%  < 5 % ({r['case']}, {r['central_airway_ml']:.0f} mL "
                     "outside the lungs' outline)")
        lines.append(f"{'lungs: all airways found labelled lung':<44} {r['version']:<8} "
                     f"{r['all_airways_as_lung_pct']:>9.1f}%  incl. bronchi inside the lungs ({r['airway_ml']:.0f} mL)")
        lines.append(f"{'lungs: Dice vs silver (airways removed)':<44} {r['version']:<8} {r['dice_vs_silver']:>10.3f}  "
                     f"right {r['dice_right']:.3f}, left {r['dice_left']:.3f}; lung slices z {r['z_range']} "
                     f"(silver {r['z_range_silver']})")
    for r in res["infection_negative"]:
        lines.append(f"{'infection on a chest without COVID-19':<44} {_pair(r['versions']):<8} "
                     f"{r['pct_of_lungs']:>9.2f}%  <= 0.5 % of lungs ({r['case']}"
                     f"{', trained on' if r['trained_on'] else ', chosen on' if r.get('chosen_on') else ', held out'}; "
                     f"{r['ml']:.1f} mL, "
                     f"{r['slices_over_100mm2']} slices > 100 mm2)")
    for r in res["infection_covid"]:
        ls = r["largest_slice"]
        block = f"instances {r['instances'][0]}-{r['instances'][1]}, " + ("held out" if r["held_out"] else
                                                                            "partly trained on")
        lines.append(f"{'infection: COVID-19 slice sensitivity':<44} {_pair(r['versions']):<8} "
                     f"{r['sensitivity']:>10.3f}  >= 0.90 (TP {r['tp']}, FN {r['fn']}; {r['case']} {block})")
        lines.append(f"{'infection: COVID-19 slice specificity':<44} {_pair(r['versions']):<8} "
                     f"{r['specificity']:>10.3f}  >= 0.90 (TN {r['tn']}, FP {r['fp']}); {r['pct_of_lungs']:.1f} % "
                     f"of lungs; largest slice: instance {ls['instance']} ({ls['mm2']:.0f} mm2, "
                     f"{'/'.join(ls['sides']) or '-'} lung; radiologists: {', '.join(ls['radiologists']) or 'clean'})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argument_parser(__doc__)
    ap.add_argument("--versions", default=None, help="comma-separated (default: every bundled version)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--record", action="store_true",
                    help="write each bundled version's figures into its card (validation.holdout_chest)")
    args = ap.parse_args(argv)
    use_source_tree()
    from napari_ctseg.models.registry import list_versions, version_source

    versions = (args.versions.split(",") if args.versions else
                sorted({c.version for t in ("lungs", "infection") for c in list_versions(t)
                        if version_source(c) == "bundled"}))
    t0 = time.perf_counter()
    res = run(Path(args.data), versions)
    print(table(res))
    print(f"[chest checks: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=1))
    if args.record:
        record(res)
    return 0


def record(res: dict) -> None:
    """Put the held-out chest figures into the bundled cards (the weights and their sha256 are untouched)."""
    from napari_ctseg.models.registry import get_card, version_source

    when = time.strftime("%Y-%m-%d")
    for target, keys in (("lungs", ("lungs",)), ("infection", ("infection_negative", "infection_covid"))):
        for v in {r["version"] if "version" in r else r["versions"][target] for k in keys for r in res[k]}:
            card = get_card(target, v)
            if version_source(card) != "bundled":
                continue
            rows = [r for k in keys for r in res[k] if r.get("version", r.get("versions", {}).get(target)) == v]
            card.validation["holdout_chest"] = {
                "measured": when, "by": "benchmarks/chest.py (post-processed, as a user gets them)",
                "goals": ("trachea and main bronchi labelled lung < 5 %" if target == "lungs" else
                          "infection <= 0.5 % of the lungs on chests without COVID-19; slice-level "
                          "sensitivity and specificity >= 0.90 on the COVID-19 chest (> 100 mm2 = infected)"),
                "results": rows}
            card.save()
            print(f"recorded in {card.path / 'card.json'}")


if __name__ == "__main__":
    sys.exit(main())
