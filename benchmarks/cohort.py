"""Cohort throughput: sequential segmenting vs ``run_cohort`` on a local Dask cluster.

A cohort of at least 20 scans: real ones from ../shared/data (read in place, never copied)
and synthetic body phantoms of several sizes written to a temporary folder. It is segmented
(all three targets, bundled models, CPU):

  * sequentially in one process, as ``ctseg segment`` does (read, segment, write the masks;
    models loaded once), in a child process so that its peak memory is its own;
  * with ``run_cohort`` on a LocalCluster of 1 and of 2 worker processes.

Printed: scans per minute; the scheduler's overhead per task (a worker's wall time between
its first task's start and its last task's end, minus its tasks' own seconds, per task, as
% of a task's mean seconds; and end to end, cluster start included); peak memory per worker;
and a plan for a 10,000-scan archive with figures per worker.

Run: .venv/bin/python benchmarks/cohort.py [--quick] [--workers 1,2]
(--quick: 20 smaller scans, a few minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _setup import DATA, REPO

TARGETS = "lungs,liver,infection"
REAL_QUICK = ["sample/ct.nii.gz", "liver_dcmqi_3slice/dicom", "chest_lungdx_a0001/dicom", "liver_chaos03/ct.nii.gz"]
REAL_FULL = REAL_QUICK + ["liver_ircad01/ct.nii.gz", "liver_ircad07/ct.nii.gz", "chest_itk00/ct.nii.gz",
                          "chest_ctmd_covid_p001/dicom", "chest_ctmd_normal001/dicom"]
# (in-plane size, slices, how many)
SYNTH_QUICK = [(128, 24, 4), (256, 32, 4), (384, 40, 4), (512, 48, 4)]
SYNTH_FULL = [(128, 32, 4), (256, 64, 4), (384, 96, 4), (512, 128, 4), (512, 300, 2)]


def write_phantom(path: Path, size: int, n_slices: int, seed: int) -> Path:
    """A body-like HU phantom (int16): body, two lungs with a patch of ground glass, a liver."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    body = (xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1
    lung_r = ((xx + 0.4) / 0.28) ** 2 + ((yy + 0.05) / 0.45) ** 2 < 1
    lung_l = ((xx - 0.4) / 0.28) ** 2 + ((yy + 0.05) / 0.45) ** 2 < 1
    ggo = ((xx + 0.45 + rng.uniform(-.05, .05)) / 0.1) ** 2 + ((yy - 0.1) / 0.12) ** 2 < 1
    liver = ((xx + 0.35) / 0.35) ** 2 + ((yy - 0.1) / 0.4) ** 2 < 1
    upper = np.where(body, 40, -1000).astype(np.int16)
    upper[lung_r | lung_l] = -850
    upper[ggo & lung_r] = -500
    lower = np.where(body, 40, -1000).astype(np.int16)
    lower[liver] = 60
    vol = np.empty((size, size, n_slices), np.int16)
    for k in range(n_slices):
        vol[:, :, k] = (upper if k > n_slices // 2 else lower).T
    vol += rng.integers(-8, 9, size=vol.shape, dtype=np.int16)
    mm = 350.0 / size
    img = nib.Nifti1Image(vol, np.diag([-mm, -mm, 2.5, 1.0]))
    nib.save(img, str(path))
    return path


def build_cohort(folder: Path, quick: bool) -> list[Path]:
    real = [DATA / p for p in (REAL_QUICK if quick else REAL_FULL) if (DATA / p).exists()]
    synth = []
    for i, (size, n, count) in enumerate(SYNTH_QUICK if quick else SYNTH_FULL):
        for j in range(count):
            synth.append(write_phantom(folder / f"phantom_{size}x{size}x{n}_{j}.nii.gz", size, n, seed=100 * i + j))
    return real + synth


def sequential(sources: list[str], out: str) -> dict:
    """``ctseg segment``'s loop in this process: one ModelSet, read, segment, write masks."""
    from napari_ctseg.cohort.discover import discover
    from napari_ctseg.segmentation.inference import ModelSet, segment
    from napari_ctseg.io import read_scan, write_mask

    tasks = discover(sources).tasks
    models = ModelSet()
    t0 = time.perf_counter()
    seconds = []
    for task in tasks:
        s0 = time.perf_counter()
        volume = read_scan(task.path)
        result = segment(volume, TARGETS, "cpu", models=models)
        for t, m in result.masks.items():
            write_mask(Path(out) / task.scan_id / f"{t}.nii.gz", m, volume.geometry)
        seconds.append(time.perf_counter() - s0)
    wall = time.perf_counter() - t0
    return {"scans": len(tasks), "wall_s": wall, "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def with_dask(sources: list[Path], out: Path, workers: int) -> dict:
    import pandas as pd

    from napari_ctseg.cohort.run import run_cohort

    t0 = time.perf_counter()
    started = None
    steps = run_cohort(sources, out, TARGETS, workers=workers, device="cpu")
    try:
        while True:
            report = next(steps)
            if started is None:
                started = time.perf_counter()  # the cluster is up, tasks submitted
    except StopIteration as stop:
        result = stop.value
    wall = time.perf_counter() - t0
    table = pd.read_parquet(out / "cohort.parquet")
    ok = table[table["status"] == "ok"]
    per_worker = {}
    for worker, rows in ok.groupby("worker"):
        span = float(rows["ended_at"].max() - rows["started_at"].min())
        busy = float(rows["seconds"].sum())
        per_worker[worker] = {"tasks": len(rows), "span_s": span, "busy_s": busy,
                              "gap_per_task_s": (span - busy) / len(rows), "peak_mb": float(rows["worker_peak_mb"].max())}
    task_mean = float(ok["seconds"].mean())
    run_wall = wall - (started - t0)
    return {"scans": len(table), "failed": int((table["status"] != "ok").sum()), "wall_s": wall,
            "startup_s": started - t0, "run_wall_s": run_wall, "task_mean_s": task_mean,
            "task_sum_s": float(ok["seconds"].sum()), "segment_sum_s": float(ok["segment_seconds"].sum()), "per_worker": per_worker, "workers": workers,
            "slices": int(sum(int(s.split("x")[0]) for s in ok["shape_zyx"])),
            "review_mean_s": None, "ran": result.ran,
            "out_bytes": sum(f.stat().st_size for f in out.rglob("*.nii.gz"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 smaller scans (a few minutes on 2 cores)")
    parser.add_argument("--workers", default="1,2", help="local cluster sizes to measure")
    parser.add_argument("--sequential-child", nargs=2, metavar=("SOURCES_JSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sequential_child:
        print(json.dumps(sequential(json.loads(args.sequential_child[0]), args.sequential_child[1])))
        return 0

    import torch

    from napari_ctseg.cohort.discover import discover
    from napari_ctseg.cohort.run import local_cluster_size, machine_resources
    from napari_ctseg.models.registry import get_card

    cores, memory = machine_resources()
    with tempfile.TemporaryDirectory(prefix="ctseg_cohort_bench_") as tmp:
        tmp = Path(tmp)
        (tmp / "synthetic").mkdir()
        sources = build_cohort(tmp / "synthetic", args.quick)
        n = len(discover(sources).tasks)
        models = ", ".join(f"{t} {get_card(t).version}" for t in TARGETS.split(","))
        print(f"machine: {platform.machine()}, {cores} cores, {memory / 2**30:.1f} GiB, torch {torch.__version__} "
              f"(CPU), {platform.python_version()}; models: {models}")
        print(f"cohort: {n} scans ({sum(1 for s in sources if str(s).startswith(str(DATA)))} real from "
              f"../shared/data, read in place; the rest synthetic phantoms of several sizes)")
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        proc = subprocess.run([sys.executable, __file__, "--sequential-child", json.dumps([str(s) for s in sources]),
                               str(tmp / "seq")], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(proc.stderr[-3000:])
            return 1
        seq = json.loads(proc.stdout.strip().splitlines()[-1])
        seq_rate = 60.0 * seq["scans"] / seq["wall_s"]
        print(f"load average before the sequential run: {os.getloadavg()[0]:.1f} (other jobs share the cores)")
        print(f"sequential (ctseg segment's loop, 1 process, {torch.get_num_threads()} torch threads): "
              f"{seq['scans']} scans in {seq['wall_s']:.1f} s = {seq_rate:.2f} scans/min; "
              f"mean {np.mean(seq['seconds']):.2f} s/scan; peak RSS {seq['peak_mb']:.0f} MB")
        results = {}
        for w in (int(v) for v in args.workers.split(",")):
            load = os.getloadavg()[0]
            r = with_dask(sources, tmp / f"dask{w}", w)
            results[w] = r
            _, mem_limit = local_cluster_size(w)
            gap = np.mean([p["gap_per_task_s"] for p in r["per_worker"].values()])
            e2e = (r["wall_s"] * w - r["task_sum_s"]) / r["task_sum_s"] * 100
            print(f"run_cohort, LocalCluster {w} worker(s) x 1 thread (torch threads {max(1, cores // w)}/task, "
                  f"memory limit {mem_limit / 2**30:.1f} GiB/worker): {r['scans']} scans ({r['failed']} failed) in "
                  f"{r['wall_s']:.1f} s = {60 * r['scans'] / r['wall_s']:.2f} scans/min "
                  f"({60 * r['scans'] / r['run_wall_s']:.2f} without the {r['startup_s']:.1f} s cluster start); "
                  f"load average before {load:.1f}")
            print(f"    task (read, segment, review score, write masks) mean {r['task_mean_s']:.2f} s; Dask overhead "
                  f"per task {gap * 1000:.0f} ms = {100 * gap / r['task_mean_s']:.2f} % of a task; end to end "
                  f"(cluster start, model loading, idle tail) {e2e:.1f} %")
            print(f"    of the tasks' time: segmenting {100 * r['segment_sum_s'] / r['task_sum_s']:.0f} %, the rest reading, "
                  "the review score (flip TTA) and writing the masks")
            for worker, p in sorted(r["per_worker"].items()):
                print(f"    worker {worker}: {p['tasks']} scans, busy {p['busy_s']:.1f} of {p['span_s']:.1f} s, "
                      f"peak RSS {p['peak_mb']:.0f} MB")
        best_w = max(results)
        r = results[best_w]
        per_worker_rate = 60 * r["scans"] / r["run_wall_s"] / best_w  # scans/min per worker
        s_per_slice = r["task_sum_s"] / max(r["slices"], 1)
        peak = max(p["peak_mb"] for p in r["per_worker"].values())
        per_scan_bytes = r["out_bytes"] / max(r["scans"], 1)
        print("plan for a 10,000-scan archive (figures per worker, from the run above; one worker = one "
              f"process with {max(1, cores // best_w)} core(s)):")
        chest_s = 300 * s_per_slice
        print(f"    this cohort's mix: {per_worker_rate:.2f} scans/min per worker; a typical chest CT "
              f"(512x512x300) at {s_per_slice:.3f} s/slice per worker ~ {chest_s:.0f} s")
        print(f"    memory per worker: peak {peak:.0f} MB here; give each worker >= {max(3.0, 2.5 * peak / 1024):.0f} GiB "
              "(a 512x512x600 scan peaks near 1.5 GB in one process: benchmarks/speed.py)")
        print(f"    disk: masks {per_scan_bytes / 2**20:.2f} MB/scan here -> {10000 * per_scan_bytes / 2**30:.1f} GiB; "
              "table ~ 10,000 rows (a few MB)")
        for workers in (2, 8, 32, 100):
            hours_mix = 10000 / (per_worker_rate * workers) / 60
            hours_chest = 10000 * chest_s / workers / 3600
            print(f"    {workers:4d} workers: {hours_mix:7.1f} h at this mix, {hours_chest:7.1f} h for 512x512x300 chest CTs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
