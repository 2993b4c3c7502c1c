"""Time and peak memory to open a 512x512x300 CT, as NIfTI and as a DICOM series.

Prints our reader beside the raw libraries on the same files:
  NIfTI: nibabel ``np.asanyarray(nib.load(path).dataobj)``
  DICOM: pydicom ``dcmread`` + ``pixel_array`` of every file, stacked.
Goals: within 1.2x of the raw libraries; peak memory <= 2x the volume's HU array.
Then DICOM SEG and RTSTRUCT on that series: writing a two-lung mask with
``io.dicom_objects.write_seg`` / ``write_rtstruct`` and reading it back onto the CT with
``read_seg`` / ``read_rtstruct`` (median of --repeat, in this process).

Run: .venv/bin/python benchmarks/io.py [--slices 300] [--repeat 3]
Each measurement runs in a fresh process; memory is tracemalloc's peak of the read.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _make_files(folder: Path, n_slices: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from synthetic import write_dicom_series, write_nifti

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
    body = (xx / 0.85) ** 2 + (yy / 0.7) ** 2 < 1
    base = np.where(body, 40, -1000).astype(np.int16)
    slices = np.empty((n_slices, 512, 512), np.int16)
    for k in range(n_slices):
        slices[k] = base + rng.integers(-30, 30, size=(512, 512), dtype=np.int16)
    nii = folder / "ct.nii.gz"
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    write_nifti(nii, np.ascontiguousarray(slices.transpose(2, 1, 0)), affine)
    dcm = folder / "dicom"
    write_dicom_series(dcm, slices, spacing=(1.0, 0.7, 0.7), shuffle=True)
    return nii, dcm


def _run(kind: str, path: str) -> None:
    """One measurement (in a child process): prints JSON with seconds and peak bytes."""
    if kind == "ours":
        from napari_ctseg.io import read_scan

        def job():
            return read_scan(path).hu
    elif kind == "nibabel":
        import nibabel as nib

        def job():
            return np.asanyarray(nib.load(path).dataobj)
    elif kind == "pydicom":
        import pydicom

        def job():
            files = sorted(p for p in Path(path).iterdir() if p.is_file())
            return np.stack([pydicom.dcmread(f).pixel_array for f in files])
    else:
        raise SystemExit(kind)
    job_name = sys.argv[-1]
    if job_name == "memory":
        tracemalloc.start()
        arr = job()
        _, peak = tracemalloc.get_traced_memory()
        print(json.dumps({"peak": peak, "nbytes": int(arr.nbytes)}))
    else:
        t = time.perf_counter()
        arr = job()
        print(json.dumps({"seconds": time.perf_counter() - t, "nbytes": int(arr.nbytes)}))


def _measure(kind: str, path: Path, what: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), what],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run(args.child[0], args.child[1])
        return
    print(f"machine: {platform.node()} {platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        nii, dcm = _make_files(Path(tmp), args.slices)
        print(f"volume: 512x512x{args.slices} int16 ({512 * 512 * args.slices * 2 / 2**20:.0f} MiB HU array)")
        print(f"{'format':8} {'reader':9} {'median s':>9} {'ratio':>6} {'peak MiB':>9} {'peak/HU':>8}")
        for fmt, path, raw in (("NIfTI", nii, "nibabel"), ("DICOM", dcm, "pydicom")):
            times = {k: [] for k in ("ours", raw)}
            for _ in range(args.repeat):  # interleaved, so drift hits both alike
                for k in times:
                    times[k].append(_measure(k, path, "time")["seconds"])
            med = {k: statistics.median(v) for k, v in times.items()}
            for k in ("ours", raw):
                mem = _measure(k, path, "memory")
                print(f"{fmt:8} {k:9} {med[k]:9.3f} {med[k] / med[raw]:6.2f} {mem['peak'] / 2**20:9.0f} "
                      f"{mem['peak'] / mem['nbytes']:8.2f}")
        _seg_times(dcm, args.repeat)


def _round_trip(write, read, path: Path, repeat: int):
    """Median seconds to ``write(path)`` and to ``read(path)`` over ``repeat`` runs; the last read."""
    writes, reads, maps = [], [], None
    for _ in range(repeat):
        t = time.perf_counter()
        write(path)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        maps = read(path)
        reads.append(time.perf_counter() - t)
    return statistics.median(writes), statistics.median(reads), maps


def _seg_times(dcm: Path, repeat: int) -> None:
    """Write and read a DICOM SEG, then an RTSTRUCT, of two lung-sized ellipsoids on the series."""
    from napari_ctseg.io import read_scan
    from napari_ctseg.io.dicom_objects import read_seg, write_seg
    from napari_ctseg.io.dicom_objects.rtstruct import read_rtstruct, write_rtstruct

    ct = read_scan(dcm)
    z, y, x = np.ogrid[tuple(slice(0, n) for n in ct.hu.shape)]
    nz = ct.hu.shape[0]
    mask = np.zeros(ct.hu.shape, np.uint8)
    for value, cx in ((1, 170), (2, 342)):
        mask[((z - nz / 2) / (0.4 * nz)) ** 2 + ((y - 256) / 150.0) ** 2 + ((x - cx) / 80.0) ** 2 <= 1] = value
    names = {1: "right_lung", 2: "left_lung"}
    path = dcm.parent / "lungs_seg.dcm"
    w, r, maps = _round_trip(lambda p: write_seg(mask, names, ct, p, algorithm="napari-ctseg lungs v2"),
                             lambda p: read_seg(p, ct), path, repeat)
    frames = sum(int(m.data.any(axis=(1, 2)).sum()) for m in maps)
    print(f"DICOM SEG {path.stat().st_size / 2**20:.1f} MiB ({frames} frames of 2 segments): write "
          f"{w:.2f} s, read back onto the CT {r:.2f} s")
    # RTSTRUCT: contours traced per slice, filled back on reading
    path = dcm.parent / "lungs_rtstruct.dcm"
    w, r, maps = _round_trip(lambda p: write_rtstruct(mask, names, ct, p, algorithm="napari-ctseg lungs v2"),
                             lambda p: read_rtstruct(p, ct), path, repeat)
    values = {"rightlung": 1, "leftlung": 2}
    back = np.zeros_like(mask)
    for m in maps:
        for seg in m.segments:
            back[m.data == seg.value] = values.get(seg.name.lower().replace("_", "").replace(" ", ""), 255)
    print(f"RTSTRUCT {path.stat().st_size / 2**20:.1f} MiB (2 ROIs): write {w:.2f} s, read back onto the CT "
          f"{r:.2f} s; read back voxel for voxel: {bool(np.array_equal(back, mask))}")


if __name__ == "__main__":
    main()
