"""Mask editing speed: each tool of ``napari_ctseg.editing.tools`` on a 512x512x600 mask.

The mask holds two lung-sized ellipsoids (labels 1 and 2, about 2.6 L each: 250 x 180 x
110 mm at 0.8 x 0.7 x 0.7 mm) with small islands and holes (vessels) in label 1; the HU volume is
air/lung/soft tissue. Each operation runs ``--repeat`` times on the same mask (the mask
is not modified) and the median wall time is printed, beside the goal of 200 ms.

Then the napari side of a button: writing the changed voxels into a Labels layer (one
undo step) and undoing it, and what saving and the live volume cost.

Run: .venv/bin/python benchmarks/editing.py [--slices 600] [--repeat 3] [--no-napari]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from napari_ctseg.editing import tools as editing

SPACING = (0.8, 0.7, 0.7)  # (z, y, x) mm
GOAL_MS = 200.0


def lung_phantom(n_slices: int = 600, size: int = 512):
    z, y, x = np.ogrid[:n_slices, :size, :size]
    cz = n_slices // 2
    mask = np.zeros((n_slices, size, size), dtype=np.uint8)
    for label, cx in ((1, 160), (2, 352)):
        inside = ((z - cz) / 156.0) ** 2 + ((y - 250) / 128.0) ** 2 + ((x - cx) / 80.0) ** 2 < 1
        mask[inside] = label
    # islands near the right lung, holes (vessels) inside it
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.integers([cz - 140, 130, 50], [cz + 140, 370, 75])
        mask[c[0]:c[0] + 3, c[1]:c[1] + 3, c[2]:c[2] + 3] = 1
    for _ in range(40):
        c = rng.integers([cz - 100, 200, 130], [cz + 100, 300, 190])
        mask[c[0]:c[0] + 2, c[1]:c[1] + 4, c[2]:c[2] + 4] = 0
    hu = np.where(mask > 0, -850, 40).astype(np.int16)
    return mask, hu


def sparse_outlines(mask: np.ndarray, every: int = 10) -> np.ndarray:
    """Label 1 kept on every ``every``-th slice only: what fill-between-slices starts from."""
    out = mask.copy()
    keep = np.zeros(mask.shape[0], dtype=bool)
    keep[::every] = True
    out[~keep] = np.where(out[~keep] == 1, 0, out[~keep])
    return out


def timed(fn, repeat):
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-napari", action="store_true", help="skip the napari write/undo timings")
    args = ap.parse_args()
    mask, hu = lung_phantom(args.slices)
    outlines = sparse_outlines(mask)
    n1 = int(np.count_nonzero(mask == 1))
    box = editing.label_box(mask, 1)
    box_shape = tuple(s.stop - s.start for s in box)
    print(f"mask {mask.shape} uint8, spacing {SPACING} mm; label 1: {n1:,} voxels "
          f"({editing.label_volume_ml(mask, 1, SPACING):.0f} mL), box {box_shape}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s)")
    ops = [
        ("label_volume_ml", lambda: editing.label_volume_ml(mask, 1, SPACING)),
        ("label_box", lambda: editing.label_box(mask, 1)),
        ("interpolate_between_slices (every 10th slice outlined)",
         lambda: editing.interpolate_between_slices(outlines, 1, spacing=SPACING)),
        ("remove_islands keep=1", lambda: editing.remove_islands(mask, 1, keep=1)),
        ("fill_holes per axial slice", lambda: editing.fill_holes(mask, 1, mode="slice")),
        ("fill_holes 3D", lambda: editing.fill_holes(mask, 1, mode="3d")),
        ("grow 2 mm", lambda: editing.grow(mask, 1, 2.0, SPACING)),
        ("grow 5 mm", lambda: editing.grow(mask, 1, 5.0, SPACING)),
        ("shrink 2 mm", lambda: editing.shrink(mask, 1, 2.0, SPACING)),
        ("smooth open 2 mm", lambda: editing.smooth(mask, 1, 2.0, SPACING, "open")),
        ("smooth close 2 mm", lambda: editing.smooth(mask, 1, 2.0, SPACING, "close")),
        ("smooth median 2 mm", lambda: editing.smooth(mask, 1, 2.0, SPACING, "median")),
    ]
    grown = editing.grow(mask, 1, 2.0, SPACING)
    ops.append(("limit_edit_to_hu_range (grow 2 mm, lung)",
                lambda: editing.limit_edit_to_hu_range(grown, mask, hu, *editing.HU_RANGE_PRESETS["lung"])))
    ops.append(("changed_indices (grow 2 mm)", lambda: grown.changed_indices(mask)))
    print(f"{'operation':58s} {'ms':>8s}  changed voxels")
    for name, fn in ops:
        ms, result = timed(fn, args.repeat)
        changed = ""
        if isinstance(result, editing.RegionEdit):
            base = outlines if name.startswith("interpolate") else mask
            changed = f"{result.n_changed(base):,}"
        report(name, ms, changed)
    if not args.no_napari:
        napari_path(mask, args.repeat)


def report(name, ms, changed=""):
    flag = "" if ms <= GOAL_MS else "  (over the 200 ms goal)"
    print(f"{name:58s} {ms:8.0f}  {changed}{flag}", flush=True)


def napari_path(mask, repeat):
    """What the Mask tools button does after the tool: write the changed voxels with
    ``Labels.data_setitem`` (one undo step), then napari's undo of it."""
    from napari.layers import Labels

    from napari_ctseg.editing.tools import label_voxels as _label_voxels
    from napari_ctseg.editing.corrections import changed_slices, slice_digests

    layer = Labels(mask.copy())
    edit = editing.grow(mask, 1, 2.0, SPACING)
    write, undo = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        old = layer.data[edit.box]
        changed = old != edit.values
        local = np.nonzero(changed)
        layer.data_setitem(tuple(i + s.start for i, s in zip(local, edit.box)), edit.values[changed])
        write.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        layer.undo()
        undo.append((time.perf_counter() - t0) * 1000)
    assert np.array_equal(layer.data, mask)
    n = edit.n_changed(mask)
    report("napari: write grow 2 mm (data_setitem, one undo step)", float(np.median(write)), f"{n:,}")
    report("napari: undo it", float(np.median(undo)), f"{n:,}")
    ms, digests = timed(lambda: slice_digests(mask), repeat)
    report("slice digests (first seen; again when saving)", ms)
    ms, _ = timed(lambda: changed_slices(digests, mask), repeat)
    report("changed slices (at save)", ms)
    ms, _ = timed(lambda: _label_voxels(mask), repeat)
    report("voxels per label (at save)", ms)
    eq = None

    def recount():
        nonlocal eq
        eq = mask == 1
        return eq.reshape(eq.shape[0], -1).sum(axis=1, dtype=np.int64)

    ms, _ = timed(recount, repeat)
    report("live volume: full recount (layer/label change, undo)", ms)
    ms, _ = timed(lambda: (mask[300:301] == 1).reshape(1, -1).sum(axis=1), repeat)
    report("live volume: recount of one painted slice", ms)


if __name__ == "__main__":
    main()
