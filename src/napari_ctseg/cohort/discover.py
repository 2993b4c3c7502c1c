"""Cohorts, the first step: which scans a list of sources holds (Qt-free).

``discover`` turns sources (scan files, folders searched recursively, CSV files of paths)
into ``ScanTask``s: one per NIfTI file and one per DICOM image series, each with a stable
``scan_id`` (the name of its output folder) and a ``fingerprint`` of its input files
(names, sizes and modification times: a changed file runs the scan again). What was found
but is not a scan is listed, with why.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ScanTask:
    """One scan of the cohort: a NIfTI file or one DICOM series.

    ``path``: the NIfTI file, or for DICOM one file of the series (its folder holds the
    series); ``scan_id``: stable name of the output folder; ``fingerprint``: digest of the
    input files' names, sizes and modification times (a changed file re-runs the scan).
    """

    path: str
    kind: str  # "nifti", "dicom" or "other" (not a scan: its row says why)
    scan_id: str
    fingerprint: str
    series_uid: str = ""
    n_files: int = 1


@dataclass
class Discovery:
    tasks: list[ScanTask]
    listed: list[str] = field(default_factory=list)  # what was found but is not a task, and why


def _stat_key(paths: Iterable[Path]) -> str:
    h = hashlib.sha1()
    for p in sorted(paths):
        try:
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p.name}\0missing\n".encode())
    return h.hexdigest()[:16]


def scan_id_for(path, series_uid: str = "") -> str:
    """A stable, readable id: the scan's name and a digest of its full path (and series)."""
    from napari_ctseg.io.nifti import scan_name

    p = Path(path).resolve()
    name = scan_name(p) if not series_uid else p.parent.name
    if name.lower() in ("dicom", "dcm", "images") and series_uid:
        name = f"{p.parent.parent.name}_{name}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"
    digest = hashlib.sha1(f"{p}\0{series_uid}".encode()).hexdigest()[:8]
    return f"{name[:48]}-{digest}"


def _nifti_task(p: Path) -> ScanTask:
    return ScanTask(str(p.resolve()), "nifti", scan_id_for(p), _stat_key([p]))


def _dicom_tasks(folder: Path, files: list[Path]) -> tuple[list[ScanTask], list[str]]:
    """One task per image series among ``files`` (all in ``folder``); other objects listed."""
    import pydicom

    from napari_ctseg.io.dicom import NON_IMAGE_MODALITIES, dicom_kind

    series: dict[str, list[Path]] = defaultdict(list)
    described: dict[str, str] = {}
    listed = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=dicom_kind(p) == "bare")
        except Exception as exc:  # noqa: BLE001 - listed, the series' own read will say more
            listed.append(f"{p}: not readable as DICOM ({type(exc).__name__})")
            continue
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if "Rows" not in ds or modality in NON_IMAGE_MODALITIES:
            listed.append(f"{p}: DICOM {modality or 'object'} without an image, not segmented")
            continue
        uid = str(ds.get("SeriesInstanceUID", "unknown"))
        series[uid].append(p)
        described.setdefault(uid, f"{modality} '{str(ds.get('SeriesDescription', '') or '').strip()}'")
    tasks = []
    for uid, group in sorted(series.items()):
        group.sort()
        first = group[0]
        tasks.append(ScanTask(str(first.resolve()), "dicom", scan_id_for(first, uid), _stat_key(group),
                              series_uid=uid, n_files=len(group)))
    if len(series) > 1:
        listed.append(f"{folder}: {len(series)} DICOM series, each segmented as its own scan: "
                      + "; ".join(f"{described[u]} ({len(g)} files)" for u, g in sorted(series.items())))
    return tasks, listed


def _csv_paths(path: Path) -> list[Path]:
    """The paths in a CSV file: its 'path' column, else its first column (relative to the CSV)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col = header.index("path") if "path" in header else 0
    if "path" in header or not (Path(rows[0][0]).exists() or (path.parent / rows[0][0]).exists()):
        rows = rows[1:]  # a header line
    out = []
    for r in rows:
        q = Path(r[col].strip()).expanduser()
        out.append(q if q.is_absolute() else path.parent / q)
    return out


def discover(sources: Iterable) -> Discovery:
    """The scans in ``sources``: files, folders (searched recursively) and CSV files of paths.

    Every NIfTI file is a scan; every DICOM image series (files grouped by
    SeriesInstanceUID within a folder) is a scan; DICOM objects without an image are
    listed, not segmented. Any other file named as a source becomes a task whose row says
    it is not a scan. Duplicates are dropped.
    """
    from napari_ctseg.io.dicom import dicom_kind
    from napari_ctseg.io.nifti import is_nifti_path

    tasks: dict[str, ScanTask] = {}
    listed: list[str] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file() and p.suffix.lower() == ".csv":
            found = discover(_csv_paths(p))
            tasks.update({t.scan_id: t for t in found.tasks})
            listed += found.listed
        elif p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                here = Path(dirpath)
                dicoms = []
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    q = here / name
                    if is_nifti_path(q):
                        t = _nifti_task(q)
                        tasks[t.scan_id] = t
                    elif dicom_kind(q):
                        dicoms.append(q)
                if dicoms:
                    found, notes = _dicom_tasks(here, dicoms)
                    tasks.update({t.scan_id: t for t in found})
                    listed += notes
        elif p.is_file() and not is_nifti_path(p) and dicom_kind(p):
            found, notes = _dicom_tasks(p.parent, [p])
            tasks.update({t.scan_id: t for t in found})
            listed += notes
        elif is_nifti_path(p) and p.exists():
            t = _nifti_task(p)
            tasks[t.scan_id] = t
        else:
            # Missing or not a scan: a task all the same, so that the table says why.
            t = ScanTask(str(p.absolute()), "other", scan_id_for(p), _stat_key([p]))
            tasks[t.scan_id] = t
    return Discovery(list(tasks.values()), listed)


__all__ = ["ScanTask", "Discovery", "scan_id_for", "discover"]
