"""Make the bundled full chest sample from Lung-PET-CT-Dx A0001 (CC BY 4.0).

    python scripts/make_chest_sample.py --data ../shared/data --out src/napari_ctseg/data/chest_ct.nii.gz

Reads the DICOM series with napari-ctseg's reader, downsamples each axial slice from
512x512 to 192x192 (area-averaging, so 0.84 mm pixels become 2.23 mm; the 5 mm slices are
kept), and writes int16 HU as NIfTI on the same physical extent (the affine is the
scan's own, scaled about the voxel centres).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from skimage.transform import resize

from napari_ctseg.io import read_scan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _setup import argument_parser  # noqa: E402 - benchmarks/_setup.py: the set-up scripts share


def main(argv=None) -> int:
    ap = argument_parser()
    ap.add_argument("--out", default="src/napari_ctseg/data/chest_ct.nii.gz")
    ap.add_argument("--size", type=int, default=192)
    args = ap.parse_args(argv)
    vol = read_scan(f"{args.data}/chest_lungdx_a0001/dicom")
    hu = np.asarray(vol.hu, dtype=np.float32)
    nz, ny, nx = hu.shape
    small = resize(hu, (nz, args.size, args.size), order=1, anti_aliasing=True, preserve_range=True)
    small = np.clip(np.rint(small), -1024, 3071).astype(np.int16)
    f = np.array([1.0, ny / args.size, nx / args.size])
    aff = vol.geometry.display_affine.copy()
    # new voxel i's centre sits at old index (i + 0.5) * f - 0.5
    aff[:3, 3] = aff[:3, :3] @ (0.5 * f - 0.5) + aff[:3, 3]
    aff[:3, :3] = aff[:3, :3] * f
    img = nib.Nifti1Image(small, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, args.out)
    print(f"{args.out}: {small.shape} (z, y, x), spacing {tuple(np.round(vol.spacing * f, 3))} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
