"""Writing a file so that it is never half-written: the one copy of "temporary file, then rename"."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _readable(path) -> None:
    # mkstemp makes owner-only files; ours are shared like any other file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def replaced_atomically(path, suffix: str = "") -> Iterator[Path]:
    """A temporary file beside ``path`` (same folder, so the rename is atomic) to write into.

    When the block ends without an exception the file is renamed onto ``path``; otherwise it is
    removed and ``path`` is left as it was. ``suffix`` keeps the extension a writer needs to
    choose its format (``.nii.gz``, ``.png``). The folder is made if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        _readable(tmp)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path, data: bytes | str) -> Path:
    """``data`` (text is written as UTF-8) into ``path``, flushed to disk before the rename."""
    with replaced_atomically(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def same_file(a, b) -> bool:
    """Whether two paths name the same file (the same inode where both exist, else the same resolved path)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
