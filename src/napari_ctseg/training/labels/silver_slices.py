"""COVID-19 slices with another model's labels (silver), read and cleaned (Qt-free).

``covid_semiseg_pseudo/`` holds 1600 consecutive axial slices of 20 COVID-19 patients
(8-bit, lung-windowed, cropped to the chest, ``images/<volume>_<k>.jpg``) with
Semi-Inf-Net's pseudo-labels (``masks/<volume>_<k>.png``, 0/255). They are silver: looked
at, most marks lie on ground glass and consolidation, but some lie outside the lungs (the
spine and the paraspinal muscles on upper slices, the anterior chest wall's skin line).

* Orientation: the Coronacases slices are turned 180 degrees from the Radiopaedia ones and
  from the expert COVID-SemiSeg slices (spine to the left of the image instead of the
  right); ``read_pseudo_slice`` turns them to the experts' orientation.
* Cleaning (``clean_pseudo_label``): a mark is kept only where it lies in the lungs. The
  lungs of an 8-bit slice are found classically: the dark (air) side of Otsu's threshold,
  the air outside the body (touching the image's edge) removed, the two largest air regions
  each replaced by its convex hull (so that consolidation against the chest wall is lung);
  a marked component is kept when at least ``min_inside`` of it lies in that lung region
  (dilated by a few pixels), and components under ``min_pixels`` are dropped.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy import ndimage

PSEUDO_FOLDER = "covid_semiseg_pseudo"
PSEUDO_CLEANING = (
    "silver: Semi-Inf-Net's pseudo-labels (another model's output); Coronacases slices turned 180 "
    "degrees to the expert slices' orientation; a marked component kept only when >= {min_inside:.0%} "
    "of it lies in the lungs found classically on the 8-bit slice (Otsu's dark side without the air "
    "outside the body, each lung's convex hull, dilated {dilate_px} px) or >= {min_contact:.0%} of its "
    "outline borders aerated lung, and at most {max_bone:.0%} of it is bone (255-level >= 250); "
    "components touching the image's edge (the skin line) and under {min_pixels} px dropped"
)
_NAME = re.compile(r"^(?P<volume>.+)_(?P<k>\d+)$")


def pseudo_volumes(folder) -> dict[str, list[int]]:
    """The volumes of a pseudo-labelled folder and their slice numbers, in order."""
    out: dict[str, list[int]] = {}
    for p in sorted((Path(folder) / "images").glob("*.jpg")):
        m = _NAME.match(p.stem)
        if m:
            out.setdefault(m["volume"], []).append(int(m["k"]))
    return {v: sorted(ks) for v, ks in sorted(out.items())}


def turned_180(volume: str) -> bool:
    """Whether a volume's slices are stored turned 180 degrees from the expert slices."""
    return volume.startswith("coronacases")


def read_pseudo_slice(folder, volume: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice (uint8, H x W) and its raw pseudo-label (bool), in the experts' orientation."""
    from PIL import Image

    folder = Path(folder)
    image = np.asarray(Image.open(folder / "images" / f"{volume}_{k}.jpg").convert("L"))
    label = np.asarray(Image.open(folder / "masks" / f"{volume}_{k}.png").convert("L")) > 127
    if image.shape != label.shape:
        raise ValueError(f"{folder}/masks/{volume}_{k}.png: size {label.shape} does not match the image's "
                         f"{image.shape}")
    if turned_180(volume):
        image, label = image[::-1, ::-1], label[::-1, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def _lung_air(img: np.ndarray) -> np.ndarray:
    """Air inside the body: the dark side of Otsu's threshold within the body's convex hull
    (a few pixels in from its outline, so the air around the body never counts, even where
    a tight crop lets the lungs touch the image's edge); the two largest regions."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import convex_hull_image

    # Otsu's threshold is the top of the dark class (skimage: foreground is > it), found on
    # whole grey levels so that a level is never split between the two classes.
    grey = np.rint(img).astype(np.int16) if np.asarray(img).dtype.kind == "f" else np.asarray(img)
    bright = grey > threshold_otsu(grey)
    lab, n = ndimage.label(bright)
    out = np.zeros(img.shape, bool)
    if n == 0:
        return out
    body = convex_hull_image(lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:])))
    air = ~bright & ndimage.binary_erosion(body, iterations=4)
    lab, n = ndimage.label(air)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    size[0] = 0
    for v in np.argsort(size)[::-1][:2]:  # the two lungs (or one, where they touch)
        if size[v] >= 0.01 * img.size:
            out |= lab == v
    return out


def lung_region_8bit(image: np.ndarray) -> np.ndarray:
    """The lungs of an 8-bit lung-window slice, classically (bool, H x W): each lung's
    convex hull, so that consolidation inside the lung is lung, while the spine, the chest
    wall and the skin are not."""
    from skimage.morphology import convex_hull_image

    lab, n = ndimage.label(_lung_air(np.asarray(image, dtype=np.float32)))
    out = np.zeros(lab.shape, bool)
    for v in range(1, n + 1):
        out |= convex_hull_image(lab == v)
    return out


def clean_pseudo_label(image: np.ndarray, label: np.ndarray, min_inside: float = 0.6,
                       dilate_px: int = 3, min_pixels: int = 10, min_contact: float = 0.25,
                       max_bone: float = 0.3) -> np.ndarray:
    """The pseudo-label's components that lie in the lungs (bool, H x W).

    A component is kept when it does not touch the image's edge (the skin line of a tight
    crop), it is not mostly bone (at most ``max_bone`` of it at the
    window's top, 250 of 255: the spine, ribs) and either lies mostly in the lungs' hulls
    (``min_inside``) or borders aerated lung along at least ``min_contact`` of its outline
    (consolidation against the chest wall, which replaces the lung's edge and so lies
    outside the hull of the air that is left)."""
    label = np.asarray(label, dtype=bool)
    if not label.any():
        return label
    img = np.asarray(image)
    hull = ndimage.binary_dilation(lung_region_8bit(img), iterations=dilate_px)
    air = ndimage.binary_dilation(_lung_air(img.astype(np.float32)), iterations=2)
    lab, n = ndimage.label(label)
    outline = label & ~ndimage.binary_erosion(label)
    idx = np.arange(n + 1)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    inside = np.bincount(lab.ravel(), weights=hull.ravel(), minlength=n + 1)
    bone = np.bincount(lab.ravel(), weights=(img >= 250).ravel(), minlength=n + 1)
    edge = np.bincount(lab[outline], minlength=n + 1)
    contact = np.bincount(lab[outline & air], minlength=n + 1)
    big = np.maximum(size, 1)
    keep = ((size >= min_pixels) & (bone <= max_bone * big)
            & ((inside >= min_inside * big) | (contact >= min_contact * np.maximum(edge, 1))))
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    keep[border] = False  # the skin line where a tight crop cuts the body: never lung
    keep[idx == 0] = False
    return keep[lab]


def load_silver_slices(data_dir, folder: str = PSEUDO_FOLDER, volumes: list[str] | None = None,
                       cleaning: dict | None = None, ignore_px: int = 2) -> list:
    """Every slice of ``folder`` (or of its ``volumes``) as an 8-bit training ``Case`` named
    ``<folder>/<volume>_<k>``, in the experts' orientation, its label cleaned; the marks the
    cleaning dropped (dilated by ``ignore_px``) are ignored by the loss, not taught as
    background (a dropped mark may still be a real lesion), and the case's ``group`` is
    ``"silver_slices"``."""
    from napari_ctseg.errors import TrainingError
    from napari_ctseg.training.cases import Case

    root = Path(data_dir) / folder
    found = pseudo_volumes(root)
    if not found:
        raise TrainingError(f"{root}: no images/<volume>_<k>.jpg slices (a pseudo-labelled slice folder)")
    names = list(found) if volumes is None else list(volumes)
    missing = [v for v in names if v not in found]
    if missing:
        raise TrainingError(f"{root}: no slices of volume(s) {', '.join(missing)}")
    cases = []
    for volume in names:
        for k in found[volume]:
            try:
                image, raw = read_pseudo_slice(root, volume, k)
            except (OSError, ValueError) as exc:
                raise TrainingError(f"{root}: slice {volume}_{k} cannot be read ({exc})") from None
            kept = clean_pseudo_label(image, raw, **(cleaning or {}))
            dropped = raw & ~kept
            # (scipy dilates until nothing changes for iterations < 1: no margin there)
            grown = ndimage.binary_dilation(dropped, iterations=ignore_px) if ignore_px > 0 else dropped
            ignore = grown & ~kept if dropped.any() else None
            cases.append(Case(name=f"{folder}/{volume}_{k}", labels=kept.astype(np.uint8), image8=image,
                              ignore=ignore, group="silver_slices"))
    return cases
