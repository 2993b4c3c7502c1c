"""The ``ctseg`` commands that make and manage models: ``train``, ``finetune`` and
``models list | use | remove | derive``."""
from __future__ import annotations

import json
import sys

from napari_ctseg.cli.common import registry_of
from napari_ctseg.errors import CTSegError


def cmd_train(args) -> int:
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


def cmd_finetune(args) -> int:
    import os

    from napari_ctseg.training.fine_tuning import CorrectionCase, corrections_from_store, fine_tune
    from napari_ctseg.segmentation.inference import choose_device

    registry = registry_of(args)
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


def cmd_models(args) -> int:
    registry = registry_of(args)
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
                             "takes_clicks": c.takes_clicks, "path": str(c.path)})
        if args.json:
            for r in rows:
                print(json.dumps(r))
            return 0
        for r in rows:
            dice = "   n/a" if r["validation_dice"] is None else f"{r['validation_dice']:.4f}"
            status = f" ({r['status']})" if r["status"] in ("candidate",) else ""
            if r["derived_from"]:
                status += f" ({r['derived_from']}'s network, new definition)"
            if r["takes_clicks"]:
                status += " (takes clicks)"
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
