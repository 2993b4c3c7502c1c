"""Where an organ model's errors lie on its validation cases, and how each expert drew the edge.

For every bundled version of a target (default: liver) and each validation case, segments
the scan as a user gets it (``evaluation.evaluate``, post-processing included) and prints:

  * missed (FN) and extra (FP) volume in mL, split by the in-plane distance of each wrong
    voxel from the expert's edge: up to 1 mm, 1-3 mm (about one pixel of a 128-pixel
    network grid on a body), beyond 3 mm (real misses);
  * the expert mask's edge convention: the median HU inside the organ (over 5 mm deep), of
    its outermost ring of voxels, and of the first and second rings outside it. An expert
    who draws through the partial-volume voxels (inner ring far below the interior) and one
    who draws inside them (inner ring near the interior) disagree by about a voxel all round,
    which at 0.6-0.8 mm voxels is worth 0.01-0.02 Dice on a liver.

Diagnosis, not a goal: ``benchmarks/accuracy.py`` holds the figures the README quotes.

Run: .venv/bin/python benchmarks/edge_errors.py [--data ../shared/data] [--target liver]
     [--cases liver_chaos03,...] [--versions v1,v2]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _setup import argument_parser, data_folder, use_source_tree

BANDS_MM = (1.0, 3.0)


def edge_figures(pred, ref, hu, spacing) -> dict[str, float]:
    """FN/FP mL by in-plane distance from the expert's edge, and the expert edge's HU rings."""
    import numpy as np
    from scipy import ndimage

    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    hu = np.asarray(hu, dtype=np.float32)
    in_plane = (1e6,) + tuple(float(s) for s in spacing[1:])  # distances within each slice only
    depth_in = ndimage.distance_transform_edt(ref, sampling=in_plane)
    depth_out = ndimage.distance_transform_edt(~ref, sampling=in_plane)
    ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, float] = {}
    for name, wrong, depth in (("fn", ref & ~pred, depth_in), ("fp", pred & ~ref, depth_out)):
        d = depth[wrong]
        edges = (0.0,) + BANDS_MM + (np.inf,)
        for lo, hi in zip(edges[:-1], edges[1:]):
            out[f"{name}_{lo:g}_{hi:g}"] = float(np.count_nonzero((d > lo) & (d <= hi))) * ml
    ring = np.zeros((3, 3, 3), dtype=bool)
    ring[1] = ndimage.generate_binary_structure(2, 1)
    inner = ref & ~ndimage.binary_erosion(ref, ring)
    out1 = ndimage.binary_dilation(ref, ring) & ~ref
    out2 = ndimage.binary_dilation(ref | out1, ring) & ~(ref | out1)
    deep = depth_in > 5.0
    for name, sel in (("hu_interior", deep), ("hu_edge_in", inner), ("hu_edge_out1", out1), ("hu_edge_out2", out2)):
        out[name] = float(np.median(hu[sel])) if sel.any() else float("nan")
    return out


def main(argv=None) -> int:
    parser = argument_parser(__doc__, data_help="the shared data folder")
    parser.add_argument("--target", default="liver")
    parser.add_argument("--cases", default=None, help="cases (default: the target's validation split)")
    parser.add_argument("--versions", default=None, help="versions (default: every bundled one)")
    args = parser.parse_args(argv)

    use_source_tree()
    from napari_ctseg.evaluation.evaluate import evaluate, load_split, read_reference_volume
    from napari_ctseg.io import read_scan
    from napari_ctseg.models.registry import list_versions, version_source

    data = data_folder(args.data, "edge_errors", hint="")
    if data is None:
        return 2
    cases = args.cases.split(",") if args.cases else load_split(args.target, "validation")
    versions = (args.versions.split(",") if args.versions else
                [c.version for c in list_versions(args.target) if version_source(c) == "bundled"])
    out = Path(tempfile.mkdtemp(prefix="ctseg-edges-"))
    head = (f"{'version':<8} {'case':<22} {'Dice':>6} | {'FN mL <=1':>9} {'1-3':>6} {'>3 mm':>6} | "
            f"{'FP mL <=1':>9} {'1-3':>6} {'>3 mm':>6}")
    rows, conventions = [head, "-" * len(head)], {}
    for version in versions:
        report = evaluate(args.target, data, out / version, version=version, cases=cases, device="cpu")
        for c in report.cases:
            scan = read_scan(data / c.name / "ct.nii.gz")
            ref, pred = (scan.geometry.to_display(read_reference_volume(path, scan.geometry, args.target))
                         for path in (data / c.name / f"{args.target}.nii.gz", out / version / f"{c.name}.nii.gz"))
            f = edge_figures(pred, ref, scan.hu, scan.spacing)
            conventions[c.name] = f
            rows.append(f"{version:<8} {c.name:<22} {c.dice:>6.3f} | {f['fn_0_1']:>9.1f} {f['fn_1_3']:>6.1f} "
                        f"{f['fn_3_inf']:>6.1f} | {f['fp_0_1']:>9.1f} {f['fp_1_3']:>6.1f} {f['fp_3_inf']:>6.1f}")
    print("\n".join(rows))
    print(f"\nexpert edge (median HU): {'case':<22} {'interior':>8} {'edge ring':>9} {'1st out':>8} {'2nd out':>8}")
    for name, f in conventions.items():
        print(f"{'':<24} {name:<22} {f['hu_interior']:>8.0f} {f['hu_edge_in']:>9.0f} "
              f"{f['hu_edge_out1']:>8.0f} {f['hu_edge_out2']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
