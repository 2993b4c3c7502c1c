"""Segment volume speed and memory, beside lungmask R231, and the GUI's longest stall.

Prints, on this machine:
  * seconds per target and for all three on a real 512x512 CT from ../shared/data and on
    synthetic 512x512x300 and 512x512x600 volumes (CPU), with each run's peak RSS;
  * the lungmask R231 pipeline (``pip install lungmask``) on the same real scan. Its weights
    cannot be downloaded here, so its U-Net gets random weights: the time is the same;
  * with ``--gui``: the longest event-loop stall of a real napari viewer (under Xvfb)
    while the Segment volume widget segments the real scan.
Goals: lungs >= 10x faster than lungmask on CPU; all three targets on 512x512x300 in
<= 30 s on 2 CPU cores; <= 2 GB peak RAM at x600; GUI stall <= 100 ms.

Run: .venv/bin/python benchmarks/speed.py [--device cpu] [--gui] [--skip-lungmask]
Each measurement runs in its own process so its peak memory is its own.
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

from _setup import DATA

REAL = DATA / "liver_ircad01" / "ct.nii.gz"
TARGETS = ("lungs", "liver", "infection")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_volume(n_slices: int):
    """A body-like 512x512xN HU volume (int16): body, two lungs, a liver-like block."""
    from napari_ctseg.io._common import build_volume

    yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
    body = (xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1
    lung_r = ((xx + 0.4) / 0.28) ** 2 + ((yy + 0.05) / 0.45) ** 2 < 1
    lung_l = ((xx - 0.4) / 0.28) ** 2 + ((yy + 0.05) / 0.45) ** 2 < 1
    liver = ((xx + 0.35) / 0.35) ** 2 + ((yy - 0.1) / 0.4) ** 2 < 1
    upper = np.where(body, 40, -1000).astype(np.int16)
    upper[lung_r | lung_l] = -850
    lower = np.where(body, 40, -1000).astype(np.int16)
    lower[liver] = 60
    vol = np.empty((512, 512, n_slices), np.int16)  # source (i, j, k)
    for k in range(n_slices):
        vol[:, :, k] = (upper if k > n_slices // 2 else lower).T
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    return build_volume(vol, affine, name=f"synthetic x{n_slices}", source_path="", source_kind="nifti")


def child_ours(source: str, targets: str, device: str, versions: str = "{}") -> dict:
    import torch

    from napari_ctseg.segmentation.inference import ModelSet, segment
    from napari_ctseg.io import read_scan

    volume = synthetic_volume(int(source[1:])) if source.startswith("x") else read_scan(source)
    models = ModelSet(json.loads(versions))
    for t in targets.split(","):  # load (and check) the weights outside the timing
        models.get(t, torch.device("cuda" if device == "cuda" else "cpu"))
    t0 = time.perf_counter()
    result = segment(volume, targets, device, models=models)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "per_target": result.seconds, "peak_mib": peak_rss_mib(),
            "device": result.device, "shape": list(volume.shape),
            "voxels": {t: int(np.count_nonzero(m)) for t, m in result.masks.items()}}


def child_lungmask(source: str) -> dict:
    import SimpleITK as sitk
    import torch
    from lungmask import LMInferer
    from lungmask.resunet import UNet

    torch.manual_seed(0)
    net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "r231_random.pth"
        torch.save(net.state_dict(), weights)
        inferer = LMInferer(modelpath=str(weights), force_cpu=True, tqdm_disable=True)
        image = sitk.ReadImage(source)
        t0 = time.perf_counter()
        inferer.apply(image)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": peak_rss_mib()}


def child_gui(source: str, versions: str = "{}") -> dict:
    """Longest gap between 10 ms timer ticks while the widget segments ``source`` (with the
    versions ``{target: version}`` picked in its version boxes; the active ones otherwise)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from _gui_stall import StallMeter, settle, spin
    from napari_ctseg._napari.widgets.segment import SegmentWidget

    viewer = napari.Viewer(show=True)
    viewer.open(source, plugin="napari-ctseg")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.device_combo.setCurrentIndex(1)
    for target, version in json.loads(versions).items():
        combo = widget.version_combos[target]
        combo.setCurrentIndex(combo.findData(version))
    app = QApplication.instance()
    settle(app)
    # Two phases: the run, and adding the result's Labels layers once the result is in.
    with StallMeter(lambda: "adding" if widget.result is not None else "run") as meter:
        t0 = time.perf_counter()
        widget.start()
        spin(app, lambda: widget.worker is None)
        end = time.perf_counter() + 0.5  # catch the gap of adding the result layers too
        spin(app, lambda: time.perf_counter() >= end)
    total = time.perf_counter() - t0
    used = dict(widget.result.versions) if widget.result is not None else {}
    viewer.close()
    return {**meter.figures(), "adding_layers_max_ms": meter.figures("adding")["max_stall_ms"],
            "seconds": total, "versions": used}


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--gui", action="store_true", help="also measure the GUI stall (needs a display or Xvfb)")
    parser.add_argument("--skip-lungmask", action="store_true")
    parser.add_argument("--sizes", default="x300,x600")
    parser.add_argument("--rows", default="lungs,liver,infection,all",
                        help="which timings: any of lungs, liver, infection, all (the three together)")
    parser.add_argument("--model", action="append", default=[], metavar="TARGET=VERSION",
                        help="a version other than the active one, e.g. --model liver=v2")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        out = {"ours": lambda: child_ours(*rest), "lungmask": lambda: child_lungmask(*rest),
               "gui": lambda: child_gui(*rest)}[kind]()
        print(json.dumps(out))
        return

    import torch

    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"device {args.device}")
    from napari_ctseg.models.registry import active_version
    chosen = dict(m.split("=", 1) for m in args.model)
    print("models: " + ", ".join(f"{t} {chosen.get(t) or active_version(t)}" for t in TARGETS))
    rows = []
    sources = ([str(REAL)] if REAL.is_file() else []) + args.sizes.split(",")
    for source in sources:
        name = Path(source).parent.name if source.endswith(".nii.gz") else f"synthetic 512x512{source}"
        wanted = [",".join(TARGETS) if r == "all" else r for r in args.rows.split(",")]
        if not REAL.is_file() or source != str(REAL):
            wanted = [",".join(TARGETS)] if "all" in args.rows.split(",") else wanted
        if source == str(REAL) and "lungs" not in wanted and not args.skip_lungmask:
            wanted.insert(0, "lungs")  # the lungmask comparison needs it
        for targets in wanted:
            if source.startswith("x") and targets == "infection":
                continue  # infection alone segments the lungs first: the all-targets row covers it
            r = run_child("ours", source, targets, args.device, json.dumps(chosen))
            label = "all three" if "," in targets else targets
            rows.append((name, label, r))
            per = ", ".join(f"{t} {v:.2f}" for t, v in r["per_target"].items()) if "," in targets else ""
            print(f"{name:28} {label:10} {r['seconds']:7.2f} s   peak RSS {r['peak_mib']:6.0f} MiB   "
                  f"({r['device']}, shape {'x'.join(map(str, r['shape']))}){'  ' + per if per else ''}",
                  flush=True)
    if not args.skip_lungmask and REAL.is_file():
        lm = run_child("lungmask", str(REAL))
        ours = next(r for n, t, r in rows if t == "lungs" and n == REAL.parent.name)
        print(f"{REAL.parent.name:28} {'lungmask':10} {lm['seconds']:7.2f} s   peak RSS {lm['peak_mib']:6.0f} MiB   "
              f"(R231 U-Net, random weights, CPU)")
        print(f"lungs: ours {ours['seconds']:.2f} s vs lungmask R231 {lm['seconds']:.2f} s: "
              f"{lm['seconds'] / ours['seconds']:.1f}x faster")
    if args.gui and REAL.is_file():
        g = run_child("gui", str(REAL), json.dumps(chosen))
        print(f"GUI while segmenting {REAL.parent.name} (all three: "
              f"{', '.join(f'{t} {v}' for t, v in g['versions'].items())}; CPU): longest event-loop stall "
              f"{g['max_stall_ms']:.0f} ms, 99th percentile {g['p99_stall_ms']:.0f} ms, "
              f"{g['ticks']} ticks over {g['seconds']:.1f} s; adding the result layers then stalls up to "
              f"{g['adding_layers_max_ms'] or 0:.0f} ms")


if __name__ == "__main__":
    main()
