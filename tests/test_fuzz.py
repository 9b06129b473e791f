"""Property-based tests (hypothesis): hostile IDX files and configs end in dgm's own one-line
errors, never a traceback, a hang or an allocation of what a header merely claims."""

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgm.config import load_config, validate
from dgm.data import read_idx, write_idx
from dgm.errors import ConfigError, DataError

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def valid_idx(rng: np.random.Generator) -> bytes:
    x = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 3, 4, 5)
    return header + x.tobytes()


def _check_reads_or_refuses(path, data: bytes) -> None:
    path.write_bytes(data)
    tracemalloc.start()
    try:
        x = read_idx(path)
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        x = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # never more than a small multiple of what the file could hold once inflated
    assert peak < 64 * 1024**2 + 8 * len(data) * 1032
    if x is not None:
        assert isinstance(x, np.ndarray) and x.ndim >= 1


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_cleanly(tmp_path, data):
    _check_reads_or_refuses(tmp_path / "f.idx", data)


@FUZZ
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=6),
    st.integers(0, 80),
    st.booleans(),
)
def test_mutated_and_truncated_idx_files_are_refused_cleanly(tmp_path, seed, flips, cut, compress):
    rng = np.random.default_rng(seed)
    data = bytearray(valid_idx(rng))
    for pos, value in flips:  # overwrite header and data bytes
        data[pos % len(data)] = value
    data = bytes(data[: len(data) - cut])
    if compress:
        data = gzip.compress(data)
    _check_reads_or_refuses(tmp_path / "f.idx.gz", data)


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), st.integers(0, 64))
def test_headers_that_promise_huge_data_allocate_nothing(tmp_path, dims, have):
    """A header may announce up to 2^128 bytes; the file holds a few. Refused before allocating."""
    header = struct.pack(">BBBB", 0, 0, 0x0E, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    for compress in (False, True):
        data = header + bytes(have)
        _check_reads_or_refuses(tmp_path / "h.idx", gzip.compress(data) if compress else data)


def test_a_gzip_bomb_is_stopped_at_the_announced_size(tmp_path):
    header = struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 10)
    bomb = gzip.compress(header + bytes(200 * 1024**2))  # 200 MB of zeros in ~200 kB
    path = tmp_path / "bomb.idx.gz"
    path.write_bytes(bomb)
    tracemalloc.start()
    with pytest.raises(DataError, match="trailing"):
        read_idx(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 1024**2


def test_round_trip_is_exact(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(7, 3), dtype=np.uint8)
    for gz in (False, True):
        path = write_idx(tmp_path / f"x{gz}.idx", x, gzip=gz)
        assert np.array_equal(read_idx(path), x)


# -- configs ------------------------------------------------------------------------------------

KEYS = [
    "data.binarize", "data.dequantize", "data.train_limit", "model.kind", "model.latent_dim",
    "model.hidden", "model.likelihood", "model.components", "objective.k", "objective.estimator",
    "objective.baseline", "inference.kind", "inference.inner_steps", "train.lr", "train.epochs",
    "train.betas", "em.method", "nosuch.key", "model.nosuch", "train",
]  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-5, 300), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_random_overrides_give_a_config_or_one_config_error(overrides):
    try:
        config = load_config(None, overrides)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
    else:
        assert validate(config.to_dict()) == config  # what is accepted round-trips


@FUZZ
@given(st.text(max_size=200))
def test_random_toml_text_gives_a_config_or_one_config_error(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as err:
        assert str(path) in str(err) and "\n" not in str(err)
