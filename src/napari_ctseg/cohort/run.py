"""Cohorts: segment an archive of scans on a Dask cluster, one row per scan (Qt-free).

``run_cohort`` is a generator: it finds the scans (``discover``), sends them to a Dask
``distributed`` cluster (a ``LocalCluster`` sized to this machine, or an existing
scheduler), yields a ``CohortProgress`` after every finished scan and returns the table.
Each task (``segment_task``, run on a worker) reads one scan, segments it with
``napari_ctseg.segmentation.inference``, writes its masks on the scan's exact geometry
under ``OUT/<scan id>/<target>.nii.gz`` and returns one row; the rows go to the cohort
table (``table``) after every finished scan. Running again skips the scans already done
with the same input (path, size and modification time of its files) and the same model
versions (name and sha256).

Review score (column ``review_score``, 0..1, higher = look first): flip test-time
augmentation on a subsample of slices. For each target, up to ``REVIEW_SLICES`` slices
holding its mask (evenly spaced; any slices when the mask is empty) are predicted again
with the image mirrored left-right; the score is 1 - IoU of the foreground of the two
predictions (on the network's grid), averaged over the targets. A model that is sure of a
scan gives the same answer mirrored; a doubtful boundary or a false positive does not.
It costs two extra network passes over at most ``REVIEW_SLICES`` slices per target.
"""
from __future__ import annotations

import os
import re
import resource
import threading
import time
import traceback
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ctseg.cohort.discover import ScanTask, discover
from napari_ctseg.cohort.table import read_table, rows_by_scan, with_previous, write_table
# Once here: still importable from here for _napari/widgets/cohort.py and users' scripts.
from napari_ctseg.cohort.table import TABLE_CSV, TABLE_PARQUET, cohort_report, volume_changes  # noqa: F401
from napari_ctseg.errors import CTSegError
from napari_ctseg.jobs import Progress

REVIEW_SLICES = 6
# Memory a worker should have for one chest CT (512 x 512 x 300 in int16, masks, network).
WORKER_MEMORY_BYTES = 3 * 2**30


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
                 device: str = "auto", threads: int | None = None, model_id: str = "", registry=None,
                 seg: bool = False, rtstruct: bool = False) -> dict:
    """Segment one scan on a worker: masks under ``out_dir/<scan id>/``, one row returned.

    Never raises for a bad scan or a model error: the row's status is "failed" and its
    error says why, so the rest of the cohort goes on.
    """
    started = time.time()
    t0 = time.perf_counter()
    row: dict = {"scan_id": task.scan_id, "path": task.path, "kind": task.kind, "series_uid": task.series_uid,
                 "fingerprint": task.fingerprint, "model_key": model_id, "status": "failed", "error": ""}
    try:
        row.update(_segment_row(task, Path(out_dir), targets, versions, device, threads, registry, seg, rtstruct))
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


def _segment_row(task: ScanTask, out_dir: Path, targets, versions, device, threads, registry=None,
                 seg: bool = False, rtstruct: bool = False) -> dict:
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
    seg_note = ""
    if seg:  # DICOM SEG beside the NIfTI masks (the review reads those), where the scan can carry one
        from napari_ctseg.io.dicom_objects import check_seg_source

        try:
            check_seg_source(volume, volume.name)
            for t in result.masks:
                result.write_seg(t, volume, folder / f"{t}.dcm")
        except CTSegError as exc:
            seg_note = f"no DICOM SEG: {_one_line(exc)}"
    if rtstruct:  # one RT Structure Set with every target's ROIs, likewise
        from napari_ctseg.io.dicom_objects import check_dicom_source

        try:
            check_dicom_source(volume, volume.name, "RTSTRUCT")
            result.write_rtstruct(volume, folder / "rtstruct.dcm")
        except CTSegError as exc:
            seg_note = f"no RTSTRUCT: {_one_line(exc)}"
    row: dict = {
        "name": volume.name,
        "shape_zyx": "x".join(str(s) for s in volume.shape),
        "spacing_zyx_mm": "x".join(f"{s:.4g}" for s in volume.spacing),
        "device": result.device,
        "lung_involvement_pct": result.lung_involvement_pct,
        "caveats": ";".join(c.code for c in result.caveats),  # doubts about that figure (caveats.py)
        "warnings": " | ".join(volume.warnings + result.notes + ([seg_note] if seg_note else [])),
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
    kept = rows_by_scan(read_table(out_dir))
    todo = [t for t in found.tasks if not _is_done(kept.get(t.scan_id), t, key)]
    return todo, kept, found, resolved, key


def _is_done(row: dict | None, task: ScanTask, key: str) -> bool:
    return bool(row) and row.get("status") == "ok" and row.get("fingerprint") == task.fingerprint \
        and row.get("model_key") == key


def run_cohort(sources, out_dir, targets="lungs,liver,infection", scheduler: str | None = None,
               workers: int | None = None, device: str = "auto", *, threads: int | None = None,
               versions: dict[str, str] | None = None, processes: bool = True, registry=None,
               seg: bool = False, rtstruct: bool = False) -> Generator[CohortProgress, None, CohortResult]:
    """Segment every scan in ``sources`` on a Dask cluster; yields ``CohortProgress``, returns
    ``CohortResult`` (its ``table`` is also in ``out_dir/cohort.csv`` and ``.parquet``).

    ``scheduler``: address of an existing Dask scheduler (e.g. ``tcp://node:8786``); without it
    a ``LocalCluster`` of ``workers`` processes (default: sized to the machine) with one thread
    each. ``threads``: torch threads per task (default: the cores divided among a local
    cluster's workers; all the worker machine's cores with a scheduler). ``processes=False``
    runs the workers as threads of this process (tests). ``registry``: where the models are
    (a ``ModelRegistry``, sent to the workers, whose machines must see its folders; default:
    each worker's own ``ModelRegistry.default()``). ``seg``: also ``<target>.dcm``, a DICOM SEG,
    for each DICOM scan that can carry one (others say why in their row's warnings); ``rtstruct``:
    also ``rtstruct.dcm``, an RT Structure Set of every target's ROIs, likewise. Closing the
    generator cancels what is left; the rows finished so far stay in the table.
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
                             seg=seg, rtstruct=rtstruct,
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


__all__ = ["resolve_versions", "model_key", "worker_models", "segment_task", "flip_disagreement",
           "run_cohort", "run_to_end", "plan_run", "CohortProgress", "CohortResult", "local_cluster_size",
           "machine_resources", "start_client"]
