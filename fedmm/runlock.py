"""One fedmm process at a time per output directory: a lock held for the whole run.

``fedmm simulate`` (also with ``--overwrite`` and ``--resume``) and ``fedmm bench`` take an
exclusive ``fcntl.flock`` on ``<dir>/.fedmm.lock`` before they check or write anything there, and
hold it until they return; a second process on the same directory is refused at once, naming the
directory and the process that holds it (its id is written into the lock file). The kernel
releases a ``flock`` when its holder dies, however it dies, so a lock file left by a killed
process never blocks. Ray's workers do not inherit the lock: Python opens the file
non-inheritable, and Ray starts its processes with ``exec``.

``fcntl.flock`` is used directly rather than a library such as ``filelock`` (whose Unix lock is the
same ``flock``) because the refusal must name the holder's process id, which the holder writes into
the file it locked; the whole mechanism is the few lines below. Locks are POSIX-only, as Ray and
Flower's simulation are.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmm.results import LOCK_FILE, prepare_out_dir

#: Directories this process holds, with how many nested holders (a run inside a locked benchmark
#: directory, the CLI's lock around ``simulate``'s own).
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class DirectoryBusy(ValueError):
    """Another process holds the lock of the directory."""


@contextmanager
def directory_lock(directory: str | Path, what: str = "output directory", flag: str = "--out") -> Iterator[Path]:
    """Hold the lock of ``directory`` (created when missing) while the body runs; yields its
    resolved path. Re-entrant within this process.

    Parameters
    ----------
    directory:
        The run (or benchmark) directory.
    what, flag:
        How the refusal names the directory and the option to change.

    Raises
    ------
    DirectoryBusy
        Another process holds it: names the directory and that process's id.
    ValueError
        ``directory`` is a file or lies below one (:func:`fedmm.results.prepare_out_dir`'s message).
    """
    path = prepare_out_dir(directory, overwrite=True)  # a file, or a path below one: its own message
    with _held_guard:
        if path in _held:
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    created = [d for d in (path, *path.parents) if not d.exists()]  # removed again if still empty at the end
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(path, what, flag)
    except BaseException:
        _remove_empty(created)
        raise
    with _held_guard:
        _held[path] = 1
    try:
        yield path
    finally:
        with _held_guard:
            del _held[path]
        try:
            (path / LOCK_FILE).unlink(missing_ok=True)  # while still locked: a waiting process re-checks the inode
        finally:
            os.close(fd)  # releases the flock
        _remove_empty(created)  # a run refused before it wrote anything leaves no directory behind


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories of ``created`` (leaf first) that are still empty."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:  # not empty (the run's results), or gone
            return


def _acquire(path: Path, what: str, flag: str) -> int:
    """Lock ``path/LOCK_FILE`` without waiting and write this process's id into it; returns the fd."""
    lock = path / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DirectoryBusy(
                f"{what} {str(path)!r} is in use by another fedmm run ({holder}); two runs writing one directory "
                f"would mix their results: wait for it to finish, or choose another {flag}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder removed the file as we locked it: lock the new one


def _holder(fd: int) -> str:
    """``process <pid>`` from the lock file's content (``process unknown`` while it is empty)."""
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return f"process {text}" if text.isdigit() else "a process that has not yet written its id"
