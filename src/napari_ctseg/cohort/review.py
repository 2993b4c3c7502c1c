"""Reviewing a finished cohort: which scans a person has looked at, and which one is next (Qt-free).

A cohort folder (``ctseg cohort run``) holds ``cohort.csv``/``cohort.parquet`` (one row per scan,
with a ``review_score``: higher means the models were less sure) and the masks under
``<scan id>/<target>.nii.gz``. Reviews are kept beside them in ``reviews.json``
(``{scan id: {"when", "how", "target", "mask"}}``), written atomically, so the cohort run may go
on writing its table while a person reviews, and the folder carries its own review state.

A scan counts as reviewed when a person accepted it as it is, or saved a corrected mask for it:
a correction in the user's corrections store (``napari_ctseg.editing.corrections``, which Mask tools
writes and Fine-tune learns from) whose scan is this row's scan and which was saved after the
cohort's masks were written.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_ctseg._files import write_atomically
from napari_ctseg.errors import CTSegError

REVIEWS_FILE = "reviews.json"


def load_reviews(out_dir) -> dict[str, dict]:
    """The reviews recorded in a cohort folder ({} when there are none or the file is unreadable)."""
    try:
        data = json.loads((Path(out_dir) / REVIEWS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def mark_reviewed(out_dir, scan_id: str, how: str = "accepted", target: str = "", mask: str = "",
                  when: str | None = None) -> dict[str, dict]:
    """Record that ``scan_id`` was reviewed (``how``: "accepted" or "corrected"); return all reviews."""
    reviews = load_reviews(out_dir)
    reviews[str(scan_id)] = {"when": when or datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                             "how": how, "target": target, "mask": str(mask)}
    write_atomically(Path(out_dir) / REVIEWS_FILE, json.dumps(reviews, indent=2, sort_keys=True) + "\n")
    return reviews


def _score(row: dict) -> float:
    try:
        v = float(row.get("review_score"))
    except (TypeError, ValueError):
        return -1.0
    return -1.0 if math.isnan(v) else v


def review_queue(rows: list[dict], reviews: dict[str, dict]) -> list[str]:
    """Scan ids still to review, least certain first (highest ``review_score``); failed scans
    (nothing to look at) are left out."""
    todo = [r for r in rows if r.get("status") == "ok" and str(r.get("scan_id")) not in reviews]
    return [str(r["scan_id"]) for r in sorted(todo, key=lambda r: (-_score(r), str(r["scan_id"])))]


def _same_scan(a, b) -> bool:
    """Whether two scan paths name the same scan (a DICOM series may be named by its folder or one file)."""
    try:
        pa, pb = Path(a).resolve(), Path(b).resolve()
    except (OSError, TypeError):
        return False
    return pa == pb or (pa.is_file() and pa.parent == pb) or (pb.is_file() and pb.parent == pa)


def reviews_from_corrections(out_dir, rows: list[dict], corrections) -> list[str]:
    """Record as reviewed ("corrected") every row with a correction saved after its masks were
    written; return the scan ids newly marked."""
    out_dir = Path(out_dir)
    reviews = load_reviews(out_dir)
    marked = []
    for row in rows:
        sid = str(row.get("scan_id"))
        if sid in reviews or row.get("status") != "ok":
            continue
        made = row.get("ended_at")  # when the run finished this scan (else: when its masks were written)
        if made is None or made != made:
            made = max((m.stat().st_mtime for m in (out_dir / sid).glob("*.nii.gz")), default=0.0)
        made = float(made)
        for corr in corrections:
            created = _timestamp(corr.created)
            if _same_scan(corr.scan_path, row.get("path")) and created >= made - 1.0:
                reviews = mark_reviewed(out_dir, sid, "corrected", corr.target, corr.mask_path, corr.created)
                marked.append(sid)
                break
    return marked


def _timestamp(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return 0.0


@dataclass
class OpenedScan:
    """A cohort scan read for a person: the CT and its masks on the CT's display grid (z, y, x)."""

    scan_id: str
    volume: object  # CTVolume
    masks: dict  # target -> (uint8 mask on the display grid, ModelCard of the version that made it)


def open_scan(out_dir, row: dict, registry=None) -> OpenedScan:
    """Read a row's scan and the masks the cohort run wrote for it (``CTSegError`` naming what is
    missing). The cards come from ``registry`` (default: ``ModelRegistry.default()``), by the
    versions the row records; a version no longer there falls back to the active one's display."""
    from napari_ctseg.evaluation.evaluate import EvaluationError, read_reference_volume
    from napari_ctseg.io import read_scan
    from napari_ctseg.models.registry import as_registry

    registry = as_registry(registry)
    sid = str(row.get("scan_id"))
    folder = Path(out_dir) / sid
    if row.get("status") != "ok":
        raise CTSegError(f"{sid}: the cohort run failed on this scan ({row.get('error') or 'no masks'})")
    volume = read_scan(row["path"])
    masks = {}
    # The run's masks are <target>.nii.gz for the targets whose versions the row records (a
    # corrected mask saved beside them is not one of them).
    targets = [k[len("version_"):] for k, v in row.items() if k.startswith("version_") and v]
    for target in targets:
        path = folder / f"{target}.nii.gz"
        if not path.is_file():
            raise CTSegError(f"{path}: missing; run 'ctseg cohort run' again for this scan")
        version = str(row.get(f"version_{target}") or "") or None
        try:
            card = registry.get_card(target, version)
        except CTSegError:
            card = registry.get_card(target)
        try:
            source = read_reference_volume(path, volume.geometry, target, card.labels)
        except EvaluationError as exc:
            raise CTSegError(f"{sid}: {exc}") from None
        masks[target] = (np.ascontiguousarray(volume.geometry.to_display(source)).astype(np.uint8), card)
    if not masks:
        raise CTSegError(f"{folder}: no masks here; run 'ctseg cohort run' again for this scan")
    return OpenedScan(sid, volume, masks)
