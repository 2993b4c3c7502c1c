"""What the benchmarks and scripts share: where the repository and the shared data are, this
checkout's ``src/`` on the path, the ``--data`` option and its check.

benchmarks/ and scripts/ are folders of scripts, not packages. A benchmark imports this as
``_setup`` (a script's own folder is on ``sys.path`` when it runs); a script puts
benchmarks/ on the path first::

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _setup import argument_parser  # noqa: E402
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"  # the shared data folder, beside the repository


def argument_parser(doc: str | None = None, *, data: bool = True, data_help: str | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` described by the first paragraph of ``doc`` (no description
    without one) whose first option is ``--data`` (default: ``DATA``), unless ``data`` is False."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    if data:
        ap.add_argument("--data", default=str(DATA), help=data_help)
    return ap


def use_source_tree() -> None:
    """Import ``napari_ctseg`` from this checkout's ``src/`` before any installed copy."""
    sys.path.insert(0, str(REPO / "src"))


def data_folder(path, prog: str, hint: str = " (the shared data lives beside the repository)") -> Path | None:
    """``path`` as a folder, or None once ``prog: PATH: no such folder`` (and ``hint``) is on stderr."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    print(f"{prog}: {folder}: no such folder{hint}", file=sys.stderr)
    return None
