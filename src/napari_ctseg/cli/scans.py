"""The ``ctseg`` commands on scans: ``info``, ``segment``, ``evaluate``, ``refine`` and
``cohort run | report`` (many scans on a Dask cluster)."""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from napari_ctseg.cli.common import model_versions, progress_printer, registry_of
from napari_ctseg.errors import CTSegError


def cmd_info(args) -> int:
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


def cmd_segment(args) -> int:
    from pathlib import Path

    from napari_ctseg.segmentation.inference import ModelSet, parse_targets, segment
    from napari_ctseg.io import read_scan, write_mask
    from napari_ctseg.io.dicom_objects import check_dicom_source
    from napari_ctseg.io.nifti import scan_name

    registry = registry_of(args)
    targets = parse_targets(args.targets, registry)
    versions = model_versions(args.model)
    models = ModelSet(versions, registry)
    scans = _scan_sources(args.scans)
    out_root = Path(args.out)
    failures = 0
    for scan in scans:
        try:
            volume = read_scan(scan)
            if args.format in ("seg", "rtstruct"):  # before segmenting, not after
                check_dicom_source(volume, Path(scan).name, "DICOM SEG" if args.format == "seg" else "RTSTRUCT")
            for w in volume.warnings:
                print(f"ctseg: {scan}: warning: {w}", file=sys.stderr)
            result = segment(volume, targets, args.device, models=models,
                             progress=progress_printer(Path(scan).name))
            out_dir = out_root if len(scans) == 1 else out_root / scan_name(scan)
            written = {}
            if args.format == "rtstruct":  # one structure set holding every target's ROIs
                written["rtstruct"] = str(result.write_rtstruct(volume, out_dir / "rtstruct.dcm"))
            for t, m in (result.masks.items() if args.format != "rtstruct" else ()):
                if args.format == "seg":  # the card's label names; the model and its version as the algorithm
                    written[t] = str(result.write_seg(t, volume, out_dir / f"{t}.dcm"))
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


def cmd_evaluate(args) -> int:
    from napari_ctseg.evaluation.evaluate import EvaluationError, evaluate, load_split

    if args.cases and args.split:
        raise EvaluationError("give --cases or --split, not both")
    cases = args.cases
    if args.split:
        cases = load_split(args.target, args.split)
    report = evaluate(args.target, args.data, args.predictions_out, version=args.model,
                      device=args.device, cases=cases, progress=progress_printer(f"evaluate {args.target}"),
                      registry=registry_of(args))
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(report.table())
    for note in report.notes:
        print(f"note: {note}")
    print(f"predictions written to {report.predictions_out}")
    return 0


def _read_clicks(path, geometry) -> list:
    """CLICKS.json: a list of {"ijk": [i, j, k], "label": "include" | "exclude"} (or a stroke,
    {"stroke": [[i, j, k], ...], "label": ...}, or a box, {"box": [[i, j, k], [i, j, k]]}: two
    opposite corners, equal on one index for a box on a slice; "label": "exclude" takes the
    structure inside it out of the label) in the scan's own voxel indices,
    as (first ijk, display-grid ``Click`` there, the stroke's display-grid voxels or None, the
    box's display-grid corners or None), in order."""
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
        if not isinstance(entry, dict) or set(entry) not in ({"ijk", "label"}, {"stroke", "label"}, {"box"},
                                                             {"box", "label"}):
            raise RefineError(f'{where}: write {{"ijk": [i, j, k], "label": "include" | "exclude"}} '
                              f'(or {{"stroke": [[i, j, k], ...], "label": ...}}, or {{"box": [[i, j, k], [i, j, k]]}}), '
                              f"got {json.dumps(entry)[:80]}")
        kind = entry.get("label", "include")
        if kind not in ("include", "exclude"):
            raise RefineError(f'{where}: "label" must be "include" or "exclude", got {json.dumps(kind)[:40]}')
        points = entry["stroke"] if "stroke" in entry else entry["box"] if "box" in entry else [entry["ijk"]]
        if "stroke" in entry and (not isinstance(points, list) or not points):
            raise RefineError(f'{where}: "stroke" must be a list of voxel indices [[i, j, k], ...], '
                              f"got {json.dumps(points)[:80]}")
        if "box" in entry and (not isinstance(points, list) or len(points) != 2):
            raise RefineError(f'{where}: "box" must be two opposite corners [[i, j, k], [i, j, k]], '
                              f"got {json.dumps(points)[:80]}")
        for ijk in points:
            if not isinstance(ijk, list) or len(ijk) != 3 or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in ijk):
                raise RefineError(f'{where}: "ijk" must be three whole voxel indices [i, j, k], '
                                  f"got {json.dumps(ijk)[:80]}")
            if any(not 0 <= v < s for v, s in zip(ijk, shape)):
                raise RefineError(f"{where} at ijk {ijk} is outside the scan (source shape "
                                  f"{'x'.join(map(str, shape))}, indices from 0)")
        ijk = points[0]
        click = Click(geometry.source_to_display_index(ijk), include=kind == "include")
        stroke = (np.array([geometry.source_to_display_index(v) for v in points], dtype=np.int64)
                  if "stroke" in entry else None)
        box = tuple(geometry.source_to_display_index(v) for v in points) if "box" in entry else None
        clicks.append((ijk, click, stroke, box))
    return clicks


NEAREST_LABEL_MM = 50.0


def _click_label(mask: np.ndarray, click, labels: dict[str, int], spacing, n: int, path, ijk) -> int:
    """The label a click refines when the target has several and ``--label`` is not given: the
    label under it, or for an include on background the target's label nearest to it (mm, within
    ``NEAREST_LABEL_MM``). ``RefineError`` when there is none to choose."""
    from napari_ctseg.errors import RefineError

    here = int(mask[click.zyx])
    values = set(labels.values())
    if here in values:
        return here
    if not click.include:
        raise RefineError(f"--clicks {path}: click {n} (exclude) at ijk {ijk} is on background, not on any of the "
                          f"labels {sorted(values)}: nothing to remove there")
    sp = np.asarray(spacing, float)
    half = np.ceil(NEAREST_LABEL_MM / sp).astype(int)
    lo = np.maximum(np.asarray(click.zyx) - half, 0)
    box = tuple(slice(int(a), int(c) + int(h) + 1) for a, c, h in zip(lo, click.zyx, half))
    sub = mask[box]
    best, where = None, None
    for v in sorted(values):
        pts = np.argwhere(sub == v)
        if len(pts):
            d = float(np.min(np.sqrt((((pts + lo - np.asarray(click.zyx)) * sp) ** 2).sum(1))))
            if d <= NEAREST_LABEL_MM and (best is None or d < best):
                best, where = d, v
    if where is None:
        raise RefineError(f"--clicks {path}: click {n} (include) at ijk {ijk} is not within {NEAREST_LABEL_MM:g} mm of any "
                          f"of the labels {sorted(values)}; name the label with --label")
    return where


def cmd_refine(args) -> int:
    from pathlib import Path

    from napari_ctseg.errors import RefineError
    from napari_ctseg.evaluation.evaluate import read_reference_volume
    from napari_ctseg.io import read_scan, write_mask
    from napari_ctseg.editing.refine import ClickResult, refine
    from napari_ctseg.editing.refine_box import refine_box
    from napari_ctseg.editing.refine_stroke import refine_stroke

    volume = read_scan(args.scan)
    for w in volume.warnings:
        print(f"ctseg: {args.scan}: warning: {w}", file=sys.stderr)
    clicks = _read_clicks(args.clicks, volume.geometry)
    card = registry_of(args).get_card(args.target, getattr(args, "version", None))
    card_labels = dict(card.labels)
    method = getattr(args, "method", "auto")
    if method == "model" and not card.takes_clicks:
        raise RefineError(f"--method model: {args.target} {card.version} takes no clicks (not a guidance-aware "
                          "version); name one with --version, or use --method classical")
    refiner = None
    if method != "classical" and card.takes_clicks:
        from napari_ctseg.editing.refine_model import GuidedRefiner

        refiner = GuidedRefiner.load(args.target, card.version, registry_of(args))
    label = args.label
    per_click = label is None and len(card_labels) > 1  # each click refines the label it is on or near
    if label is None:
        label = next(iter(card_labels.values()))
    if label <= 0:
        raise RefineError(f"--label {label}: give the label value to refine, 1 or more")
    allowed = {**card_labels, **({f"label {label}": label} if label not in card_labels.values() else {})}
    source = read_reference_volume(Path(args.mask), volume.geometry, args.target, allowed)
    mask = np.ascontiguousarray(volume.geometry.to_display(source))
    if per_click and any(box is not None for *_, box in clicks):
        raise RefineError(f"--clicks {args.clicks}: a box adds to (or removes from) one label; {args.target} has several "
                          f"({', '.join(f'{k} {v}' for k, v in card_labels.items())}): name it with --label")
    labels = [_click_label(mask, click, card_labels, volume.spacing, n, args.clicks, ijk) if per_click else label
              for n, (ijk, click, _, _) in enumerate(clicks, 1)]
    for n, ((ijk, click, stroke, box), lab) in enumerate(zip(clicks, labels), 1):  # checked here, in the scan's indices
        if box is not None and not click.include and not np.any(source == lab):
            raise RefineError(f"--clicks {args.clicks}: box {n} (exclude): {args.mask} holds no label {lab} "
                              "to remove voxels from")
        if stroke is not None or box is not None:
            continue  # a stroke or a box acts on the voxels where it may (refine_stroke says when there are none)
        here = int(source[tuple(ijk)])
        if click.include and here not in (0, lab):
            raise RefineError(f"--clicks {args.clicks}: click {n} (include) at ijk {ijk} is on label {here}, "
                              f"not on label {lab} or background; an include never takes another label's "
                              f"voxels (--label {here} to refine that one)")
        if not click.include and not np.any(source == lab):
            raise RefineError(f"--clicks {args.clicks}: click {n} (exclude): {args.mask} holds no label {lab} "
                              "to remove voxels from")
    results: list = []
    new, done = mask, {}
    hu = np.asarray(volume.hu)
    click_edit = None if refiner is None else (
        lambda h, m, lab, c, sp, past: refiner.click(h, m, lab, c, sp, history=past))
    for n, ((_, click, stroke, box), lab) in enumerate(zip(clicks, labels), 1):  # the network sees that label's clicks
        if stroke is None and box is None:
            new, _edits = refine(hu, new, lab, [click], volume.spacing, results=results, refiner=refiner,
                                 history=done.get(lab, []))
            done.setdefault(lab, []).append(click)
            continue
        t0 = time.perf_counter()
        try:
            if box is not None:  # the classical method: no version is trained on boxes
                edit, made = refine_box(hu, new, lab, box, volume.spacing, click.include), []
            else:
                edit, made = refine_stroke(hu, new, lab, stroke, click.include, volume.spacing,
                                           click_edit=click_edit, history=done.get(lab, []))
        except RefineError as exc:
            raise RefineError(f"--clicks {args.clicks}: {'box' if box is not None else 'click'} {n}: {exc}") from None
        before = np.asarray(new[edit.box]) == lab
        after = edit.values == lab
        new = edit.apply(np.array(new, copy=True))
        done.setdefault(lab, []).extend(made)
        results.append(ClickResult(click, int(np.count_nonzero(after & ~before)),
                                   int(np.count_nonzero(before & ~after)), time.perf_counter() - t0))
    out = write_mask(args.out, new, volume.geometry)
    ml = volume.voxel_volume_ml
    rows = [{"ijk": ijk, "label": r.click.kind, "refines": lab, "zyx": list(r.click.zyx), "added_voxels": r.added,
             "removed_voxels": r.removed, "added_ml": round(r.added * ml, 3),
             "removed_ml": round(r.removed * ml, 3), "seconds": round(r.seconds, 3),
             **({"stroke_voxels": int(len(stroke))} if stroke is not None else {}),
             **({"box": [list(map(int, c)) for c in box]} if box is not None else {})}
            for (ijk, _, stroke, box), r, lab in zip(clicks, results, labels)]
    if args.json:
        print(json.dumps({"scan": str(args.scan), "mask": str(args.mask), "out": str(out), "target": args.target,
                          "label": label if not per_click else sorted(set(labels)), "method": f"{refiner.name} (guidance-aware)" if refiner else "classical",
                          "clicks": rows}))
        return 0
    for n, row in enumerate(rows, 1):
        where = f"stroke of {row['stroke_voxels']} voxels from" if "stroke_voxels" in row else "at"
        what = f"click {n} {row['label']} {where} ijk {row['ijk']}" if "box" not in row else \
            f"box {n} from ijk {row['ijk']}"
        print(f"{what} (label {row['refines']}): "
              f"+{row['added_voxels']} / -{row['removed_voxels']} "
              f"voxels ({row['added_ml'] - row['removed_ml']:+.2f} mL) in {row['seconds']:.2f} s")
    said = f"label {label}" if not per_click else "labels " + ", ".join(map(str, sorted(set(labels))))
    print(f"wrote {out} ({said}; {refiner.name + ' network' if refiner else 'classical method'})")
    return 0


def cmd_cohort_run(args) -> int:
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
                        device=args.device, threads=args.threads, versions=model_versions(args.model),
                        registry=registry_of(args), progress=show, seg=args.format == "seg",
                        rtstruct=args.format == "rtstruct")
    print(f"{len(result.table)} scans in {args.out}/cohort.csv (ran {result.ran}, failed {result.failures}, "
          f"skipped {result.skipped} already done)")
    for note in result.listed:
        print(f"  listed: {note}")
    return 1 if result.failures else 0


def cmd_cohort_report(args) -> int:
    from napari_ctseg.cohort.table import cohort_report

    text, _, _ = cohort_report(args.dir)
    print(text)
    return 0
