"""Crash-safe file writing: write to a temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


_HELD: dict[str, int] = {}  # run directories this process has locked, with a nesting count


@contextmanager
def run_lock(run_dir: Path, create: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``run_dir/.lock``, flock) while creating, replacing
    or training the run, so that two processes never work on one run at once. Re-entrant within
    a process. The kernel drops the lock when the process ends, however it ends (even SIGKILL):
    a stale lock file is harmless. With ``create=False`` a missing directory is not created
    and nothing is locked (the caller reports the missing run)."""
    import fcntl

    from dgm.errors import UsageError

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: exists and is not a directory")
    if not run_dir.exists() and not create:
        yield
        return
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UsageError(
            f"{run_dir}: cannot write the run directory ({err.strerror or err})"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{run_dir}: another process is working on this run (it holds {run_dir}/.lock)"
            ) from None
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)
