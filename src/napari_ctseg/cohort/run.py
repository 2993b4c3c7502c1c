"""Cohorts: segment an archive of scans on a Dask cluster, one row per scan (Qt-free).

``discover`` turns sources (scan files, folders searched recursively, CSV files of paths)
into ``ScanTask``s: one per NIfTI file and one per DICOM image series. ``run_cohort`` is a
generator: it sends the tasks to a Dask ``distributed`` cluster (a ``LocalCluster`` sized
to this machine, or an existing scheduler), yields a ``CohortProgress`` after every
finished scan and returns the table. Each task (``segment_task``, run on a worker) reads
one scan, segments it with ``napari_ctseg.segmentation.inference``, writes its masks on the scan's
exact geometry under ``OUT/<scan id>/<target>.nii.gz`` and returns one row.

The rows are written to ``OUT/cohort.csv`` and ``OUT/cohort.parquet`` (temporary file,
then rename) after every finished scan, so an interrupted run keeps what it did. Running
again skips the scans already done with the same input (path, size and modification time
of its files) and the same model versions (name and sha256).

Review score (column ``review_score``, 0..1, higher = look first): flip test-time
augmentation on a subsample of slices. For each target, up to ``REVIEW_SLICES`` slices
holding its mask (evenly spaced; any slices when the mask is empty) are predicted again
with the image mirrored left-right; the score is 1 - IoU of the foreground of the two
predictions (on the network's grid), averaged over the targets. A model that is sure of a
scan gives the same answer mirrored; a doubtful boundary or a false positive does not.
It costs two extra network passes over at most ``REVIEW_SLICES`` slices per target.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import resource
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ctseg.errors import CTSegError
from napari_ctseg.jobs import Progress

TABLE_CSV = "cohort.csv"
TABLE_PARQUET = "cohort.parquet"
REPORT_PNG = "cohort_report.png"
REPORT_CSV = "cohort_summary.csv"
REVIEW_SLICES = 6
# Memory a worker should have for one chest CT (512 x 512 x 300 in int16, masks, network).
WORKER_MEMORY_BYTES = 3 * 2**30


# --- discovering the scans -------------------------------------------------------------------

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


# --- models -------------------------------------------------------------------------------------

def resolve_versions(targets: Iterable[str], versions: dict[str, str] | None = None,
                     registry=None) -> dict[str, dict]:
    """The model behind each target and each model it needs (required targets, locate stages):
    ``{target: {"version": .., "sha256": .., "locate": {..} | None}}``, as resolved now in
    ``registry`` (a ``ModelRegistry``; default: ``ModelRegistry.default()``)."""
    from napari_ctseg.models.definition import locate_stage
    from napari_ctseg.models.registry import as_registry

    get_card = as_registry(registry).get_card

    versions = dict(versions or {})
    out: dict[str, dict] = {}
    todo = list(targets)
    while todo:
        t = todo.pop(0)
        if t in out:
            continue
        card = get_card(t, versions.get(t))
        stage = locate_stage(card)
        locate = None
        if stage is not None:
            loc = get_card(t, stage["version"])
            locate = {"version": loc.version, "sha256": loc.sha256}
        out[t] = {"version": card.version, "sha256": card.sha256, "locate": locate}
        todo += [r for r in card.requires if r not in out]
    return out


def model_key(resolved: dict[str, dict]) -> str:
    """One string naming every model version used (with the start of its sha256)."""
    parts = []
    for t in sorted(resolved):
        r = resolved[t]
        part = f"{t}={r['version']}@{r['sha256'][:12]}"
        if r.get("locate"):
            part += f"+{r['locate']['version']}@{r['locate']['sha256'][:12]}"
        parts.append(part)
    return ";".join(parts)


_MODEL_SETS: dict[tuple, object] = {}
_MODEL_LOCK = threading.Lock()


def worker_models(versions: dict[str, str], registry=None):
    """This process's ``ModelSet`` for ``versions`` (in ``registry``; default: the worker's own
    ``ModelRegistry.default()``): each model is loaded and its sha256 verified once per worker
    process, then reused by every task that runs there."""
    from napari_ctseg.segmentation.inference import ModelSet

    key = (tuple(sorted(versions.items())), registry)
    with _MODEL_LOCK:
        if key not in _MODEL_SETS:
            _MODEL_SETS[key] = ModelSet(versions, registry)
        return _MODEL_SETS[key]


# --- one task ----------------------------------------------------------------------------------

def _flat(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def flip_disagreement(volume, mask: np.ndarray, card, model, device, n_slices: int = REVIEW_SLICES) -> float:
    """1 - IoU of the foreground predicted on up to ``n_slices`` slices and on the same slices
    mirrored left-right (0 = the same answer, 1 = nothing in common); see the module docstring."""
    import torch

    from napari_ctseg.models.definition import locate_stage
    from napari_ctseg.models.preprocess import Preprocessing, find_crop, mask_crop, slices_to_input

    prep = Preprocessing.from_dict(card.preprocessing)
    hu = volume.hu
    zs = np.flatnonzero(np.asarray(mask).reshape(mask.shape[0], -1).any(axis=1))
    if locate_stage(card) is not None:
        found = mask_crop(mask, volume.spacing, prep)
        if found is None:
            return 0.0  # the organ was not found: nothing to disagree on
        crop = found[0]
    else:
        crop = find_crop(hu, prep)
    pool = zs if zs.size else np.arange(hu.shape[0])
    z = pool[np.unique(np.linspace(0, len(pool) - 1, min(n_slices, len(pool))).round().astype(int))]
    with torch.inference_mode():
        x = slices_to_input(hu, z, prep, crop).to(device).contiguous(memory_format=torch.channels_last)
        if device.type == "cuda":
            x = x.half()
        a = model(x).argmax(dim=1) > 0
        b = model(x.flip(-1)).flip(-1).argmax(dim=1) > 0
    union = int((a | b).sum())
    return 0.0 if union == 0 else 1.0 - int((a & b).sum()) / union


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid{os.getpid()}"


def segment_task(task: ScanTask, out_dir: str, targets: list[str], versions: dict[str, str],
                 device: str = "auto", threads: int | None = None, model_id: str = "", registry=None) -> dict:
    """Segment one scan on a worker: masks under ``out_dir/<scan id>/``, one row returned.

    Never raises for a bad scan or a model error: the row's status is "failed" and its
    error says why, so the rest of the cohort goes on.
    """
    started = time.time()
    t0 = time.perf_counter()
    row: dict = {"scan_id": task.scan_id, "path": task.path, "kind": task.kind, "series_uid": task.series_uid,
                 "fingerprint": task.fingerprint, "model_key": model_id, "status": "failed", "error": ""}
    try:
        row.update(_segment_row(task, Path(out_dir), targets, versions, device, threads, registry))
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure is a row, never a lost cohort
        row["error"] = f"{type(exc).__name__}: {_one_line(exc)}" if not isinstance(exc, CTSegError) \
            else _one_line(exc)
        if not isinstance(exc, (CTSegError, OSError)):
            row["traceback"] = traceback.format_exc(limit=4)[-1500:]
    row["seconds"] = round(time.perf_counter() - t0, 3)
    row["started_at"], row["ended_at"] = started, time.time()
    row["worker"] = _worker_name()
    row["worker_peak_mb"] = round(_peak_rss_mb(), 1)
    return row


def _segment_row(task: ScanTask, out_dir: Path, targets, versions, device, threads, registry=None) -> dict:
    import torch

    from napari_ctseg.segmentation.inference import segment
    from napari_ctseg.io import read_scan, write_mask

    if task.kind == "other":
        p = Path(task.path)
        raise CTSegError(f"{p.name}: no such file or folder" if not p.exists() else
                         f"{p.name}: not a NIfTI (.nii, .nii.gz) or DICOM file")
    volume = read_scan(task.path)
    if task.series_uid and volume.series is not None and volume.series.uid != task.series_uid:
        raise CTSegError(f"{task.path}: read series {volume.series.uid}, expected {task.series_uid}")
    models = worker_models(versions, registry)
    result = segment(volume, targets, device, models=models, threads=threads)
    folder = out_dir / task.scan_id
    for t, m in result.masks.items():
        write_mask(folder / f"{t}.nii.gz", m, volume.geometry)
    row: dict = {
        "name": volume.name,
        "shape_zyx": "x".join(str(s) for s in volume.shape),
        "spacing_zyx_mm": "x".join(f"{s:.4g}" for s in volume.spacing),
        "device": result.device,
        "lung_involvement_pct": result.lung_involvement_pct,
        "caveats": ";".join(c.code for c in result.caveats),  # doubts about that figure (caveats.py)
        "warnings": " | ".join(volume.warnings + result.notes),
    }
    for t, per_label in result.volumes_ml.items():
        row[f"{t}_ml"] = round(sum(per_label.values()), 3)
        if len(per_label) > 1:
            row.update({f"{t}_{_flat(k)}_ml": round(v, 3) for k, v in per_label.items()})
    for lung, fig in (result.infection_by_lung or {}).items():
        row[f"infection_{_flat(lung)}_ml"] = round(fig["ml"], 3)
        row[f"infection_{_flat(lung)}_pct"] = fig["pct"]
    row.update({f"version_{t}": v for t, v in result.versions.items()})
    dev = torch.device(result.device)
    scores = {}
    for t in targets:
        model, card = models.get(t, dev, result.versions[t])
        scores[t] = flip_disagreement(volume, result.masks[t], card, model, dev)
        row[f"review_{t}"] = round(scores[t], 4)
    row["review_score"] = round(float(np.mean(list(scores.values()))), 4)
    row["segment_seconds"] = round(sum(result.seconds.values()), 3)
    return row


# --- the table ---------------------------------------------------------------------------------

def _atomic(path: Path, write) -> None:
    """``write(temporary path)``, then the file replaces ``path`` (see ``_files``)."""
    from napari_ctseg._files import replaced_atomically

    with replaced_atomically(path, path.suffix) as tmp:
        write(tmp)


def write_table(out_dir, rows: Iterable[dict]):
    """``cohort.csv`` and ``cohort.parquet`` from ``rows`` (each written atomically); the DataFrame."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(list(rows))
    if len(table):
        front = [c for c in ("scan_id", "status", "review_score", "path") if c in table]
        table = table[front + [c for c in table.columns if c not in front]]
        table = table.sort_values("scan_id", kind="stable").reset_index(drop=True)
    _atomic(out_dir / TABLE_CSV, lambda p: table.to_csv(p, index=False))
    _atomic(out_dir / TABLE_PARQUET, lambda p: table.to_parquet(p, index=False))
    return table


def read_table(out_dir):
    """The cohort table in ``out_dir`` (Parquet, else CSV); an empty DataFrame when there is none."""
    import pandas as pd

    out_dir = Path(out_dir)
    if (out_dir / TABLE_PARQUET).is_file():
        return pd.read_parquet(out_dir / TABLE_PARQUET)
    if (out_dir / TABLE_CSV).is_file():
        return pd.read_csv(out_dir / TABLE_CSV)
    return pd.DataFrame()


def _rows_of(table) -> dict[str, dict]:
    if not len(table):
        return {}
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    return {r["scan_id"]: {k: v for k, v in r.items() if v is not None} for r in records}


# --- the run -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CohortProgress(Progress):
    """The one event type of long jobs (``jobs.Progress``): ``done`` of ``total`` scans finished
    in this run (``failures`` of them failed); ``skipped`` were already done; ``eta_s`` seconds
    left (None before the first scan); ``row`` the table row just finished, whose scan is the
    ``stage``."""

    failures: int = 0
    skipped: int = 0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    dashboard: str | None = None
    row: dict | None = None  # the row just finished

    def line(self) -> str:
        eta = "--" if self.eta_s is None else _clock(self.eta_s)
        return (f"{self.done}/{self.total} scans, {self.failures} failed, {self.skipped} skipped, "
                f"elapsed {_clock(self.elapsed_s)}, ETA {eta}")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def machine_resources() -> tuple[int, int]:
    """(CPU cores, memory in bytes) of this machine."""
    import psutil

    return os.cpu_count() or 1, int(psutil.virtual_memory().total)


def local_cluster_size(workers: int | None = None) -> tuple[int, int]:
    """(workers, memory limit per worker in bytes) for a local cluster on this machine: one
    process per core, no more than memory allows (``WORKER_MEMORY_BYTES`` each); 90 % of
    the memory shared between them."""
    cores, memory = machine_resources()
    usable = int(memory * 0.9)
    n = workers or max(1, min(cores, usable // WORKER_MEMORY_BYTES))
    return n, usable // n


def start_client(scheduler: str | None = None, workers: int | None = None, processes: bool = True):
    """A ``distributed.Client`` and the cluster it started (None for an existing scheduler)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise CTSegError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
    import dask

    n, memory = local_cluster_size(workers)
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the
    # system sooner); with our large, short-lived arrays it made segmenting in a worker 2x slower
    # than in one process (chest sample: 6.1 s against 2.9 s; 3.4 s without it; see the README).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                               memory_limit=memory if processes else 0, dashboard_address=":0")
    return Client(cluster), cluster


@dataclass
class CohortResult:
    table: object  # pandas DataFrame
    out_dir: Path
    ran: int
    failures: int
    skipped: int
    listed: list[str]


def plan_run(sources, out_dir, targets, versions: dict[str, str] | None = None, registry=None):
    """(tasks to run, rows kept, all tasks, discovery notes, resolved models) for a run."""
    from napari_ctseg.segmentation.inference import parse_targets

    targets = parse_targets(targets, registry)
    found = discover(sources)
    if not found.tasks:
        raise CTSegError("no scans found in " + ", ".join(str(s) for s in sources))
    resolved = resolve_versions(targets, versions, registry)
    key = model_key(resolved)
    kept = _rows_of(read_table(out_dir))
    todo = [t for t in found.tasks if not _is_done(kept.get(t.scan_id), t, key)]
    return todo, kept, found, resolved, key


def with_previous(row: dict, old: dict | None) -> dict:
    """``row`` with what changed since the last successful run of the same scan: for each
    volume column ``<x>_ml`` (and ``lung_involvement_pct``) the value before as ``<x>_before``,
    and ``model_key_before``; a scan seen for the first time (or failed before) gets none."""
    if not old or old.get("status") != "ok" or row.get("status") != "ok":
        return row
    for col, value in old.items():
        if (col.endswith("_ml") or col == "lung_involvement_pct") and not col.endswith("_before"):
            row[f"{col}_before"] = value
    row["model_key_before"] = old.get("model_key", "")
    return row


def volume_changes(row: dict) -> dict[str, float]:
    """{volume column: new - before} for a re-run row (see ``with_previous``)."""
    out = {}
    for col in row:
        before = row.get(f"{col}_before")
        if col.endswith("_ml") and before is not None:
            try:
                new, old = float(row[col]), float(before)
            except (TypeError, ValueError):
                continue
            if new == new and old == old:
                out[col] = new - old
    return out


def _is_done(row: dict | None, task: ScanTask, key: str) -> bool:
    return bool(row) and row.get("status") == "ok" and row.get("fingerprint") == task.fingerprint \
        and row.get("model_key") == key


def run_cohort(sources, out_dir, targets="lungs,liver,infection", scheduler: str | None = None,
               workers: int | None = None, device: str = "auto", *, threads: int | None = None,
               versions: dict[str, str] | None = None, processes: bool = True, registry=None,
               ) -> Generator[CohortProgress, None, CohortResult]:
    """Segment every scan in ``sources`` on a Dask cluster; yields ``CohortProgress``, returns
    ``CohortResult`` (its ``table`` is also in ``out_dir/cohort.csv`` and ``.parquet``).

    ``scheduler``: address of an existing Dask scheduler (e.g. ``tcp://node:8786``); without it
    a ``LocalCluster`` of ``workers`` processes (default: sized to the machine) with one thread
    each. ``threads``: torch threads per task (default: the cores divided among a local
    cluster's workers; all the worker machine's cores with a scheduler). ``processes=False``
    runs the workers as threads of this process (tests). ``registry``: where the models are
    (a ``ModelRegistry``, sent to the workers, whose machines must see its folders; default:
    each worker's own ``ModelRegistry.default()``). Closing the generator cancels what is
    left; the rows finished so far stay in the table.
    """
    from distributed import as_completed

    from napari_ctseg.segmentation.inference import parse_targets

    targets = parse_targets(targets, registry)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo, kept, found, resolved, key = plan_run(sources, out_dir, targets, versions, registry)
    pinned = {t: r["version"] for t, r in resolved.items()}
    skipped = len(found.tasks) - len(todo)
    rows = dict(kept)
    t_start = time.perf_counter()
    if not todo:
        table = write_table(out_dir, rows.values())
        yield CohortProgress(0, 0, "nothing to do: every scan is done", skipped=skipped, eta_s=0.0)
        return CohortResult(table, out_dir, 0, 0, skipped, found.listed)

    client, cluster = start_client(scheduler, workers, processes)
    futures = []
    try:
        if threads is None and cluster is not None:
            threads = max(1, (os.cpu_count() or 1) // max(1, len(cluster.workers)))
        dashboard = getattr(client, "dashboard_link", None)
        yield CohortProgress(0, len(todo), f"{len(todo)} scans to segment on {_describe(client)}",
                             skipped=skipped, dashboard=dashboard)
        futures = client.map(segment_task, todo, out_dir=str(out_dir.resolve()), targets=targets,
                             versions=pinned, device=device, threads=threads, model_id=key, registry=registry,
                             key=[f"ctseg-{t.scan_id}-{key[-12:]}-{time.time_ns()}" for t in todo],
                             pure=False)
        by_key = {f.key: t for f, t in zip(futures, todo)}
        done = failures = 0
        for future in as_completed(futures):
            task = by_key[future.key]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died (memory, killed): a row all the same
                row = {"scan_id": task.scan_id, "path": task.path, "kind": task.kind,
                       "series_uid": task.series_uid, "fingerprint": task.fingerprint, "model_key": key,
                       "status": "failed", "error": f"worker lost: {type(exc).__name__}: {_one_line(exc)}"}
            future.release()
            rows[task.scan_id] = with_previous(row, kept.get(task.scan_id))
            write_table(out_dir, rows.values())
            done += 1
            failures += row.get("status") != "ok"
            elapsed = time.perf_counter() - t_start
            eta = elapsed / done * (len(todo) - done)
            yield CohortProgress(done, len(todo), f"{row['scan_id']}: {row['status']}", row["scan_id"],
                                 failures=failures, skipped=skipped, eta_s=eta, elapsed_s=elapsed,
                                 dashboard=dashboard, row=row)
    finally:
        if futures:
            client.cancel([f for f in futures if not f.done()])
        client.close()
        if cluster is not None:
            cluster.close()
    table = write_table(out_dir, rows.values())
    return CohortResult(table, out_dir, len(todo), failures, skipped, found.listed)


def _describe(client) -> str:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed: every worker by default
        info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
    return f"{len(workers)} Dask worker(s), {threads} thread(s) ({info.get('address', '?')})"


def run_to_end(*args, progress=None, **kwargs) -> CohortResult:
    """Run ``run_cohort`` inline (``jobs.run``); ``progress(CohortProgress)`` after each step."""
    from napari_ctseg.jobs import run

    return run(run_cohort(*args, **kwargs), on_event=progress)


# --- the report ----------------------------------------------------------------------------------

def _summary_columns(table) -> list[str]:
    cols = [c for c in table.columns if c.endswith("_ml") and not c.startswith("infection_")]
    cols += [c for c in ("lung_involvement_pct", "review_score", "seconds") if c in table]
    return cols


def cohort_summary(table):
    """Per figure (volumes in mL, % of lungs involved, review score, seconds): scans with a
    value, median, first and third quartile, minimum and maximum (DataFrame, one row each)."""
    import pandas as pd

    ok = table[table["status"] == "ok"] if "status" in table else table
    rows = []
    for c in _summary_columns(table):
        v = pd.to_numeric(ok[c], errors="coerce").dropna()
        if not len(v):
            rows.append({"figure": c, "n": 0})
            continue
        rows.append({"figure": c, "n": int(len(v)), "median": float(v.median()), "q1": float(v.quantile(0.25)),
                     "q3": float(v.quantile(0.75)), "min": float(v.min()), "max": float(v.max())})
    return pd.DataFrame(rows, columns=["figure", "n", "median", "q1", "q3", "min", "max"])


def cohort_report(out_dir) -> tuple[str, object, Path]:
    """The summary of a cohort folder: (text, summary DataFrame, PNG path).

    Writes ``cohort_summary.csv`` and ``cohort_report.png`` (% of lungs involved per scan and
    each target's volume across the cohort) into ``out_dir``.
    """
    out_dir = Path(out_dir)
    table = read_table(out_dir)
    if not len(table):
        raise CTSegError(f"{out_dir}: no cohort table here ({TABLE_CSV}); run 'ctseg cohort run' first")
    summary = cohort_summary(table)
    _atomic(out_dir / REPORT_CSV, lambda p: summary.to_csv(p, index=False))
    png = out_dir / REPORT_PNG
    _atomic(png, lambda p: _plot(table, p))
    counts = table["status"].value_counts().to_dict()
    lines = [f"{len(table)} scans: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for r in summary.itertuples():
        if r.n:
            lines.append(f"  {r.figure:32s} n={r.n:<5d} median {r.median:10.2f}  IQR {r.q1:.2f}..{r.q3:.2f}")
    failed = table[table["status"] != "ok"]
    for r in failed.head(10).itertuples():
        lines.append(f"  failed {r.scan_id}: {r.error}")
    if "review_score" in table:
        top = table[table["status"] == "ok"].sort_values("review_score", ascending=False).head(5)
        if len(top):
            lines.append("  review first: " + ", ".join(f"{r.scan_id} ({r.review_score:.3f})"
                                                        for r in top.itertuples()))
    lines.append(f"  wrote {out_dir / REPORT_CSV} and {png}")
    return "\n".join(lines), summary, png


def _plot(table, path: Path) -> None:
    """% of lungs involved per scan (sorted bars), then one box plot (with the scans as dots)
    per target's volume in mL: each on its own axis, their scales differ."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    ok = table[table["status"] == "ok"] if "status" in table else table
    vol_cols = [c for c in ("lungs_ml", "liver_ml", "infection_ml") if c in ok]
    fig, axes = plt.subplots(1, 1 + len(vol_cols), figsize=(4.2 + 2.4 * len(vol_cols), 4.2), dpi=100,
                             gridspec_kw={"width_ratios": [2.2] + [1] * len(vol_cols)}, squeeze=False)
    ax = axes[0, 0]
    pct = pd.to_numeric(ok.get("lung_involvement_pct", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(pct):
        pct = pct.sort_values()
        ax.bar(range(len(pct)), pct.to_numpy(), color="#c0504d", width=0.9)
        ax.set_xlabel(f"scans, sorted ({len(pct)})")
        ax.set_xticks([])
    else:
        ax.text(0.5, 0.5, "no infection figures", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("lung involved by infection (%)")
    ax.set_title("% of lungs involved")
    for ax, col in zip(axes[0, 1:], vol_cols):
        d = pd.to_numeric(ok[col], errors="coerce").dropna().to_numpy()
        if len(d):
            ax.boxplot([d], widths=0.5, showfliers=False)
            ax.scatter(1 + np.random.default_rng(0).uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6,
                       color="#1f77b4", zorder=3)
        ax.set_xticks([1], [col.removesuffix("_ml")])
        ax.set_ylabel("mL")
        ax.set_title(f"{col.removesuffix('_ml')} volume")
    fig.suptitle(f"cohort: {len(table)} scans, {len(ok)} segmented")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


__all__ = ["ScanTask", "Discovery", "discover", "resolve_versions", "model_key", "segment_task",
           "run_cohort", "run_to_end", "CohortProgress", "CohortResult", "write_table", "read_table",
           "cohort_summary", "cohort_report", "flip_disagreement", "local_cluster_size", "start_client"]
