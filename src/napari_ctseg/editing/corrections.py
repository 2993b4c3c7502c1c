"""The user's corrections store: which scan, which corrected mask, which model made the first one.

Each saved correction is one JSON manifest in ``corrections_dir()``
(``platformdirs.user_data_path("napari-ctseg")/corrections``; on Linux
``$XDG_DATA_HOME/napari-ctseg/corrections``, by default ``~/.local/share/...``). The masks
themselves stay where the user saved them; the manifest points to them. Fine-tuning reads
the pairs back with ``list_corrections``.

``changed_slices`` are display z indices (axis 0 of the (z, y, x) display grid, 0 the
most superior slice): the slices whose labels differ from the mask as it was first seen
(the model's output, usually). To know them without keeping a second copy of a large
mask in memory, ``slice_digests`` fingerprints each z slice (CRC-32 of its bytes) when
the mask is first seen, and ``changed_slices`` compares against the fingerprints later.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_ctseg._files import write_atomically

MANIFEST_VERSION = 1


def corrections_dir() -> Path:
    """The folder of correction manifests (not created here)."""
    from platformdirs import user_data_path

    return Path(user_data_path("napari-ctseg", appauthor=False)) / "corrections"


@dataclass
class Correction:
    """One corrected mask and what it corrects.

    ``scan_path`` and ``mask_path`` are absolute; ``target`` is the structure (lungs,
    liver, infection, ...); ``model_version`` the model version that produced the first
    mask ("" when the mask was drawn by hand); ``changed_slices`` display z indices;
    ``created`` an ISO 8601 date-time (UTC); ``label_voxels`` the number of voxels of
    each label value in the saved mask.
    """

    scan_path: str
    mask_path: str
    target: str
    model_version: str = ""
    changed_slices: list[int] = field(default_factory=list)
    created: str = ""
    label_voxels: dict[str, int] = field(default_factory=dict)
    manifest_path: str = ""
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("manifest_path")
        return data


BASELINE_KEY = "ctseg_baseline_digests"
"""``layer.metadata`` key of a mask layer's slice fingerprints when it was made (by Segment
volume) or first seen (by Mask tools): the baseline that 'changed slices' is measured against."""


def slice_digests(mask: np.ndarray) -> list[int]:
    """A fingerprint (CRC-32) of each z slice (axis 0) of a (z, y, x) mask."""
    mask = np.asarray(mask)
    return [zlib.crc32(np.ascontiguousarray(mask[z])) for z in range(mask.shape[0])]


def changed_slices(digests: list[int] | None, mask: np.ndarray) -> list[int]:
    """The z indices of ``mask`` whose slices differ from the ``digests`` taken earlier.

    Without digests (the mask was never seen before), or when the number of slices
    differs, every slice that holds a label counts as changed.
    """
    mask = np.asarray(mask)
    now = slice_digests(mask)
    if digests is None or len(digests) != len(now):
        return [int(z) for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]
    return [z for z, (a, b) in enumerate(zip(digests, now)) if a != b]


def _safe(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return keep.strip("._")[:60] or "mask"


def record_correction(scan_path, mask_path, target: str, model_version: str = "",
                      changed: list[int] | None = None, label_voxels: dict[str, int] | None = None,
                      *, when: datetime | None = None) -> Correction:
    """Write (or replace) the manifest of one saved correction and return it.

    Saving the same mask file again replaces its manifest rather than adding a second one.
    The manifest is written to a temporary file and renamed, so it is never half written.
    """
    when = when or datetime.now(timezone.utc)
    mask_path = str(Path(mask_path).resolve())
    corr = Correction(
        scan_path=str(Path(scan_path).resolve()) if scan_path else "",
        mask_path=mask_path,
        target=str(target),
        model_version=str(model_version or ""),
        changed_slices=[int(z) for z in (changed or [])],
        created=when.replace(microsecond=0).isoformat(),
        label_voxels={str(k): int(v) for k, v in (label_voxels or {}).items()},
    )
    folder = corrections_dir()
    folder.mkdir(parents=True, exist_ok=True)
    existing = [c for c in list_corrections() if c.mask_path == mask_path]
    if existing:
        path = Path(existing[0].manifest_path)
    else:
        stamp = when.strftime("%Y%m%dT%H%M%S")
        base = f"{stamp}_{_safe(corr.target)}_{_safe(Path(mask_path).name)}"
        path = folder / f"{base}.json"
        n = 1
        while path.exists():
            n += 1
            path = folder / f"{base}_{n}.json"
    write_atomically(path, json.dumps(corr.to_json(), indent=2))
    corr.manifest_path = str(path)
    return corr


def store_stamp() -> tuple:
    """What the store holds now, cheaply: each manifest's name, size and modification time
    (no file is read). Equal stamps mean ``list_corrections`` would read the same manifests
    (they are written by atomic rename, so a save always changes the stamp)."""
    try:
        with os.scandir(corrections_dir()) as entries:
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                                for e in entries if e.name.endswith(".json") and e.is_file()))
    except OSError:
        return ()


def list_corrections(target: str | None = None) -> list[Correction]:
    """The recorded corrections, oldest first; only those for ``target`` when given.

    Manifests that cannot be read are skipped (a correction is never lost because of
    another one's broken file).
    """
    folder = corrections_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            corr = Correction(
                scan_path=str(data["scan_path"]),
                mask_path=str(data["mask_path"]),
                target=str(data["target"]),
                model_version=str(data.get("model_version", "")),
                changed_slices=[int(z) for z in data.get("changed_slices", [])],
                created=str(data.get("created", "")),
                label_voxels={str(k): int(v) for k, v in data.get("label_voxels", {}).items()},
                manifest_path=str(path),
                version=int(data.get("version", MANIFEST_VERSION)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if target is None or corr.target == target:
            found.append(corr)
    found.sort(key=lambda c: (c.created, c.manifest_path))
    return found
