"""Make (and draw, for checking by eye) the silver-standard lung labels of the chest scans.

    python scripts/make_silver_lungs.py --data ../shared/data --out .scratch/silver [--png]

Writes <out>/<case>/lungs_silver.nii.gz on each scan's geometry, and with --png a montage of
every axial slice (red: right lung, green: left lung, blue: airways removed) and a coronal
view to check slice by slice, plus the volumes of lungs and airways.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_ctseg.io import read_scan, write_mask
from napari_ctseg.training.labels.silver import airway_mask, inside_body_air, silver_lung_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share

CASES = ["chest_itk00", "chest_lungdx_a0001", "chest_ctmd_normal001", "chest_ctmd_covid_p001",
         "liver_ircad01", "liver_ircad07", "liver_chaos03"]


def scan_path(data: Path, case: str) -> Path:
    folder = data / case
    return folder / "ct.nii.gz" if (folder / "ct.nii.gz").is_file() else folder / "dicom"


def montage(hu, labels, airways, path: Path, step: int = 1) -> None:
    from PIL import Image

    lo, hi = -1200.0, 300.0
    tiles = []
    for z in range(0, hu.shape[0], step):
        g = np.clip((hu[z].astype(np.float32) - lo) / (hi - lo), 0, 1)
        rgb = np.stack([g, g, g], -1)
        for v, col in ((1, (1, 0, 0)), (2, (0, 1, 0))):
            m = labels[z] == v
            rgb[m] = 0.6 * rgb[m] + 0.4 * np.asarray(col)
        a = airways[z]
        rgb[a] = 0.4 * rgb[a] + 0.6 * np.asarray((0, 0.3, 1))
        im = Image.fromarray((rgb * 255).astype(np.uint8)).resize((160, 160))
        tiles.append(np.asarray(im))
    cols = 12
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * 160, cols * 160, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * 160:(r + 1) * 160, c * 160:(c + 1) * 160] = t
    Image.fromarray(sheet).save(path)


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default=".scratch/silver")
    ap.add_argument("--cases", nargs="*", default=CASES)
    ap.add_argument("--png", action="store_true")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    for case in args.cases:
        vol = read_scan(scan_path(data, case))
        hu = np.asarray(vol.hu)
        labels = silver_lung_labels(hu, vol.spacing)
        air = airway_mask(hu, vol.spacing, inside_body_air(hu))
        ml = vol.voxel_volume_ml
        print(f"{case:24s} shape {hu.shape} right {np.sum(labels == 1) * ml:7.0f} mL  left "
              f"{np.sum(labels == 2) * ml:7.0f} mL  airways {air.sum() * ml:6.1f} mL", flush=True)
        (out / case).mkdir(parents=True, exist_ok=True)
        write_mask(out / case / "lungs_silver.nii.gz", labels, vol.geometry)
        if args.png:
            montage(hu, labels, air, out / case / "axial.png", step=max(1, hu.shape[0] // 72))
            cor = np.transpose(hu, (1, 0, 2))
            y = int(np.median(np.nonzero(air)[1])) if air.any() else hu.shape[1] // 2
            montage(cor[[y - 20, y, y + 20]], np.transpose(labels, (1, 0, 2))[[y - 20, y, y + 20]],
                    np.transpose(air, (1, 0, 2))[[y - 20, y, y + 20]], out / case / "coronal.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
