"""The IDX reader: exact round trips, and a one-line DataError for every kind of broken file."""

from __future__ import annotations

import gzip
import hashlib
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from dgm.data import read_idx, sha256_of_idx, write_idx
from dgm.data.idx import MAX_IDX_BYTES
from dgm.errors import DataError, UsageError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)]


def _example(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        x.flat[0] = info.max  # the extremes exercise sign and byte order
        x.flat[-1] = info.min
        return x
    return rng.normal(size=shape).astype(dtype) * 1e3


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _raises_naming(path: Path, match: str | None, fn=read_idx) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        fn(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return info.value


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip(tmp_path: Path, dtype: type, shape: tuple[int, ...], compress: bool) -> None:
    x = _example(dtype, shape)
    path = write_idx(tmp_path / "x.idx", x, gzip=compress)
    y = read_idx(path)
    assert y.dtype == np.dtype(dtype) and y.dtype.isnative
    assert y.shape == shape
    np.testing.assert_array_equal(y, x)
    assert y.flags.writeable


def test_round_trip_of_empty_dimension(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "empty.idx", np.zeros((0, 28, 28), np.uint8))
    assert read_idx(path).shape == (0, 28, 28)


def test_byte_layout_is_big_endian(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.idx", np.array([1, 258], dtype=np.int16))
    assert path.read_bytes() == _header(0x0B, (2,)) + b"\x00\x01\x01\x02"


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    x = _example(np.int32, (4, 3))
    raw = _header(0x0C, (4, 3)) + x.astype(">i4").tobytes()
    (tmp_path / "really-gzip.idx").write_bytes(gzip.compress(raw))
    (tmp_path / "really-plain.gz").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "really-gzip.idx"), x)
    np.testing.assert_array_equal(read_idx(tmp_path / "really-plain.gz"), x)


def test_sha256_is_of_the_decompressed_bytes(tmp_path: Path) -> None:
    x = _example(np.float32, (5, 6))
    plain = write_idx(tmp_path / "x", x)
    zipped = write_idx(tmp_path / "x.gz", x, gzip=True)
    expected = hashlib.sha256(plain.read_bytes()).hexdigest()
    assert sha256_of_idx(plain) == sha256_of_idx(zipped) == expected
    np.testing.assert_array_equal(read_idx(zipped, sha256=expected.upper()), x)


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x.gz", np.arange(10, dtype=np.uint8), gzip=True)
    actual = sha256_of_idx(path)
    wrong = "0" * 64
    with pytest.raises(DataError) as info:
        read_idx(path, sha256=wrong)
    message = str(info.value)
    assert str(path) in message and wrong in message and actual in message


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="uint64"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint64))


# ---- broken files -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope.gz", "cannot read")
    _raises_naming(tmp_path / "nope.gz", "cannot read", fn=sha256_of_idx)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_bad_magic(tmp_path: Path, compress: bool) -> None:
    raw = b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc"
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    _raises_naming(path, "not an IDX file")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    _raises_naming(path, "truncated")


@pytest.mark.parametrize("code", [0x00, 0x0A, 0x0F, 0xFF])
def test_unknown_type_code(tmp_path: Path, code: int) -> None:
    path = tmp_path / "bad"
    path.write_bytes(_header(code, (3,)) + b"abc")
    _raises_naming(path, f"unknown IDX type code 0x{code:02X}")


def test_zero_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x08\x00")
    _raises_naming(path, "ndim=0")


def test_header_cut_inside_dims(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(_header(0x08, (60000, 28, 28))[:9])
    _raises_naming(path, "expected 12 bytes of dimensions, got 5")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_truncated_data(tmp_path: Path, compress: bool) -> None:
    raw = _header(0x0B, (10,)) + b"\x00" * 19  # 10 int16 = 20 bytes promised
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    _raises_naming(path, "expected 20 bytes of data, got 19")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_trailing_bytes(tmp_path: Path, compress: bool) -> None:
    raw = _header(0x08, (3,)) + b"abcd"
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    _raises_naming(path, "trailing bytes")


def test_header_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    path.write_bytes(_header(0x0E, (1_000_000, 1_000_000)) + b"\x00" * 8)  # 8e12 bytes promised
    _raises_naming(path, str(MAX_IDX_BYTES))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_big_promise_small_file_fails_fast_without_allocating(
    tmp_path: Path, compress: bool
) -> None:
    raw = _header(0x08, (1024, 1024, 1024)) + b"\x07" * 100  # 1 GiB promised, under the limit
    path = tmp_path / "liar"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        _raises_naming(path, "expected 1073741824 bytes of data, got 100")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 16 * 2**20


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as f:  # 10 bytes promised, 64 MiB delivered (~64 KiB on disk)
        f.write(_header(0x08, (10,)))
        zeros = b"\0" * 2**20
        for _ in range(64):
            f.write(zeros)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        _raises_naming(path, "trailing bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def _random_gz(tmp_path: Path, compressible: bool = False) -> tuple[Path, bytes]:
    """A gzipped IDX file: random bytes (deflate's stored blocks) or a repetitive pattern."""
    x = np.random.default_rng(1).integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    if compressible:
        x //= 64  # 4 grey levels: Huffman-coded blocks
    path = write_idx(tmp_path / "x.gz", x, gzip=True)
    return path, path.read_bytes()


@pytest.mark.parametrize("compressible", [False, True], ids=["stored", "huffman"])
@pytest.mark.parametrize("fn", [read_idx, sha256_of_idx], ids=["read_idx", "sha256_of_idx"])
def test_corrupted_gzip(tmp_path: Path, fn, compressible: bool) -> None:
    path, data = _random_gz(tmp_path, compressible)
    mid = len(data) // 2
    broken = bytearray(data)
    for i in range(mid, mid + 16):
        broken[i] ^= 0xFF
    path.write_bytes(bytes(broken))
    _raises_naming(path, "corrupted gzip", fn=fn)


def test_bad_crc(tmp_path: Path) -> None:
    path, data = _random_gz(tmp_path)
    broken = bytearray(data)
    broken[-8] ^= 0x01  # the CRC-32 in the gzip trailer
    path.write_bytes(bytes(broken))
    _raises_naming(path, "corrupted gzip")


@pytest.mark.parametrize("fn", [read_idx, sha256_of_idx], ids=["read_idx", "sha256_of_idx"])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_gzip(tmp_path: Path, fn, keep: float) -> None:
    path, data = _random_gz(tmp_path)
    path.write_bytes(data[: int(len(data) * keep)])
    _raises_naming(path, "corrupted gzip", fn=fn)
