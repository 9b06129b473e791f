r"""The IDX file format of MNIST, gzipped or plain, read with full validation.

Layout (LeCun, Cortes and Burges, http://yann.lecun.com/exdb/mnist/), all integers big-endian::

    byte 0-1   0x00 0x00
    byte 2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte 3     ndim
    4 * ndim   the dimensions, uint32 each
    rest       prod(dims) * itemsize bytes of data, row-major

Compression is detected by the gzip magic ``1f 8b``, never by the file name. Nothing that a header
promises is allocated before the data has been seen to exist: a gzip stream is inflated in chunks
and refused as soon as it runs past what the header announced.
"""

from __future__ import annotations

import gzip as _gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dgm.errors import DataError, UsageError

__all__ = ["MAX_IDX_BYTES", "read_idx", "sha256_of_idx", "write_idx"]

#: Largest data section (bytes) a header may announce; MNIST's largest file holds 47 MB.
MAX_IDX_BYTES = 2 * 1024**3
_MAX_NDIM = 8
_CHUNK = 1 << 20  # 1 MiB
_GZIP_MAGIC = b"\x1f\x8b"

_DTYPE_OF_CODE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND: dict[tuple[str, int], int] = {
    (d.kind, d.itemsize): c for c, d in _DTYPE_OF_CODE.items()
}

# What a broken gzip stream raises: BadGzipFile (an OSError), zlib.error, EOFError (truncated).
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open(path: Path) -> BinaryIO:
    """Open ``path`` for reading its decompressed bytes, whatever the file name says."""
    try:
        if _is_gzip(path):
            return _gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    try:
        b = f.read(n)
    except _GZIP_ERRORS as e:
        raise DataError(f"corrupted gzip stream in {path}: {e}") from None
    if len(b) != n:
        raise DataError(f"truncated IDX file {path}: expected {n} bytes of {what}, got {len(b)}")
    return b


def _parse_header(f: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...], bytes]:
    """Read and check the header; returns (big-endian dtype, dims, the header bytes)."""
    magic = _read_exact(f, 4, path, "header")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"not an IDX file: {path} starts with {magic[:2].hex()}, expected 0000 (or gzip 1f8b)"
        )
    code, ndim = magic[2], magic[3]
    if code not in _DTYPE_OF_CODE:
        known = ", ".join(f"0x{c:02X}" for c in _DTYPE_OF_CODE)
        raise DataError(f"unknown IDX type code 0x{code:02X} in {path}, expected one of {known}")
    if not 1 <= ndim <= _MAX_NDIM:
        raise DataError(f"bad IDX header in {path}: ndim={ndim}, expected 1 to {_MAX_NDIM}")
    raw_dims = _read_exact(f, 4 * ndim, path, "dimensions")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    return _DTYPE_OF_CODE[code], dims, magic + raw_dims


def _expected_nbytes(dtype: np.dtype, dims: tuple[int, ...], path: Path) -> int:
    n = math.prod(dims) * dtype.itemsize
    # with a zero dimension the product is 0, but numpy still refuses a shape whose other
    # dimensions multiply past its limits: bound the nonzero ones too (found by hypothesis)
    if math.prod(d for d in dims if d) * dtype.itemsize > MAX_IDX_BYTES:
        n = max(n, math.prod(d for d in dims if d) * dtype.itemsize)
    if n > MAX_IDX_BYTES:
        raise DataError(
            f"IDX header of {path} promises {n} bytes of data (dims {dims}), "
            f"more than the limit of {MAX_IDX_BYTES}"
        )
    return n


def _read_payload(f: BinaryIO, n: int, path: Path) -> bytearray:
    """Read exactly ``n`` more bytes and check that nothing follows; grows only with real data."""
    data = bytearray()
    try:
        while len(data) <= n:
            chunk = f.read(min(_CHUNK, n + 1 - len(data)))
            if not chunk:
                break
            data += chunk
    except _GZIP_ERRORS as e:
        raise DataError(f"corrupted gzip stream in {path}: {e}") from None
    if len(data) < n:
        raise DataError(f"truncated IDX file {path}: expected {n} bytes of data, got {len(data)}")
    if len(data) > n:
        raise DataError(f"trailing bytes in IDX file {path}: expected {n} bytes of data, got more")
    return data


def _read_plain_payload(f: BinaryIO, n: int, path: Path) -> bytearray:
    """Like ``_read_payload`` for an uncompressed file: the size on disk is checked first."""
    have = os.fstat(f.fileno()).st_size - f.tell()
    if have != n:
        kind = "truncated" if have < n else "trailing bytes in"
        raise DataError(f"{kind} IDX file {path}: expected {n} bytes of data, got {have}")
    data = bytearray(n)
    if f.readinto(data) != n:  # the file changed under us
        raise DataError(f"truncated IDX file {path}: expected {n} bytes of data")
    return data


def read_idx(path: str | os.PathLike[str], sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian, writable array of shape ``dims``.

    If ``sha256`` is given, the SHA-256 of the decompressed file must equal it. Any problem with
    the file (missing, bad magic, unknown type, truncated, trailing bytes, corrupted gzip, checksum)
    raises :class:`~dgm.errors.DataError` naming the file.
    """
    path = Path(path)
    with _open(path) as f:
        dtype, dims, header = _parse_header(f, path)
        n = _expected_nbytes(dtype, dims, path)
        if isinstance(f, _gzip.GzipFile):
            data = _read_payload(f, n, path)
        else:
            data = _read_plain_payload(f, n, path)
    if sha256 is not None:
        h = hashlib.sha256(header)
        h.update(data)
        _check_sha256(path, sha256, h.hexdigest())
    x = np.frombuffer(data, dtype=dtype).reshape(dims)
    if dtype.itemsize > 1:
        x = x.astype(dtype.newbyteorder("="))
    return x


def _check_sha256(path: Path, expected: str, actual: str) -> None:
    if actual != expected.lower():
        raise DataError(
            f"checksum mismatch for {path}: SHA-256 of the decompressed content is {actual}, "
            f"expected {expected.lower()}"
        )


def _iter_decompressed(path: Path) -> Iterator[bytes]:
    with _open(path) as f:
        try:
            while chunk := f.read(_CHUNK):
                yield chunk
        except _GZIP_ERRORS as e:
            raise DataError(f"corrupted gzip stream in {path}: {e}") from None


def sha256_of_idx(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the *decompressed* content of ``path``, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    for chunk in _iter_decompressed(Path(path)):
        h.update(chunk)
    return h.hexdigest()


def write_idx(path: str | os.PathLike[str], x: np.ndarray, gzip: bool = False) -> Path:
    """Write ``x`` (1 to 8 dims; uint8, int8, int16, int32, float32 or float64) as an IDX file."""
    path = Path(path)
    x = np.asarray(x)
    code = _CODE_OF_KIND.get((x.dtype.kind, x.dtype.itemsize))
    if code is None or not 1 <= x.ndim <= _MAX_NDIM:
        raise UsageError(
            f"cannot write an array of dtype {x.dtype} and ndim {x.ndim} as IDX to {path}: "
            f"expected uint8, int8, int16, int32, float32 or float64 with 1 to {_MAX_NDIM} dims"
        )
    header = bytes([0, 0, code, x.ndim]) + struct.pack(f">{x.ndim}I", *x.shape)
    payload = header + np.ascontiguousarray(x, dtype=_DTYPE_OF_CODE[code]).tobytes()
    if gzip:
        payload = _gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
