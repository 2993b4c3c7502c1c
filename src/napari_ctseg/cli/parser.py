"""``ctseg``: the same jobs as the plugin, headless."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from napari_ctseg.errors import CTSegError


def _model_versions(items) -> dict[str, str]:
    """``--model TARGET=VERSION`` options as {target: version}."""
    versions = {}
    for item in items or []:
        target, _, version = item.partition("=")
        if not version:
            raise CTSegError(f"--model {item!r}: write TARGET=VERSION, e.g. lungs=v1")
        versions[target.strip()] = version.strip()
    return versions


def _registry(args):
    """The model registry of this command: ``--weights`` folders first, then the default roots."""
    from napari_ctseg.models.registry import ModelRegistry

    return ModelRegistry.default(extra=getattr(args, "weights", None) or ())


def _cmd_info(args) -> int:
    from napari_ctseg.io import read_scan

    for src in args.scans:
        volume = read_scan(src)
        geo = volume.geometry
        lo, hi = volume.hu_range()
        info = {
            "scan": str(src),
            "name": volume.name,
            "kind": geo.source_kind,
            "source_shape": list(geo.source_shape),
            "source_orientation": "".join(geo.source_axcodes),
            "display_shape_zyx": list(volume.shape),
            "display_orientation": "".join(volume.geometry.display_axcodes_str()),
            "spacing_zyx_mm": [round(s, 4) for s in volume.spacing],
            "hu_range": [lo, hi],
            "dtype": str(volume.hu.dtype),
            "affine": np.round(geo.affine, 4).tolist(),
            "warnings": volume.warnings,
        }
        if volume.series is not None:
            info["series"] = volume.series.label()
            info["other_series"] = [s.label() for s in volume.other_series]
        if args.json:
            print(json.dumps(info))
            continue
        print(f"{info['scan']}")
        print(f"  kind          {info['kind']}")
        print(f"  shape         {'x'.join(map(str, geo.source_shape))} (source i,j,k; "
              f"orientation {info['source_orientation']})")
        print(f"  display       {'x'.join(map(str, volume.shape))} (z,y,x; orientation "
              f"{info['display_orientation']})")
        print(f"  spacing       {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm (z,y,x)")
        print(f"  HU range      {lo:g} .. {hi:g} ({info['dtype']})")
        if volume.series is not None:
            print(f"  series        {info['series']}")
            for other in info["other_series"]:
                print(f"  other series  {other}")
        for w in volume.warnings:
            print(f"  warning       {w}")
    return 0


def _cmd_train(args) -> int:
    from napari_ctseg.training import config_from_file, split_from_file, train

    config = config_from_file(args.config) if args.config else None
    split = split_from_file(args.split) if args.split else None
    reports = train(args.target, args.data, args.out, epochs=args.epochs, seed=args.seed,
                    device=args.device, version=args.version, threads=args.threads,
                    overwrite=args.overwrite, config=config, split=split)
    card = None
    for report in reports:
        if report.kind == "start":
            print(f"ctseg train {args.target}: {report.message}", flush=True)
        elif report.kind == "epoch":
            cases = ""
            if report.val_cases:
                cases = " (" + ", ".join(f"{k} {v:.4f}" for k, v in report.val_cases.items()) + ")"
            print(f"[{report.elapsed_s:7.1f} s] {report.message}{cases}; best {report.best_dice:.4f} "
                  f"at epoch {report.best_epoch}", flush=True)
        elif report.kind == "done":
            card = report.card
            print(report.message, flush=True)
    if card is not None and args.json:
        print(card.to_json(), end="")
    return 0


def _scan_sources(sources) -> list:
    """Expand folders of NIfTI files (or of DICOM series folders) into scans, in order."""
    from pathlib import Path

    from napari_ctseg.io.dicom import is_dicom_file
    from napari_ctseg.io.nifti import is_nifti_path

    scans = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            niftis = sorted(q for q in p.iterdir() if q.is_file() and is_nifti_path(q))
            has_dicom = any(q.is_file() and is_dicom_file(q) for q in p.iterdir())
            subdirs = sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
            if niftis:
                scans.extend(niftis)
            elif not has_dicom and subdirs:
                scans.extend(subdirs)
            else:
                scans.append(p)
        else:
            scans.append(p)
    return scans


def _progress_printer(name: str):
    if not sys.stderr.isatty():
        return None

    def show(report):
        width = 30
        filled = int(width * report.done / max(report.total, 1))
        sys.stderr.write(f"\r{name}: [{'#' * filled}{'.' * (width - filled)}] {report.message:40.40}")
        sys.stderr.flush()
        if report.done >= report.total:
            sys.stderr.write("\n")

    return show


def _cmd_segment(args) -> int:
    from pathlib import Path

    from napari_ctseg.segmentation.inference import ModelSet, parse_targets, segment
    from napari_ctseg.io import read_scan, write_mask
    from napari_ctseg.io.dicom_objects import check_seg_source, write_seg
    from napari_ctseg.io.nifti import scan_name

    registry = _registry(args)
    targets = parse_targets(args.targets, registry)
    versions = _model_versions(args.model)
    models = ModelSet(versions, registry)
    scans = _scan_sources(args.scans)
    out_root = Path(args.out)
    failures = 0
    for scan in scans:
        try:
            volume = read_scan(scan)
            if args.format == "seg":
                check_seg_source(volume, Path(scan).name)  # before segmenting, not after
            for w in volume.warnings:
                print(f"ctseg: {scan}: warning: {w}", file=sys.stderr)
            result = segment(volume, targets, args.device, models=models,
                             progress=_progress_printer(Path(scan).name))
            out_dir = out_root if len(scans) == 1 else out_root / scan_name(scan)
            written = {}
            for t, m in result.masks.items():
                if args.format == "seg":  # the card's label names; the model and its version as the algorithm
                    labels = {int(v): k for k, v in result.cards[t].labels.items()} if t in result.cards else {1: t}
                    algorithm = f"napari-ctseg {t} {result.versions.get(t, '')}".strip()
                    written[t] = str(write_seg(m, labels, volume, out_dir / f"{t}.dcm", algorithm=algorithm))
                else:
                    written[t] = str(write_mask(out_dir / f"{t}.nii.gz", m, volume.geometry))
        except CTSegError as exc:
            if len(scans) == 1:
                raise
            print(f"ctseg: {scan}: {exc}", file=sys.stderr)
            failures += 1
            continue
        if args.json:
            print(json.dumps({"scan": str(scan), "masks": written, **result.to_dict()}))
        else:
            print(f"{scan} ({result.device}, {sum(result.seconds.values()):.1f} s)")
            for line in result.report().splitlines():
                print(f"  {line}")
            for target, path in written.items():
                print(f"  wrote {path}")
            for note in result.notes:
                print(f"  note: {note}")
    return 1 if failures else 0


def _cmd_evaluate(args) -> int:
    from napari_ctseg.evaluation.evaluate import EvaluationError, evaluate, load_split

    if args.cases and args.split:
        raise EvaluationError("give --cases or --split, not both")
    cases = args.cases
    if args.split:
        cases = load_split(args.target, args.split)
    report = evaluate(args.target, args.data, args.predictions_out, version=args.model,
                      device=args.device, cases=cases, progress=_progress_printer(f"evaluate {args.target}"),
                      registry=_registry(args))
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    print(f"predictions written to {report.predictions_out}")
    return 0


def _parse_slices(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise CTSegError(f"--changed-slices {text!r}: write display z indices like 3,5,10-20") from None
    return out


def _cmd_finetune(args) -> int:
    import os

    from napari_ctseg.training.fine_tuning import CorrectionCase, corrections_from_store, fine_tune
    from napari_ctseg.segmentation.inference import choose_device

    registry = _registry(args)
    registry.check_target(args.target)
    if args.from_store:
        if args.scans or args.masks:
            raise CTSegError("give --scans/--masks or --from-store, not both")
        corrections = corrections_from_store(args.target)
        if not corrections:
            raise CTSegError(f"the corrections store holds no {args.target} corrections yet "
                             "(Mask tools > Save corrected mask records them)")
    else:
        if not args.scans or not args.masks:
            raise CTSegError("give --scans and --masks (one corrected mask per scan), or --from-store")
        if len(args.scans) != len(args.masks):
            raise CTSegError(f"{len(args.scans)} scan(s) but {len(args.masks)} mask(s): give one "
                             "corrected mask per scan, in the same order")
        changed = [_parse_slices(c) for c in args.changed_slices] if args.changed_slices else None
        if changed is not None and len(changed) != len(args.scans):
            raise CTSegError("give one --changed-slices per scan, or none")
        corrections = [CorrectionCase(str(s), str(m), None if changed is None else changed[i])
                       for i, (s, m) in enumerate(zip(args.scans, args.masks))]
    device, note = choose_device(args.device)
    if note:
        print(f"ctseg: {note}", file=sys.stderr)
    config = {"epochs": args.epochs}
    for key in ("steps_per_epoch", "lr", "batch_size"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    data = args.data or os.environ.get("CTSEG_DATA_DIR") or None
    card = None
    for report in fine_tune(args.target, corrections, base_version=args.base, data_dir=data,
                            config=config, device=str(device), seed=args.seed, threads=args.threads,
                            version=args.version, promote=not args.no_promote,
                            roots=registry, out_root=registry.user_dir):
        if report.kind in ("prepare", "start"):
            print(f"[{report.elapsed_s:7.1f} s] {report.message}", flush=True)
        elif report.kind == "epoch":
            print(f"[{report.elapsed_s:7.1f} s] {report.message}", flush=True)
        elif report.kind == "done":
            card = report.card
    if card is None:  # pragma: no cover - the generator always ends with "done"
        return 1
    ft = card.extra["fine_tune"]
    if args.json:
        print(json.dumps({"target": card.target, "version": card.version, "path": str(card.path),
                          "promoted": ft["promoted"], "reason": ft["reason"], "before": ft["before"],
                          "after": ft["after"]}))
        return 0
    print(f"new version: {card.target} {card.version} ({card.path})")
    b, a = ft["before"], ft["after"]
    print(f"  held-aside corrections Dice  {_f(b['corrections'])} -> {_f(a['corrections'])}")
    print(f"  validation Dice              {_f(b['validation'])} -> {_f(a['validation'])}  "
          f"({card.validation.get('what', '')})")
    for name, v in a["validation_cases"].items():
        print(f"    {name}: {_f(b['validation_cases'].get(name))} -> {_f(v)}")
    print(f"  {'promoted: now the active version' if ft['promoted'] else 'kept as a candidate'} "
          f"({ft['reason'].split(';')[0]})")
    if not ft["promoted"]:
        print(f"  to make it the active version: ctseg models use {card.target} {card.version}")
    return 0


def _f(v) -> str:
    return "  n/a " if v is None else f"{v:.4f}"


def _derive(registry, args) -> int:
    from pathlib import Path

    from napari_ctseg.models.registry import derive_version

    if not args.out or not args.definition:
        raise CTSegError("ctseg models derive T V needs --out FOLDER and --definition FILE.json")
    try:
        definition = json.loads(Path(args.definition).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CTSegError(f"--definition {args.definition}: not a readable JSON file ({exc})") from None
    if not isinstance(definition, dict):
        raise CTSegError(f"--definition {args.definition}: must hold a JSON object")
    notes = definition.pop("notes", None)
    card = derive_version(registry.get_card(args.target, args.version), args.out, definition, notes)
    changed = ", ".join(card.extra["derived_from"]["changed"]) or "nothing"
    print(f"wrote {args.out}: {card.target} {card.version}, the network of {args.version} with a new "
          f"definition ({changed} changed)")
    return 0


def _cmd_models(args) -> int:
    registry = _registry(args)
    if args.target is not None:
        registry.check_target(args.target)
    if args.action == "list":
        targets = [args.target] if args.target else registry.targets()
        rows = []
        for target in targets:
            cards = registry.list_versions(target)
            active = registry.active_version(target) if cards else None
            for c in cards:
                dice = c.validation.get("mean_dice") if isinstance(c.validation, dict) else None
                rows.append({"target": target, "version": c.version, "source": registry.version_source(c),
                             "status": c.extra.get("status", ""), "created": c.created,
                             "validation_dice": dice, "active": c.version == active,
                             "derived_from": (c.extra.get("derived_from") or {}).get("version"),
                             "path": str(c.path)})
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        for r in rows:
            dice = "   n/a" if r["validation_dice"] is None else f"{r['validation_dice']:.4f}"
            status = f" ({r['status']})" if r["status"] in ("candidate",) else ""
            if r["derived_from"]:
                status += f" ({r['derived_from']}'s network, new definition)"
            print(f"{'*' if r['active'] else ' '} {r['target']:<9} {r['version']:<14} {r['source']:<10} "
                  f"{(r['created'] or 'undated')[:10]:<10}  validation Dice {dice}{status}")
        print("(* active)")
        return 0
    if args.target is None or args.version is None:
        raise CTSegError(f"ctseg models {args.action} needs TARGET and VERSION, e.g. lungs v1")
    if args.action == "derive":
        return _derive(registry, args)
    if args.action == "use":
        now = registry.set_active_version(args.target, args.version)
        print(f"{args.target}: active version is now {now}")
        return 0
    now = registry.remove_version(args.target, args.version)
    print(f"removed {args.target} {args.version}; active version: {now or 'none'}")
    return 0


def _read_clicks(path, geometry) -> list:
    """CLICKS.json: a list of {"ijk": [i, j, k], "label": "include" | "exclude"} in the scan's
    own voxel indices, as display-grid ``Click``s (in order)."""
    from pathlib import Path

    from napari_ctseg.errors import RefineError
    from napari_ctseg.editing.refine import Click

    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RefineError(f"--clicks {path}: cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RefineError(f"--clicks {path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise RefineError(f"--clicks {path}: must hold a JSON list of "
                          '{"ijk": [i, j, k], "label": "include" | "exclude"}')
    if not entries:
        raise RefineError(f"--clicks {path}: the list is empty; give at least one include or exclude click")
    shape = tuple(geometry.source_shape)
    clicks = []
    for n, entry in enumerate(entries, 1):
        where = f"--clicks {path}: click {n}"
        if not isinstance(entry, dict) or set(entry) != {"ijk", "label"}:
            raise RefineError(f'{where}: write {{"ijk": [i, j, k], "label": "include" | "exclude"}}, '
                              f"got {json.dumps(entry)[:80]}")
        ijk = entry["ijk"]
        if not isinstance(ijk, list) or len(ijk) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in ijk):
            raise RefineError(f'{where}: "ijk" must be three whole voxel indices [i, j, k], got {json.dumps(ijk)[:80]}')
        kind = entry["label"]
        if kind not in ("include", "exclude"):
            raise RefineError(f'{where}: "label" must be "include" or "exclude", got {json.dumps(kind)[:40]}')
        if any(not 0 <= v < s for v, s in zip(ijk, shape)):
            raise RefineError(f"{where} at ijk {ijk} is outside the scan (source shape "
                              f"{'x'.join(map(str, shape))}, indices from 0)")
        clicks.append((ijk, Click(geometry.source_to_display_index(ijk), include=kind == "include")))
    return clicks


def _cmd_refine(args) -> int:
    from pathlib import Path

    from napari_ctseg.errors import RefineError
    from napari_ctseg.evaluation.evaluate import read_reference_volume
    from napari_ctseg.io import read_scan, write_mask
    from napari_ctseg.editing.refine import refine

    volume = read_scan(args.scan)
    for w in volume.warnings:
        print(f"ctseg: {args.scan}: warning: {w}", file=sys.stderr)
    clicks = _read_clicks(args.clicks, volume.geometry)
    card_labels = dict(_registry(args).get_card(args.target).labels)
    label = args.label
    if label is None:
        label = next(iter(card_labels.values())) if len(card_labels) == 1 else 1
    if label <= 0:
        raise RefineError(f"--label {label}: give the label value to refine, 1 or more")
    allowed = {**card_labels, **({f"label {label}": label} if label not in card_labels.values() else {})}
    source = read_reference_volume(Path(args.mask), volume.geometry, args.target, allowed)
    present = bool(np.any(source == label))
    for n, (ijk, click) in enumerate(clicks, 1):  # checked here to name the scan's own indices
        here = int(source[tuple(ijk)])
        if click.include and here not in (0, label):
            raise RefineError(f"--clicks {args.clicks}: click {n} (include) at ijk {ijk} is on label {here}, "
                              f"not on label {label} or background; an include never takes another label's "
                              f"voxels (--label {here} to refine that one)")
        if not click.include and not present:
            raise RefineError(f"--clicks {args.clicks}: click {n} (exclude): {args.mask} holds no label {label} "
                              "to remove voxels from")
    mask = np.ascontiguousarray(volume.geometry.to_display(source))
    results: list = []
    new, _edits = refine(np.asarray(volume.hu), mask, label, [c for _, c in clicks], volume.spacing,
                         results=results)
    out = write_mask(args.out, new, volume.geometry)
    ml = volume.voxel_volume_ml
    rows = [{"ijk": ijk, "label": r.click.kind, "zyx": list(r.click.zyx), "added_voxels": r.added,
             "removed_voxels": r.removed, "added_ml": round(r.added * ml, 3),
             "removed_ml": round(r.removed * ml, 3), "seconds": round(r.seconds, 3)}
            for (ijk, _), r in zip(clicks, results)]
    if args.json:
        print(json.dumps({"scan": str(args.scan), "mask": str(args.mask), "out": str(out), "target": args.target,
                          "label": label, "clicks": rows}))
        return 0
    for n, row in enumerate(rows, 1):
        print(f"click {n} {row['label']} at ijk {row['ijk']}: +{row['added_voxels']} / -{row['removed_voxels']} "
              f"voxels ({row['added_ml'] - row['removed_ml']:+.2f} mL) in {row['seconds']:.2f} s")
    print(f"wrote {out} (label {label})")
    return 0


def _cmd_cohort_run(args) -> int:
    from napari_ctseg.cohort.run import run_to_end

    tty = sys.stderr.isatty()

    def show(report) -> None:
        if report.done == 0:
            print(f"ctseg cohort: {report.message}", file=sys.stderr, flush=True)
            if report.dashboard:
                print(f"ctseg cohort: Dask dashboard {report.dashboard}", file=sys.stderr, flush=True)
            return
        if report.row is not None and report.row.get("status") != "ok":
            print(f"{chr(13) if tty else ''}ctseg cohort: {report.row['scan_id']} failed: "
                  f"{report.row.get('error', '')}", file=sys.stderr, flush=True)
        width = 30
        filled = int(width * report.done / max(report.total, 1))
        bar = f"[{'#' * filled}{'.' * (width - filled)}] " if tty else ""
        end = "\n" if not tty or report.done >= report.total else ""
        print(f"{chr(13) if tty else ''}cohort: {bar}{report.line()}", end=end, file=sys.stderr, flush=True)

    result = run_to_end(args.sources, args.out, args.targets, scheduler=args.scheduler, workers=args.workers,
                        device=args.device, threads=args.threads, versions=_model_versions(args.model),
                        registry=_registry(args), progress=show)
    print(f"{len(result.table)} scans in {args.out}/cohort.csv (ran {result.ran}, failed {result.failures}, "
          f"skipped {result.skipped} already done)")
    for note in result.listed:
        print(f"  listed: {note}")
    return 1 if result.failures else 0


def _cmd_cohort_report(args) -> int:
    from napari_ctseg.cohort.run import cohort_report

    text, _, _ = cohort_report(args.dir)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctseg", description="napari-ctseg from the command line",
                                     epilog="--debug (anywhere): show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a scan's shape, spacing, orientation and HU range")
    p.add_argument("scans", nargs="+", help="NIfTI file, DICOM file or DICOM folder")
    p.add_argument("--json", action="store_true", help="one JSON object per scan")
    p.set_defaults(func=_cmd_info)

    from napari_ctseg.models.registry import TARGETS

    # Where models are found, for the commands that use them.
    weights = argparse.ArgumentParser(add_help=False)
    weights.add_argument("--weights", action="append", metavar="DIR",
                         help="also look for model versions in DIR/<target>/<version>/ (searched first; "
                              "then $CTSEG_WEIGHTS_DIR, your fine-tuned versions, the bundled ones)")

    p = sub.add_parser("train", help="train a target's model on CT with expert masks",
                       description="Train a model and write model.pt and card.json into --out. "
                                   "The checkpoint kept is the best on the validation cases of "
                                   "the target's split (napari_ctseg/models/splits.json).")
    p.add_argument("--target", required=True, choices=TARGETS)
    p.add_argument("--data", required=True, help="data folder (one subfolder per case)")
    p.add_argument("--out", required=True, help="new folder for model.pt and card.json, e.g. weights/lungs/v2")
    p.add_argument("--epochs", type=int, default=None, help="default: the target's default")
    p.add_argument("--config", default=None,
                   help="the run's whole settings from a JSON file: a model card (its training.config, "
                        "to train an older version's recipe again) or a bare config (default: the "
                        "target's newest recipe)")
    p.add_argument("--split", default=None,
                   help="the cases from a JSON file: a model card (its training.split) or a split "
                        "like those in splits.json (default: the target's split in splits.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--version", default=None, help="version name for the card (default: --out's name)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--json", action="store_true", help="print the model card at the end")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("segment", parents=[weights], help="segment lungs, liver and infection; write masks on the scan's geometry")
    p.add_argument("scans", nargs="+", help="NIfTI file, DICOM file or folder, or a folder of scans")
    p.add_argument("--targets", default="lungs,liver,infection", help="comma-separated: lungs,liver,infection")
    p.add_argument("--out", required=True, help="output folder: <target>.nii.gz, or <target>.dcm with --format seg "
                   "(one subfolder per scan when several)")
    p.add_argument("--format", default="nifti", choices=["nifti", "seg"],
                   help="nifti: <target>.nii.gz; seg: <target>.dcm, a DICOM SEG referencing the scan's DICOM series "
                        "(the scan must be DICOM, with a Frame of Reference UID)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", action="append", metavar="TARGET=VERSION", help="model version per target")
    p.add_argument("--json", action="store_true", help="one JSON object per scan")
    p.set_defaults(func=_cmd_segment)
    p = sub.add_parser("evaluate", parents=[weights], help="score a model against expert masks: Dice, IoU, HD95, ASD per case",
                       description="Predict every case of --data with the target's model, write the "
                                   "predictions into --predictions-out and compare them with the expert "
                                   "masks. Layouts: <case>/ct.nii.gz with <case>/<target>.nii.gz "
                                   "(volumes), or images/<name>.jpg|png with masks/<name>.png (slices, "
                                   "infection only; distances in pixels).")
    p.add_argument("--target", required=True, help="a target the models are for, e.g. lungs")
    p.add_argument("--data", required=True, help="data folder (see the layouts above)")
    p.add_argument("--predictions-out", required=True, help="folder for the predicted masks")
    p.add_argument("--model", default=None, metavar="VERSION", help="model version (default: the active one)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cases", default=None, help="comma-separated case names (default: every case)")
    p.add_argument("--split", default=None, help="the cases of this split of models/splits.json, e.g. validation")
    p.add_argument("--json", action="store_true", help="one JSON object with every figure")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("finetune", parents=[weights], help="fine-tune a model on corrected masks; a new version, active only if better",
                       description="Fine-tune TARGET's model on scans and their corrected masks (NIfTI on "
                                   "each scan's grid). The new version goes to your user data folder; it "
                                   "becomes active only when it beats the base on held-aside corrected "
                                   "slices and is no more than 0.005 Dice worse on the validation cases "
                                   "(the base's, from --data; otherwise the slices you left unchanged).")
    p.add_argument("--target", required=True, help="a target the models are for, e.g. liver")
    p.add_argument("--scans", nargs="+", default=None, help="CT scans (NIfTI file, DICOM file or folder)")
    p.add_argument("--masks", nargs="+", default=None, help="the corrected masks, one per scan, same order")
    p.add_argument("--changed-slices", nargs="+", default=None, metavar="Z,Z-Z",
                   help="per scan, the display z slices you corrected (default: where the base model "
                        "disagrees with the mask)")
    p.add_argument("--from-store", action="store_true",
                   help="use the corrections saved from napari (Mask tools > Save corrected mask)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default 10")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--base", default=None, metavar="VERSION", help="base version (default: the active one)")
    p.add_argument("--data", default=None, help="the base model's training data folder, for replay and "
                                                "validation (default: $CTSEG_DATA_DIR)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--version", default=None, help="name of the new version (default: <base>-ftN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-promote", action="store_true", help="keep the new version as a candidate")
    p.add_argument("--json", action="store_true", help="one JSON object with the figures")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("models", parents=[weights], help="list model versions, choose the active one, remove fine-tuned ones",
                       description="list: one line per version (target, version, source, date, validation "
                                   "Dice; * marks the active one). use T V: make V the active version of T "
                                   "(also to roll back). remove T V: delete one of your fine-tuned versions "
                                   "(bundled versions cannot be removed). derive T V --out DIR --definition "
                                   "FILE.json: a new version with V's network and the card fields in FILE "
                                   "(postprocess, display, requires, inputs; and notes) replaced.")
    p.add_argument("action", choices=["list", "use", "remove", "derive"])
    p.add_argument("target", nargs="?", help="lungs, liver, infection, or another target of --weights")
    p.add_argument("version", nargs="?")
    p.add_argument("--json", action="store_true", help="list: one JSON object per version")
    p.add_argument("--out", default=None, help="derive: the new version's folder, e.g. weights/infection/v3")
    p.add_argument("--definition", default=None, help="derive: a JSON file with the card fields to replace")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("refine", parents=[weights], help="correct a mask with include/exclude clicks, in 3D around each",
                       description="Apply include/exclude clicks in order to one label of a mask; each "
                                   "re-segments the mask in 3D around the click (a random walker on the "
                                   "HU, seeded by the click and the mask; napari_ctseg.editing.refine). The "
                                   "mask is on the scan's grid; the output is written on the scan's "
                                   "exact geometry, as ctseg segment writes masks.")
    p.add_argument("scan", help="NIfTI file, DICOM file or folder")
    p.add_argument("--target", required=True, help="the mask's target (its card gives the labels), e.g. liver")
    p.add_argument("--mask", required=True, help="the mask to correct (NIfTI on the scan's grid)")
    p.add_argument("--clicks", required=True, metavar="CLICKS.json",
                   help='a JSON list of {"ijk": [i, j, k], "label": "include" | "exclude"} in the scan\'s '
                        "own voxel indices (source i,j,k of ctseg info; nibabel's array order for NIfTI)")
    p.add_argument("--out", required=True, help="the corrected mask, .nii or .nii.gz")
    p.add_argument("--label", type=int, default=None,
                   help="the label value the clicks refine (default: the target's only label, else 1)")
    p.add_argument("--json", action="store_true", help="one JSON object with every click's figures")
    p.set_defaults(func=_cmd_refine)

    p = sub.add_parser("cohort", help="segment a cohort of scans on a Dask cluster; summarise it",
                       description="Segment many scans on a local Dask cluster or an existing one, one "
                                   "row per scan in OUT/cohort.csv and cohort.parquet; running again "
                                   "skips scans done with the same input and model versions.")
    csub = p.add_subparsers(dest="cohort_command", required=True)
    c = csub.add_parser("run", parents=[weights],
                        help="segment every scan of SRC (files, folders, CSV of paths) into --out")
    c.add_argument("sources", nargs="+", metavar="SRC",
                   help="NIfTI file, DICOM file or folder, a folder searched recursively, or a CSV of paths")
    c.add_argument("--out", required=True, help="cohort folder: <scan id>/<target>.nii.gz, cohort.csv, cohort.parquet")
    c.add_argument("--targets", default="lungs,liver,infection", help="comma-separated: lungs,liver,infection")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://node:8786 (default: a local cluster)")
    c.add_argument("--workers", type=int, default=None, help="local cluster: worker processes (default: sized "
                                                             "to the machine's cores and memory)")
    c.add_argument("--threads", type=int, default=None, help="torch threads per scan (default: cores / workers)")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c.add_argument("--model", action="append", metavar="TARGET=VERSION", help="model version per target")
    c.set_defaults(func=_cmd_cohort_run)
    c = csub.add_parser("report", help="summary table and PNG plot of a cohort folder")
    c.add_argument("dir", help="the --out folder of 'ctseg cohort run'")
    c.set_defaults(func=_cmd_cohort_report)
    return parser


def main(argv=None) -> int:
    """Run a command. A user's error prints one line (exit 2); anything else prints one line
    naming it (exit 1) unless ``--debug`` (anywhere on the line) asks for the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CTSegError as exc:
        if debug:
            raise
        print(f"ctseg: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named: missing, not writable, disk full
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"ctseg: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback with --debug
        if debug:
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"ctseg: unexpected error ({type(exc).__name__}: {text}); run again with --debug "
              "for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
