"""Where datasets keep their decoded caches: ``$FEDMM_CACHE_DIR`` (default ``~/.cache/fedmm``)."""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that moves the dataset caches.
CACHE_ENV = "FEDMM_CACHE_DIR"


def cache_dir() -> Path:
    """The cache directory (not created): ``$FEDMM_CACHE_DIR``, else ``~/.cache/fedmm``."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "fedmm"))


def make_cache_dir() -> Path:
    """:func:`cache_dir`, created when missing.

    Raises ``ValueError`` naming ``FEDMM_CACHE_DIR`` when the directory cannot be made: the path (or
    a directory above it) is a regular file, or it is not writable.
    """
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise ValueError(_unusable(path, f"{err.filename or path} is a file, not a directory")) from None
    except OSError as err:
        raise ValueError(_unusable(path, err.strerror or str(err))) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(_unusable(path, "it is not writable"))
    return path


def _unusable(path: Path, why: str) -> str:
    source = (
        f"environment variable {CACHE_ENV}"
        if CACHE_ENV in os.environ
        else f"the default cache directory (set {CACHE_ENV} to move it)"
    )
    return (
        f"cannot use {str(path)!r} as the dataset cache, {source}: {why}; point {CACHE_ENV} at a directory "
        "fedmm may create and write (or unset it for ~/.cache/fedmm)"
    )
