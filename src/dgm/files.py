"""Crash-safe file writing and bounded reading.

Writing: to a temporary file in the same directory, fsync, rename; a file that cannot be
written (a full disk, a read-only file system, a symbolic link where dgm writes) is one
:class:`WriteError` line naming it. Reading JSON: at most a given size and nesting depth, so a
hostile file is refused in one line before it is parsed (no RecursionError, no huge integer).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import accumulate
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from dgm.errors import DGMError, UsageError, one_line

#: JSON that dgm reads nests at most this deep (a checkpoint's state: about 8)
MAX_JSON_DEPTH = 64


class WriteError(DGMError, OSError):
    """A file dgm writes could not be written: one line naming the file and why. It is an
    OSError too (``errno``, ``strerror``, ``filename``), for callers that catch those."""

    def __init__(self, path: Path | str, reason: str, errno: int | None = None) -> None:
        super().__init__(errno, reason, str(path))
        self.message = f"{path}: cannot write it ({reason})"

    def __str__(self) -> str:
        return self.message


def write_error(path: Path | str, err: BaseException) -> WriteError:
    """``err`` (an OSError, or safetensors' own error for a full disk) as a WriteError that
    names ``path``, the file dgm meant to write (not its temporary name)."""
    if isinstance(err, WriteError):
        return err
    if isinstance(err, OSError):
        return WriteError(path, one_line(err.strerror or err, 200), err.errno)
    return WriteError(path, one_line(err, 200))


#: what a failed write raises: OSError, and SafetensorError (not an OSError) from save_file
WRITE_FAULTS = (OSError, SafetensorError)


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


def refuse_link(path: Path) -> None:
    """A symbolic link where dgm writes a file is refused: dgm never writes through one."""
    if path.is_symlink():
        raise WriteError(path, "it is a symbolic link; dgm writes only regular files there")


def default_mode(directory: bool = False) -> int:
    """The mode ``open`` or ``mkdir`` would give a new file (0o666) or directory (0o777) under
    the process's umask: what dgm's files get, though written through a temporary file (which
    :mod:`tempfile` creates 0o600, a directory 0o700), so that a shared run stays readable."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result and rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written one.
    Any fault (a full disk: OSError or safetensors' SafetensorError) is a :class:`WriteError`
    naming ``path``; the temporary file is removed. A symbolic link at ``path`` is refused.
    The file gets the mode a plain ``open`` would give it (:func:`default_mode`).
    """
    path = Path(path)
    refuse_link(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, default_mode())
        os.replace(tmp_path, path)
    except BaseException as err:
        tmp_path.unlink(missing_ok=True)
        if isinstance(err, WRITE_FAULTS):
            raise write_error(path, err) from None
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing) and fsync; never through a symbolic
    link (O_NOFOLLOW); any fault is a WriteError naming ``path``."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    refuse_link(path)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        raise write_error(path, err) from None
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    except OSError as err:
        raise write_error(path, err) from None
    finally:
        os.close(fd)


# -- bounded reading -------------------------------------------------------------------------

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON ``text`` (a cheap scan: strings skipped)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub('""', text))
    if not brackets:
        return 0
    return max(accumulate(1 if c in "[{" else -1 for c in brackets))


def parse_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``, or ValueError with a one-line reason: invalid JSON, nested deeper
    than ``max_depth``, an integer too long to convert."""
    deepest = json_depth(text)
    if deepest > max_depth:
        raise ValueError(f"nested {deepest} deep; expected at most {max_depth}")
    try:
        return json.loads(text)
    except RecursionError:  # not reached after the scan; kept for safety
        raise ValueError(f"nested too deeply; expected at most {max_depth}") from None
    except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ValueError(one_line(err, 200)) from None


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, or ValueError when it is larger than
    ``max_bytes`` or not a regular file (OSError, FileNotFoundError pass through)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{info.st_size:,} bytes; expected at most {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"more than {max_bytes:,} bytes")
    return data


def read_json(path: Path, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON in ``path``, read only if at most ``max_bytes`` and ``max_depth`` deep; else
    ValueError with a one-line reason (OSError, FileNotFoundError pass through)."""
    data = read_bounded(path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 ({err.reason})") from None
    return parse_json(text, max_depth)


_HELD: dict[str, int] = {}  # run directories this process has locked, with a nesting count


@contextmanager
def run_lock(run_dir: Path, create: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``run_dir/.lock``, flock) while creating, replacing
    or training the run, so that two processes never work on one run at once. Re-entrant within
    a process. The kernel drops the lock when the process ends, however it ends (even SIGKILL):
    a stale lock file is harmless. With ``create=False`` a missing directory is not created
    and nothing is locked (the caller reports the missing run). A symbolic link as the run
    directory, or as its lock file, is refused: dgm never writes through one."""
    import fcntl

    run_dir = Path(run_dir)
    if run_dir.is_symlink():
        raise UsageError(
            f"{run_dir}: is a symbolic link (to {os.readlink(run_dir)}); dgm works only in a "
            "run directory itself: give its real path"
        )
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
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # never through a link
        fd = os.open(run_dir / ".lock", flags, 0o644)
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
