"""What every reader does once it has the source voxels: HU checks and reorientation."""
from __future__ import annotations

import numpy as np
from nibabel.affines import obliquity

from napari_ctseg.io.volume import CTVolume, Geometry, looks_like_hu

NAN_FILL_HU = -1024
OBLIQUE_TOLERANCE_DEG = 1.0


def hu_dtype(lo: float, hi: float, integral: bool) -> np.dtype:
    """int16 when the HU values are whole numbers inside int16's range, else float32."""
    if integral and -32768 <= lo and hi <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def build_volume(source: np.ndarray, affine: np.ndarray, *, name: str, source_path: str,
                 source_kind: str, nifti_header: bytes | None = None,
                 warnings: list[str] | None = None) -> CTVolume:
    """A CTVolume from a source-layout (i, j, k) HU array and its voxel-to-RAS affine.

    Non-finite values are replaced by -1024 HU (with a warning); the array is reoriented
    to the display layout by a view (no copy) where numpy allows it.
    """
    warnings = list(warnings or [])
    if source.dtype.kind == "f":
        bad = ~np.isfinite(source)
        n_bad = int(bad.sum())
        if n_bad:
            if not source.flags.writeable:
                source = source.copy()
            source[bad] = NAN_FILL_HU
            warnings.append(
                f"{n_bad} voxel(s) were NaN or infinite; they are shown as {NAN_FILL_HU} HU "
                "(the file on disk is unchanged)"
            )
    hu_warning = looks_like_hu(source)
    if hu_warning:
        warnings.append(hu_warning)
    angles = np.degrees(obliquity(affine))
    if np.nanmax(np.abs(angles)) > OBLIQUE_TOLERANCE_DEG:
        warnings.append(
            f"the scan is oblique ({np.nanmax(np.abs(angles)):.1f} degrees off the patient axes): "
            "it is shown on the nearest axes, and masks are saved on its true geometry"
        )
    geometry = Geometry.for_source(affine, source.shape, source_path=source_path,
                                   source_kind=source_kind, nifti_header=nifti_header)
    display = geometry.to_display(source)
    return CTVolume(hu=display, geometry=geometry, name=name, warnings=warnings)
