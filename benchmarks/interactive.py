"""Click to correct (issue 21): the robot user of the interactive-segmentation literature.

Starts from the automatic mask a user gets (the bundled default model of each target,
``inference.segment`` / ``segment_image8``, post-processing included), then clicks, one click
at a time, where a careful user would, applies each click with ``refine.refine`` (the core of
the napari panel and of ``ctseg refine``: ``napari_ctseg.refine``, ``napari_ctseg.editing.refine``
after the move into subpackages) and scores the mask after every click.

The robot, exactly:

1. **Error regions.** For each label L of the target: the missed voxels (reference L, mask
   background) give *include* regions, the excess voxels (mask L, reference not L) give
   *exclude* regions; each region is a connected component (face connectivity, 6
   neighbours) of one of those sets. A voxel of L labelled as the other lung is excess of
   the other label: an include never takes another label's voxels (``refine.check_click``),
   so it is fixed by an exclude of that label first.
2. **The largest region** by voxel count over every label and both kinds (for lungs: over
   right and left together, so the clicks go where the largest error is, whichever lung;
   each click refines that one label, as a user refines one label at a time).
3. **The click point.** The region's cross-section is measured on every axial, coronal and
   sagittal plane through it, in mm^2 (voxel count times the plane's pixel area from the
   spacing); on the plane of the largest one, the click goes at the voxel deepest inside
   that cross-section: the maximum of the 2D Euclidean distance transform of the
   cross-section, with the plane's two spacings as sampling and everything outside the
   region (the scan's edge too) as outside. Equal depths (a ridge in an elongated region):
   the one nearest (mm) the mean position of the deepest voxels; equal areas: axial first,
   then coronal, then sagittal.
   A one-slice volume (an infection slice) uses its axial plane.
4. **No repeated click.** When that point was clicked before with the same kind and label
   (the click changed nothing there, or its result was undone by a later one), the robot
   takes the next largest region instead; a real user would not click the same spot again.
5. ``refine(hu, mask, label, [click], spacing, results=...)``; the core's seconds per click
   are ``ClickResult.seconds`` (the random walker and the edit, not the robot's search).
   The loop stops early when no error voxel is left (the later Dice stay at 1).

Figures per case: Dice after 0, 1, 3, 5 and 10 clicks, NoC@90 and NoC@95 (the number of
clicks after which Dice first reaches 0.90 / 0.95: 0 when the automatic mask already does,
"-" when it is not reached within the clicks given, capped at ``--clicks``), and the core's
seconds per click (median, max). Dice is on the display grid; for lungs it is the two lungs as
one structure (as ``benchmarks/accuracy.py`` scores a case), with the per-lung Dice beside it.

Cases (never trained on; each case's status under the default version's card is printed:
"held out", "chosen on" = used for model selection, or "TRAINED ON"):

* liver: ``liver_chaos03`` (CHAOS CT set 3), the liver split's validation volume: liver v3
  trained on IRCAD 1 and 7, chose on CHAOS 3 and the 3-slice dcmqi scan. Were CHAOS 3 ever
  trained on, the default version's other untrained validation volumes would be used instead
  (and said so).
* lungs: ``liver_ircad01`` (expert lungs 1 right, 2 left, lung bases only): only IRCAD 1 and 7
  have expert lungs; lungs v2 trained on IRCAD 7 (and on silver lungs of CHAOS 3 and three
  chests), chose on IRCAD 1.
* infection: the 10 expert validation slices of COVID-SemiSeg (``covid_semiseg_train``, the
  infection split's validation list; chosen on, never trained on). An 8-bit slice is a
  (1, y, x) volume; its HU are read from the 8-bit value through the default card's window:
  HU = low + v / 255 x (high - low) (-1100..250 HU for infection v1-v5); spacing (1, 1, 1) mm,
  since the slices carry no pixel size (the originals were ~0.6-0.8 mm, resized and cropped):
  refine's 15..50 mm box is then 15..50 px. The automatic mask is ``segment_image8``'s
  (no lung mask on a lone slice, so no restriction to the lungs).

Goals printed beside: liver CHAOS 3 >= 0.96 after 5 clicks, lungs IRCAD 1 >= 0.985 after 3
clicks, infection slices >= 0.85 (mean) after 3 clicks.

Run: .venv/bin/python benchmarks/interactive.py [--data ../shared/data]
     [--targets liver,lungs,infection] [--clicks 10] [--json]

Run: .venv/bin/python benchmarks/interactive.py ... [--methods classical,model,rerun]: "model" adds,
per organ case and for the infection slices, the rows of the target's newest guidance-aware
version (its card takes clicks), starting from the same default mask; "rerun" the literature's
baseline, the default version's plain network re-run at each click (``refine_model.NetworkRerun``:
the clicks never enter its input; its label is applied in the piece at the click, as the
guidance-aware one's is); "strokes" the robot with scribbles (``robot.robot_strokes``): each step
one stroke along the skeleton of the largest error region's largest cross-section, applied by
``editing.refine_stroke`` (clicks spread along the stroke, the random walker, then the stroke's
own voxels); @k is then the Dice after k strokes, at most 5.

Last run, 2026-12-03 06:05 UTC, on the 2-core development VM (Linux 6.18 x86_64, 2 CPUs, Python
3.11.7), quiet, 90 s in all; liver v3, lungs v3, infection v5 make the masks, all "chosen on"
(model selection), none trained on; "v4 net" is the guidance-aware candidate (liver v4, lungs v4),
"re-run" the default version's plain network re-run at each click:

  target     case                     model clicks by status         @0     @1     @3     @5    @10 NoC90 NoC95 s/click med   max  goal
  -------------------------------------------------------------------------------------------------------------------------------------
  liver      liver_chaos03            v3    classical chosen on   0.942  0.951  0.954  0.956  0.960     0     1        0.29  0.36  >= 0.96 after 5: NOT met (0.956)
  liver      liver_chaos03            v3    v4 net    chosen on   0.942  0.944  0.946  0.946  0.947     0     -        0.73  0.82  >= 0.96 after 5: NOT met (0.946)
  liver      liver_chaos03            v3    v3 re-run chosen on   0.942  0.942  0.942  0.942  0.942     0     -        0.67  0.73  >= 0.96 after 5: NOT met (0.942)
  lungs      liver_ircad01            v3    classical chosen on   0.986  0.986  0.987  0.987  0.987     0     0        0.19  0.27  >= 0.985 after 3: met (0.987)
               right_lung                                         0.986  0.987  0.987  0.987  0.987
               left_lung                                          0.985  0.985  0.986  0.986  0.986
  lungs      liver_ircad01            v3    v4 net    chosen on   0.986  0.986  0.986  0.987  0.987     0     0        0.79  0.95  >= 0.985 after 3: met (0.986)
               right_lung                                         0.986  0.986  0.987  0.987  0.987
               left_lung                                          0.985  0.985  0.985  0.987  0.987
  lungs      liver_ircad01            v3    v3 re-run chosen on   0.986  0.986  0.986  0.986  0.986     0     0        0.77  0.81  >= 0.985 after 3: met (0.986)
               right_lung                                         0.986  0.986  0.986  0.987  0.987
               left_lung                                          0.985  0.985  0.985  0.985  0.985
  infection  covid_semiseg_train/1    v5    classical chosen on   0.774  0.790  0.799  0.824  0.834     -     -        0.01  0.01
  infection  covid_semiseg_train/4    v5    classical chosen on   0.664  0.673  0.730  0.744  0.770     -     -        0.00  0.01
  infection  covid_semiseg_train/12   v5    classical chosen on   0.770  0.785  0.795  0.802  0.798     -     -        0.01  0.01
  infection  covid_semiseg_train/28   v5    classical chosen on   0.824  0.835  0.841  0.847  0.848     -     -        0.00  0.01
  infection  covid_semiseg_train/30   v5    classical chosen on   0.696  0.710  0.734  0.747  0.778     -     -        0.01  0.01
  infection  covid_semiseg_train/46   v5    classical chosen on   0.749  0.768  0.787  0.807  0.826     -     -        0.00  0.01
  infection  covid_semiseg_train/47   v5    classical chosen on   0.798  0.805  0.821  0.831  0.849     -     -        0.00  0.01
  infection  covid_semiseg_train/50   v5    classical chosen on   0.629  0.637  0.614  0.620  0.647     -     -        0.00  0.01
  infection  covid_semiseg_train/55   v5    classical chosen on   0.783  0.797  0.803  0.811  0.821     -     -        0.01  0.01
  infection  covid_semiseg_train/67   v5    classical chosen on   0.858  0.889  0.908  0.915  0.927     2     -        0.00  0.01
  infection  MEAN (10 slices)         v5    classical             0.754  0.769  0.783  0.795  0.810  1/10  0/10        0.00  0.01  >= 0.85 (mean) after 3: NOT met (0.783)
  infection  covid_semiseg_train/1    v5    v5 re-run chosen on   0.774  0.774  0.774  0.774  0.775     -     -        0.03  0.06
  infection  covid_semiseg_train/4    v5    v5 re-run chosen on   0.664  0.665  0.666  0.667  0.670     -     -        0.03  0.05
  infection  covid_semiseg_train/12   v5    v5 re-run chosen on   0.770  0.770  0.771  0.772  0.774     -     -        0.04  0.04
  infection  covid_semiseg_train/28   v5    v5 re-run chosen on   0.824  0.825  0.826  0.828  0.831     -     -        0.03  0.04
  infection  covid_semiseg_train/30   v5    v5 re-run chosen on   0.696  0.696  0.697  0.697  0.698     -     -        0.04  0.04
  infection  covid_semiseg_train/46   v5    v5 re-run chosen on   0.749  0.751  0.756  0.760  0.771     -     -        0.04  0.04
  infection  covid_semiseg_train/47   v5    v5 re-run chosen on   0.798  0.799  0.799  0.800  0.801     -     -        0.04  0.04
  infection  covid_semiseg_train/50   v5    v5 re-run chosen on   0.629  0.630  0.631  0.632  0.634     -     -        0.03  0.04
  infection  covid_semiseg_train/55   v5    v5 re-run chosen on   0.783  0.783  0.784  0.784  0.785     -     -        0.03  0.04
  infection  covid_semiseg_train/67   v5    v5 re-run chosen on   0.858  0.858  0.859  0.860  0.862     -     -        0.04  0.04
  infection  MEAN (10 slices)         v5    v5 re-run             0.754  0.755  0.756  0.757  0.760  0/10  0/10        0.03  0.06  >= 0.85 (mean) after 3: NOT met (0.756)

Goals: liver 0.956 after 5 clicks with the random walker, 0.946 with the v4 network (goal >= 0.96:
not met); lungs 0.987 after 3 (>= 0.985: met); infection mean 0.783 after 3 (>= 0.85: not met).
The re-run moves Dice by the clicks' own spheres only. What the clicks met: the liver's largest
error is a thin shortfall all round (one ~100k-voxel region, 6-connected) plus the dome, 1-3 mm,
finer than the networks' 128-pixel grid; the lungs' errors are a 1-2 voxel rim of partial-volume
lung that the expert mask includes; on infection slices some excludes remove true infection too.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _setup import REPO, argument_parser, data_folder, use_source_tree

TARGETS = ("liver", "lungs", "infection")
REPORT_AT = (0, 1, 3, 5, 10)
NOC_LEVELS = (0.90, 0.95)
# (clicks, Dice) per target; for infection the mean over its slices
GOALS = {"liver": (5, 0.96), "lungs": (3, 0.985), "infection": (3, 0.85)}
PREFERRED = {"liver": ["liver_chaos03"], "lungs": ["liver_ircad01"]}
SLICE_SPACING = (1.0, 1.0, 1.0)


# --- the robot user: napari_ctseg.evaluation.robot (the training's validation uses it too) ---------
from napari_ctseg.evaluation.robot import (  # noqa: E402
    Region, RobotRun, deepest_point, error_regions, next_click, robot_strokes, robot_user, score,
)


# --- cases ------------------------------------------------------------------------------------------
def bundled_registry():
    """The bundled weights only (the user's own choice of active version does not count)."""
    from napari_ctseg.models.registry import ModelRegistry, bundled_weights_dir

    return ModelRegistry([bundled_weights_dir()])


def _split(card) -> dict:
    """The card's training split (splits.json's where the card has none)."""
    split = dict(card.training.get("split", {}) or {})
    if not split.get("train"):
        splits = json.loads((REPO / "src/napari_ctseg/models/splits.json").read_text())
        split = {**splits.get(card.target, {}), **split}
    return split


def trained_cases(card) -> list[str]:
    """Every case ``card``'s version trained on: expert, silver-labelled, host and pseudo-labelled."""
    split = _split(card)
    names = [*split.get("train", []), *split.get("train_silver", []), *split.get("train_silver_slices", []),
             *split.get("train_hosts", []),
             *(p["case"] for p in split.get("train_pseudo", []) if isinstance(p, dict))]
    return list(dict.fromkeys(names))


def case_status(card, case: str) -> str:
    """'TRAINED ON', 'chosen on' (model selection: validation, a validation negative or the
    operating point's cases) or 'held out' for ``case`` under ``card``."""
    if case in trained_cases(card):
        return "TRAINED ON"
    split = _split(card)
    chosen = set(split.get("validation", [])) | set(split.get("validation_negative", []))
    chosen |= set((card.extra.get("decision") or {}).get("chosen_on", []))
    return "chosen on" if case in chosen else "held out"


def organ_cases(target: str, card, data: Path) -> tuple[list[str], list[str]]:
    """The cases to use and notes on the choice."""
    notes, use = [], []
    for case in PREFERRED[target]:
        if case_status(card, case) == "TRAINED ON":
            notes.append(f"{case}: {target} {card.version} trained on it; not used")
        else:
            use.append(case)
    if not use:
        from napari_ctseg.training import MASK_FILES

        split = card.training.get("split", {}) or {}
        use = [c for c in split.get("validation", []) if case_status(card, c) != "TRAINED ON"
               and (data / c / MASK_FILES[target]).is_file()]
        notes.append(f"using instead: {', '.join(use) or 'none'}")
    return use, notes


def guided_card(registry, target: str):
    """The target's newest guidance-aware version (its card takes clicks), or None."""
    found = [c for c in registry.list_versions(target) if c.takes_clicks]
    return found[-1] if found else None


def run_organ(target: str, case: str, data: Path, registry, n_clicks: int, log,
              methods=("classical",)) -> list[dict]:
    from napari_ctseg.io import read_scan
    from napari_ctseg.training import MASK_FILES, read_mask

    from napari_ctseg.segmentation import inference
    ModelSet, segment = inference.ModelSet, inference.segment

    card = registry.get_card(target)
    vol = read_scan(data / case / "ct.nii.gz")
    reference = read_mask(data / case / MASK_FILES[target], vol, target)
    t0 = time.perf_counter()
    res = segment(vol, [target], "cpu", models=ModelSet({target: card.version}, registry))
    seg_s = time.perf_counter() - t0
    mask = np.ascontiguousarray(res.masks[target])
    labels = sorted(card.labels.values())
    hu = np.asarray(vol.hu)
    log(f"[{target} {case}: segmented in {seg_s:.0f} s, Dice {score(mask, reference, labels)['dice']:.3f}]")
    rows = []
    for method in methods:
        refiner, used = None, "classical"
        if method == "strokes":
            run = robot_strokes(hu, mask, reference, labels, vol.spacing, min(n_clicks, 5),
                                on_stroke=lambda r: log(f"  stroke {r['n']} {r['kind']} label {r['label']} "
                                                        f"({r['stroke_voxels']} voxels, {r['clicks']} clicks; "
                                                        f"region {r['region_voxels']}): +{r['added']} "
                                                        f"-{r['removed']}, Dice {r['dice']:.4f}, "
                                                        f"{r['seconds']:.2f} s"))
            rows.append(_row(target, case, card, run, n_clicks, shape=list(hu.shape), spacing=list(vol.spacing),
                             segment_seconds=seg_s, label_names={v: k for k, v in card.labels.items()},
                             method="strokes"))
            continue
        if method == "rerun":
            from napari_ctseg.editing.refine_model import NetworkRerun

            model, _ = registry.load_model(target, card.version)
            refiner, used = NetworkRerun(model, card), f"{card.version} re-run"
        elif method == "model":
            guided = guided_card(registry, target)
            if guided is None:
                log(f"[{target}: no guidance-aware version; no model row]")
                continue
            from napari_ctseg.editing.refine_model import GuidedRefiner

            refiner, used = GuidedRefiner.load(target, guided.version, registry), f"{guided.version} net"
        log(f"[{target} {case}: clicks by {used}]")
        run = robot_user(hu, mask, reference, labels, vol.spacing, n_clicks, refiner=refiner,
                         on_click=lambda r: log(f"  click {r['n']} {r['kind']} label {r['label']} at {r['zyx']} "
                                                f"({r['region_voxels']} voxels): +{r['added']} -{r['removed']}, "
                                                f"Dice {r['dice']:.4f}, {r['seconds']:.2f} s"))
        rows.append(_row(target, case, card, run, n_clicks, shape=list(hu.shape), spacing=list(vol.spacing),
                         segment_seconds=seg_s, label_names={v: k for k, v in card.labels.items()}, method=used,
                         **({"status_clicks": case_status(refiner.card, case)} if refiner else {})))
    return rows


def run_slices(data: Path, registry, n_clicks: int, log, methods=("classical",)) -> list[dict]:
    from napari_ctseg.training import load_case

    from napari_ctseg.segmentation import inference
    ModelSet, segment_image8 = inference.ModelSet, inference.segment_image8

    card = registry.get_card("infection")
    lo, hi = (float(v) for v in card.preprocessing["window"])
    split = card.training.get("split", {}) or {}
    names = list(split.get("validation") or
                 json.loads((REPO / "src/napari_ctseg/models/splits.json").read_text())["infection"]["validation"])
    models = ModelSet({"infection": card.version}, registry)
    refiners = []
    for method in methods:
        if method in ("classical", "strokes"):
            refiners.append((method, None, method))
            continue
        if method == "rerun":
            from napari_ctseg.editing.refine_model import NetworkRerun

            model, _ = registry.load_model("infection", card.version)
            refiner = NetworkRerun(model, card)
            refiner.whole_image = True
            refiners.append((method, refiner, f"{card.version} re-run"))
            continue
        guided = guided_card(registry, "infection")
        if guided is None:
            log("[infection: no guidance-aware version; no model rows]")
            continue
        from napari_ctseg.editing.refine_model import GuidedRefiner

        refiner = GuidedRefiner.load("infection", guided.version, registry)
        refiner.whole_image = True  # an 8-bit slice export is seen whole, as segment_image8 sees it
        if tuple(map(float, refiner.prep.window)) != tuple(map(float, card.preprocessing["window"])):
            log(f"[infection {guided.version}: another window than {card.version}'s; no model rows]")
            continue
        refiners.append((method, refiner, f"{guided.version} net"))
    rows = []
    for name in names:
        case = load_case("infection", data, name)
        image = np.asarray(case.image8)
        t0 = time.perf_counter()
        res = segment_image8(image, ["infection"], "cpu", models=models, name=name)
        seg_s = time.perf_counter() - t0
        mask = (np.asarray(res.masks["infection"]) > 0).astype(np.uint8)[None]
        reference = (np.asarray(case.labels) > 0).astype(np.uint8)[None]
        hu = (lo + image.astype(np.float32) / 255.0 * (hi - lo))[None]
        for method, refiner, used in refiners:
            if method == "strokes":
                run = robot_strokes(hu, mask, reference, [1], SLICE_SPACING, min(n_clicks, 5))
            else:
                run = robot_user(hu, mask, reference, [1], SLICE_SPACING, n_clicks, refiner=refiner)
            log(f"[infection {name} ({used}): Dice {' -> '.join(f'{d:.3f}' for d in run.dice)}]")
            rows.append(_row("infection", name, card, run, n_clicks, shape=list(hu.shape),
                             spacing=list(SLICE_SPACING), segment_seconds=seg_s, hu_window=[lo, hi], method=used,
                             **({"status_clicks": case_status(refiner.card, name)} if refiner else {})))
    return rows


def _row(target, case, card, run: RobotRun, n_clicks: int, **extra) -> dict:
    at = [k for k in REPORT_AT if k <= n_clicks]
    row = {"target": target, "case": case, "version": card.version, "status": case_status(card, case),
           "dice_after": {k: run.dice_after(k) for k in at},
           "noc": {f"{int(round(lv * 100))}": run.noc(lv, n_clicks) for lv in NOC_LEVELS},
           "seconds_median": statistics.median(run.seconds) if run.seconds else None,
           "seconds_max": max(run.seconds) if run.seconds else None,
           "robot_seconds": run.robot_seconds, "dice": run.dice, "clicks": run.clicks, **extra}
    if any(run.per_label):
        names = extra.get("label_names", {})
        last = len(run.per_label) - 1
        row["per_label_after"] = {k: {names.get(v, str(v)): d for v, d in run.per_label[min(k, last)].items()}
                                  for k in at}
    return row


# --- printing ---------------------------------------------------------------------------------------
def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def machine() -> str:
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def table(rows: list[dict], n_clicks: int) -> str:
    at = [k for k in REPORT_AT if k <= n_clicks]
    head = (f"{'target':<10} {'case':<24} {'model':<5} {'clicks by':<9} {'status':<10} "
            + " ".join(f"{'@' + str(k):>6}" for k in at)
            + f" {'NoC90':>5} {'NoC95':>5} {'s/click med':>11} {'max':>5}  goal")
    lines = [head, "-" * len(head)]
    groups = []
    for target in TARGETS:
        methods = list(dict.fromkeys(r.get("method", "classical") for r in rows if r["target"] == target))
        groups += [(target, [r for r in rows if r["target"] == target and r.get("method", "classical") == m])
                   for m in methods]
    for target, mine in groups:
        if not mine:
            continue
        k_goal, goal = GOALS[target]
        for r in mine:
            noc = [r["noc"][str(int(round(lv * 100)))] for lv in NOC_LEVELS]
            note = ""
            if target != "infection" and k_goal <= n_clicks:
                d = r["dice_after"][k_goal]
                note = f">= {goal} after {k_goal}: {'met' if d >= goal else 'NOT met'} ({d:.3f})"
            lines.append(f"{target:<10} {r['case']:<24} {r['version']:<5} {r.get('method', 'classical'):<9} "
                         f"{r['status']:<10} "
                         + " ".join(f"{r['dice_after'][k]:>6.3f}" for k in at)
                         + f" {_f(noc[0], 0) if noc[0] is not None else '-':>5} "
                         f"{_f(noc[1], 0) if noc[1] is not None else '-':>5} "
                         f"{_f(r['seconds_median'], 2):>11} {_f(r['seconds_max'], 2):>5}  {note}".rstrip())
            for name, _ in (r.get("per_label_after", {}).get(0, {}) or {}).items():
                lines.append(f"{'':<10} {'  ' + name:<24} {'':<5} {'':<9} {'':<10} "
                             + " ".join(f"{r['per_label_after'][k][name]:>6.3f}" for k in at))
        if target == "infection" and len(mine) > 1:
            means = {k: statistics.fmean(r["dice_after"][k] for r in mine) for k in at}
            reached = [sum(r["noc"][str(int(round(lv * 100)))] is not None for r in mine) for lv in NOC_LEVELS]
            secs = [c["seconds"] for r in mine for c in r["clicks"] if np.isfinite(c["seconds"])]
            note = ""
            if k_goal <= n_clicks:
                note = (f">= {goal} (mean) after {k_goal}: {'met' if means[k_goal] >= goal else 'NOT met'} "
                        f"({means[k_goal]:.3f})")
            lines.append(f"{target:<10} {'MEAN (' + str(len(mine)) + ' slices)':<24} {mine[0]['version']:<5} "
                         f"{mine[0].get('method', 'classical'):<9} {'':<10} " + " ".join(f"{means[k]:>6.3f}" for k in at)
                         + f" {str(reached[0]) + '/' + str(len(mine)):>5} {str(reached[1]) + '/' + str(len(mine)):>5} "
                         f"{_f(statistics.median(secs) if secs else None, 2):>11} "
                         f"{_f(max(secs) if secs else None, 2):>5}  {note}".rstrip())
    lines.append(f"NoC: clicks until Dice first reaches 0.90 / 0.95 (0: the automatic mask does; '-': not within "
                 f"{n_clicks}; for the mean row, how many slices reach it). s/click: the core's (refine), seconds.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argument_parser(__doc__, data_help="the shared data folder")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--clicks", type=int, default=10, help="clicks per case (default 10)")
    parser.add_argument("--methods", default="classical,model,rerun",
                        help="classical (the random walker), model (the target's newest guidance-aware "
                             "version, where there is one) and/or rerun (the default version's plain network "
                             "re-run at each click, the literature's baseline), strokes (scribbles instead of "
                             "clicks: up to 5 strokes, the classical method); default classical,model,rerun")
    parser.add_argument("--json", action="store_true", help="also print every figure and click as JSON")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())

    use_source_tree()
    data = data_folder(args.data, "interactive")
    if data is None:
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or args.clicks < 0 or not methods or set(methods) - {"classical", "model", "rerun", "strokes"}:
        print(f"interactive: targets are {', '.join(TARGETS)}; clicks >= 0; methods classical, model, rerun, "
              "strokes",
              file=sys.stderr)
        return 2

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    registry = bundled_registry()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    rows, notes = [], []
    for target in targets:
        card = registry.get_card(target)
        if target == "infection":
            rows += run_slices(data, registry, args.clicks, log, methods)
            continue
        cases, why = organ_cases(target, card, data)
        notes += [f"{target}: {n}" for n in why]
        for case in cases:
            rows += run_organ(target, case, data, registry, args.clicks, log, methods)
    wall = time.perf_counter() - t0

    print("Click to correct: the robot user (deepest point of the largest error region), bundled default models")
    print(f"machine: {machine()}; date {started:%Y-%m-%d %H:%M} UTC; {wall:.0f} s in all")
    for target in targets:
        card = registry.get_card(target)
        mine = [r for r in rows if r["target"] == target]
        status = {}
        for r in mine:
            if r["case"] not in status.setdefault(r["status"], []):  # one case, several methods: once
                status[r["status"]].append(r["case"])
        trained = trained_cases(card)
        if target == "infection":
            slices = sum(t.startswith("covid_semiseg_train/") for t in trained)
            said = f"trained on {slices} covid_semiseg_train slices and {len(trained) - slices} other sources"
        else:
            said = f"trained on {', '.join(trained)}"
        print(f"{target} {card.version} ({said}): "
              + "; ".join(f"{s} ({'model selection, never trained on' if s == 'chosen on' else s.lower()}): "
                          f"{', '.join(c)}" for s, c in status.items())
              + ("" if target != "infection" or not mine else f"; HU = {mine[0]['hu_window'][0]:g} + v/255 x "
                 f"{mine[0]['hu_window'][1] - mine[0]['hu_window'][0]:g}, spacing 1 x 1 x 1 mm"))
    for n in notes:
        print(n)
    print()
    print(table(rows, args.clicks))
    if args.json:
        print(json.dumps({"machine": machine(), "date": started.isoformat(timespec="seconds"),
                          "seconds": wall, "clicks": args.clicks, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
