"""What the ``ctseg`` commands share: ``--model TARGET=VERSION``, the registry of ``--weights``
and the progress bar on a terminal."""
from __future__ import annotations

import sys

from napari_ctseg.errors import CTSegError


def model_versions(items) -> dict[str, str]:
    """``--model TARGET=VERSION`` options as {target: version}."""
    versions = {}
    for item in items or []:
        target, _, version = item.partition("=")
        if not version:
            raise CTSegError(f"--model {item!r}: write TARGET=VERSION, e.g. lungs=v1")
        versions[target.strip()] = version.strip()
    return versions


def registry_of(args):
    """The model registry of this command: ``--weights`` folders first, then the default roots."""
    from napari_ctseg.models.registry import ModelRegistry

    return ModelRegistry.default(extra=getattr(args, "weights", None) or ())


def progress_printer(name: str):
    """A progress callback drawing a bar named ``name`` on stderr, or None when stderr is no terminal."""
    if not sys.stderr.isatty():
        return None

    def show(report):
        width = 30
        filled = int(width * report.done / max(report.total, 1))
        sys.stderr.write(f"\r{name}: [{'#' * filled}{'.' * (width - filled)}] {report.message:40.40}")
        sys.stderr.flush()
        if report.done >= report.total:
            sys.stderr.write("\n")

    return show
