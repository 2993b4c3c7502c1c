"""The scan object: Hounsfield units on a (z, y, x) voxel grid, and the geometry to map back.

Axis order inside napari-ctseg is (z, y, x) in voxels and spacing is (z, y, x) in mm.
The display array is the source array reoriented (a permutation and flips only, never
resampled) so that:

* axis 0 (z) runs from superior to inferior (``I``),
* axis 1 (y) runs from anterior to posterior (``P``),
* axis 2 (x) runs from the patient's right to left (``L``).

With napari's default of rows downwards and columns to the right this gives the
radiological convention: axial slices show anterior up and the patient's right on the
screen's left; coronal and sagittal slices show superior up.  The reorientation is kept
(``CTVolume.geometry``) so that a mask drawn on the display array is written back onto
the source voxels exactly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nibabel import orientations as ornt

DISPLAY_AXCODES = ("I", "P", "L")
"""Orientation of the display array's axes (z, y, x), in nibabel's axis codes."""

METADATA_KEY = "ctseg"
"""Key of the geometry record inside a napari layer's ``metadata``."""


@dataclass(frozen=True)
class WindowPreset:
    """A CT display window: level (centre) and width, both in HU."""

    name: str
    level: float
    width: float

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) contrast limits in HU."""
        return (self.level - self.width / 2, self.level + self.width / 2)


# Level/width pairs as in 3D Slicer's CT presets and common radiology practice.
WINDOW_PRESETS: dict[str, WindowPreset] = {
    p.name: p
    for p in (
        WindowPreset("lung", -500, 1400),
        WindowPreset("mediastinum", 50, 350),
        WindowPreset("abdomen", 40, 350),
        WindowPreset("liver", 60, 160),
        WindowPreset("bone", 400, 1000),
    )
}
DEFAULT_WINDOW = "abdomen"


def window_presets() -> dict[str, WindowPreset]:
    """The CT window presets, by name (lung, mediastinum, abdomen, liver, bone)."""
    return dict(WINDOW_PRESETS)


@dataclass
class DicomSeries:
    """The DICOM series a scan was read from, as a DICOM SEG or RTSTRUCT refers to it.

    Per source slice ``k`` (the third axis of the source array, slices in increasing position
    along the normal): its SOP Instance UID, ImagePositionPatient (LPS mm; empty when the
    files carry none) and file. Plain types only, so it travels in a layer's metadata.
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str  # "" when the series has none
    sop_class_uid: str
    sop_instance_uids: list[str]
    positions: list[list[float]]
    orientation: list[float]  # ImageOrientationPatient (row then column cosines); [] if unknown
    pixel_spacing: list[float]  # (between rows, between columns) mm
    rows: int
    columns: int
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DicomSeries | None:
        if not d:
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Geometry:
    """Everything needed to map a display-grid mask back onto the source voxels.

    ``affine`` maps source voxel indices (i, j, k) to RAS+ mm, as in NIfTI.
    ``display_ornt`` is the nibabel orientation transform from the source array to the
    display array; applying its inverse to a display-shaped mask restores the source
    layout exactly.
    """

    affine: np.ndarray
    source_shape: tuple[int, ...]
    display_ornt: np.ndarray
    source_path: str = ""
    source_kind: str = ""  # "nifti" | "dicom"
    nifti_header: bytes | None = None  # the source NIfTI header, to write masks alike
    dicom: DicomSeries | None = None  # the source DICOM series' UIDs, to write DICOM SEG

    @property
    def source_axcodes(self) -> tuple[str, ...]:
        return tuple(ornt.aff2axcodes(self.affine))

    def display_axcodes_str(self) -> str:
        return "".join(DISPLAY_AXCODES)

    @property
    def display_shape(self) -> tuple[int, ...]:
        shape = [0, 0, 0]
        for src_axis, (dst_axis, _flip) in enumerate(self.display_ornt):
            shape[int(dst_axis)] = self.source_shape[src_axis]
        return tuple(shape)

    @property
    def display_affine(self) -> np.ndarray:
        """Affine from display voxel indices (z, y, x) to RAS+ mm."""
        return self.affine @ ornt.inv_ornt_aff(self.display_ornt, self.source_shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing along the display axes (z, y, x) in mm."""
        aff = self.display_affine
        return tuple(float(v) for v in np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))

    @property
    def origin(self) -> tuple[float, float, float]:
        """Position of display voxel (0, 0, 0) along the display axes, in mm.

        The display axes point to I, P and L, so this is (-S, -A, -R) of the first
        voxel: two scans in the same frame of reference line up in napari.
        """
        ras = self.display_affine[:3, 3]
        return (float(-ras[2]), float(-ras[1]), float(-ras[0]))

    def to_display(self, source_array: np.ndarray) -> np.ndarray:
        """Reorient a source-layout array (i, j, k) to the display layout (z, y, x)."""
        return ornt.apply_orientation(source_array, self.display_ornt)

    def source_to_display_index(self, ijk) -> tuple[int, ...]:
        """The display voxel (z, y, x) of source voxel ``ijk`` (the array order of the file,
        nibabel's for NIfTI): ``to_display``'s flips and permutation applied to one index,
        so ``to_display(a)[source_to_display_index(ijk)] == a[ijk]``. ``ValueError`` when
        ``ijk`` is not three whole indices inside ``source_shape``."""
        ijk = tuple(ijk)
        if len(ijk) != len(self.source_shape) or any(not 0 <= int(v) < n for v, n in zip(ijk, self.source_shape)):
            raise ValueError(f"voxel {list(ijk)} is outside the source shape {list(self.source_shape)}")
        out = [0] * len(self.source_shape)
        for axis, (dst_axis, flip) in enumerate(self.display_ornt):
            i = int(ijk[axis])
            out[int(dst_axis)] = self.source_shape[axis] - 1 - i if flip < 0 else i
        return tuple(out)

    def display_to_source_index(self, zyx) -> tuple[int, ...]:
        """The source voxel (i, j, k) of display voxel ``zyx``: the inverse of
        ``source_to_display_index``."""
        zyx = tuple(zyx)
        shape = self.display_shape
        if len(zyx) != len(shape) or any(not 0 <= int(v) < n for v, n in zip(zyx, shape)):
            raise ValueError(f"voxel {list(zyx)} is outside the display shape {list(shape)}")
        out = [0] * len(shape)
        for axis, (dst_axis, flip) in enumerate(self.display_ornt):
            v = int(zyx[int(dst_axis)])
            out[axis] = self.source_shape[axis] - 1 - v if flip < 0 else v
        return tuple(out)

    def to_source(self, display_array: np.ndarray) -> np.ndarray:
        """Undo ``to_display`` exactly (a permutation and flips, no resampling)."""
        if tuple(display_array.shape) != self.display_shape:
            raise ValueError(
                f"mask shape {tuple(display_array.shape)} does not match the scan's "
                f"shape {self.display_shape} (z, y, x)"
            )
        back = ornt.ornt_transform(ornt.axcodes2ornt(DISPLAY_AXCODES), ornt.io_orientation(self.affine))
        return ornt.apply_orientation(display_array, back)

    # napari layer metadata holds plain Python types so it survives copies and saving.
    def to_metadata(self) -> dict[str, Any]:
        return {
            "affine": self.affine.tolist(),
            "source_shape": list(self.source_shape),
            "display_ornt": self.display_ornt.tolist(),
            "display_axcodes": list(DISPLAY_AXCODES),
            "source_axcodes": list(self.source_axcodes),
            "source_path": self.source_path,
            "source_kind": self.source_kind,
            "nifti_header": self.nifti_header,
            "dicom": self.dicom.to_dict() if self.dicom is not None else None,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Geometry:
        return cls(
            affine=np.asarray(meta["affine"], dtype=float),
            source_shape=tuple(int(s) for s in meta["source_shape"]),
            display_ornt=np.asarray(meta["display_ornt"], dtype=float),
            source_path=meta.get("source_path", ""),
            source_kind=meta.get("source_kind", ""),
            nifti_header=meta.get("nifti_header"),
            dicom=DicomSeries.from_dict(meta.get("dicom")),
        )

    @classmethod
    def for_source(cls, affine: np.ndarray, source_shape, **kwargs) -> Geometry:
        """The geometry of a source array with this affine, displayed as (I, P, L)."""
        affine = np.asarray(affine, dtype=float)
        transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(DISPLAY_AXCODES))
        return cls(affine=affine, source_shape=tuple(int(s) for s in source_shape), display_ornt=transform, **kwargs)


@dataclass
class SeriesInfo:
    """One DICOM series found in a folder."""

    uid: str
    description: str
    modality: str
    n_slices: int
    rows: int = 0
    columns: int = 0

    def label(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.modality or '?'}{desc}: {self.n_slices} image(s) {self.columns}x{self.rows} (UID {self.uid})"


@dataclass
class CTVolume:
    """A CT scan in Hounsfield units, on the display grid (z, y, x).

    ``hu`` is int16 when the stored values map to whole HU exactly, float32 otherwise.
    ``warnings`` lists what the reader noticed and the user should know (uneven slice
    spacing, tilt, values that do not look like HU, ...): the scan opened anyway.
    """

    hu: np.ndarray
    geometry: Geometry
    name: str = "CT"
    warnings: list[str] = field(default_factory=list)
    series: SeriesInfo | None = None
    other_series: list[SeriesInfo] = field(default_factory=list)
    # DICOM objects in the folder that are not images (kind -> count: {"RTSTRUCT": 1, ...}).
    other_objects: dict[str, int] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (z, y, x) in mm."""
        return self.geometry.spacing

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm³)."""
        return float(np.prod(self.spacing)) / 1000.0

    def hu_range(self) -> tuple[float, float]:
        return float(self.hu.min()), float(self.hu.max())

    def replace(self, **changes) -> CTVolume:
        return dataclasses.replace(self, **changes)


def looks_like_hu(values: np.ndarray) -> str | None:
    """A warning when the values are clearly not Hounsfield units, else None.

    CT in HU has air near -1000; unsigned data (0..4095 stored values without a rescale,
    or 8-bit images) has no negative values at all.
    """
    if values.size == 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    if values.dtype == np.uint8 or (lo >= 0 and hi <= 255):
        return (
            f"values span {lo:g}..{hi:g}, like an 8-bit image, not Hounsfield units; "
            "segmentation expects HU (air near -1000)"
        )
    if lo >= 0:
        return (
            f"values span {lo:g}..{hi:g} with nothing below 0: this does not look like "
            "Hounsfield units (air is near -1000; a rescale slope/intercept may be missing); "
            "segmentation expects HU"
        )
    if lo > -500 and hi > 0:
        return (
            f"values span {lo:g}..{hi:g}: no air near -1000 HU; this may not be a CT in "
            "Hounsfield units, and segmentation expects HU"
        )
    return None
