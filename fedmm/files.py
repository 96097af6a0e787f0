"""Atomic file writes: every file fedmm writes (results, checkpoints, dataset caches, bench tables).

A file is written to a temporary name in its own directory, flushed to disk (``fsync``) and then
renamed over the target, so a reader (or a crash) sees the old file or the new one, never half of
one. The temporary file is created like a plain ``open(path, "w")`` would create it, with the mode
the user's umask gives (``0644`` under umask ``022``), not the ``0600`` of :mod:`tempfile`.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, content: str | bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` atomically with ``content``.

    Parameters
    ----------
    path:
        The file to write; its directory must exist.
    content:
        Text (written as UTF-8), bytes, or a function that writes the file at the path it is given
        (``safetensors``' ``save_file``, ``savefig``, ``np.savez``, ...).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 & ~umask, as open(path, "w") would create it; O_EXCL: never reuse another's file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, (str, bytes)):
                f.write(content.encode() if isinstance(content, str) else content)
        if callable(content):
            content(tmp)
        with open(tmp, "rb+") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) != mode:  # a writer that replaced the file
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (the rename) where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
