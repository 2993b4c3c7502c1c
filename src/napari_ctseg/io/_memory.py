"""Check, before loading, that a scan fits in the memory there is."""
from __future__ import annotations

import os

from napari_ctseg.errors import ScanTooLargeError

# Reading needs the stored array and the HU array at once, so about twice the HU bytes.
READ_OVERHEAD = 2.0


def available_memory_bytes() -> int:
    """Memory that can be allocated now, in bytes (``CTSEG_MEMORY_LIMIT`` overrides)."""
    override = os.environ.get("CTSEG_MEMORY_LIMIT")
    if override:
        return int(float(override))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def check_fits(name: str, shape, bytes_per_voxel: int) -> None:
    """Raise ScanTooLargeError when a volume of ``shape`` would not fit in memory."""
    n = 1
    for s in shape:
        n *= int(s)
    needed = n * bytes_per_voxel * READ_OVERHEAD
    available = available_memory_bytes()
    if needed > available:
        dims = "x".join(str(int(s)) for s in shape)
        raise ScanTooLargeError(
            f"{name}: the volume is {dims} voxels ({format_bytes(n * bytes_per_voxel)} in HU); "
            f"opening it needs about {format_bytes(needed)} but only {format_bytes(available)} "
            "of memory is available. Close other programs, or crop/downsample the scan first."
        )
