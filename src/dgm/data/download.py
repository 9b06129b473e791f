"""Fetch one dataset file over HTTPS, verified before it is put in place.

The bytes are streamed into a temporary ``<dest>.<random>.part`` file beside ``dest``; the SHA-256
of the *decompressed* content is checked, and only then is the file moved to ``dest`` with
:func:`os.replace` (atomic on one file system). Whatever goes wrong, the temporary file is removed,
so a partial or corrupted download never sits under the final name.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from dgm.data.idx import MAX_IDX_BYTES, sha256_of_idx
from dgm.errors import DataError, UsageError
from dgm.files import default_mode

__all__ = ["check_url", "download_file"]

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_CHUNK = 1 << 16  # 64 KiB


def check_url(url: str) -> None:
    """Accept ``https://`` URLs, and ``http://`` only to this machine (127.0.0.1, localhost)."""
    parts = urllib.parse.urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme == "https" and host:
        return
    if scheme == "http" and host in _LOOPBACK_HOSTS:
        return
    raise UsageError(
        f"refusing to download from {url!r}: expected an https:// URL "
        "(http:// is allowed only to 127.0.0.1 or localhost)"
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``sha256`` is the expected SHA-256 of the decompressed content (see ``sha256_of_idx``), or
    ``None`` to skip the check. ``timeout`` (seconds) bounds each blocking network operation.
    A tqdm bar goes to stderr unless ``progress`` is False. Raises ``UsageError`` for a refused
    URL and ``DataError`` for a network failure, an oversized body or a checksum mismatch.
    """
    check_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(url, out, progress, timeout, dest.name)
            out.flush()
            os.fsync(out.fileno())  # on disk before it can be renamed into place
        if sha256 is not None:
            try:
                actual = sha256_of_idx(tmp)
            except DataError as e:
                raise DataError(f"download of {url} is not a readable file: {e}") from None
            if actual != sha256.lower():
                raise DataError(
                    f"checksum mismatch for download of {url}: SHA-256 of the decompressed "
                    f"content is {actual}, expected {sha256.lower()}"
                )
        os.chmod(tmp, default_mode())  # not mkstemp's 0o600: a shared cache stays readable
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)  # the rename itself survives a crash
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _stream(url: str, out: BinaryIO, progress: bool, timeout: float, label: str) -> None:
    """Copy the body of ``url`` into the binary file ``out``, at most ``MAX_IDX_BYTES`` bytes."""
    request = urllib.request.Request(url, headers={"User-Agent": "dgm"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (checked)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            n = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=label, disable=not progress
            ) as bar:
                while chunk := response.read(_CHUNK):
                    n += len(chunk)
                    if n > MAX_IDX_BYTES:
                        raise DataError(
                            f"download of {url} is larger than the limit of {MAX_IDX_BYTES} bytes"
                        )
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and n != total:
                raise DataError(f"download of {url} is incomplete: got {n} of {total} bytes")
    except (OSError, http.client.HTTPException, ValueError) as e:
        if isinstance(e, urllib.error.HTTPError):
            e.close()  # an HTTPError holds the open response
        raise DataError(f"download of {url} failed: {_describe(e)}") from None


def _describe(e: BaseException) -> str:
    reason = getattr(e, "reason", None)  # URLError / HTTPError
    code = getattr(e, "code", None)
    if code is not None:
        return f"HTTP {code} {reason or ''}".strip()
    text = str(reason if reason is not None else e) or type(e).__name__
    return " ".join(text.split())  # one line
