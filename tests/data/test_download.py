"""Downloads from a loopback server: verified before they land, nothing partial left behind."""

from __future__ import annotations

import dataclasses
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from dgm.data import REGISTRY, check_url, download_file, load_dataset, read_idx, write_idx
from dgm.errors import DataError, UsageError

if TYPE_CHECKING:
    from tests.data.conftest import Server

SPEC = REGISTRY["mnist"]


def _serve_mnist(server: Server, mnist_dir: Path) -> None:
    for f in SPEC.files().values():
        shutil.copyfile(mnist_dir / f.name, server.root / f.name)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_load_dataset_downloads_verifies_and_loads(
    tmp_path: Path, http_server: Server, mnist_dir: Path
) -> None:
    _serve_mnist(http_server, mnist_dir)
    target = tmp_path / "fresh"
    d = load_dataset(
        "mnist", data_dir=target, download=True, base_url=http_server.url, progress=False
    )
    assert d.train_images.shape == (60000, 28, 28)
    assert torch.bincount(d.test_labels).tolist()[:3] == [980, 1135, 1032]
    assert _leftovers(target) == sorted(f.name for f in SPEC.files().values())
    for f in SPEC.files().values():  # byte for byte what was served
        assert (target / f.name).read_bytes() == (mnist_dir / f.name).read_bytes()


def test_only_missing_files_are_fetched(
    mnist_copy: Path, http_server: Server, mnist_dir: Path
) -> None:
    _serve_mnist(http_server, mnist_dir)
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    load_dataset("mnist", data_dir=mnist_copy, download=True, base_url=http_server.url)
    assert http_server.requests == ["/t10k-labels-idx1-ubyte.gz"]


def test_download_goes_to_the_cache_without_data_dir(
    tmp_path: Path, http_server: Server, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dataclasses.replace(SPEC, search_dirs=(tmp_path / "empty",))
    monkeypatch.setitem(REGISTRY, "mnist", spec)
    monkeypatch.setenv("DGM_DATA_HOME", str(tmp_path / "home"))
    _serve_mnist(http_server, mnist_dir)
    load_dataset("mnist", download=True, base_url=http_server.url, progress=False)
    assert len(list((tmp_path / "home" / "mnist").glob("*.gz"))) == 4
    load_dataset("mnist")  # found in the cache now, no download asked for


def test_corrupted_download_is_refused_and_removed(
    tmp_path: Path, http_server: Server, mnist_dir: Path
) -> None:
    _serve_mnist(http_server, mnist_dir)
    served = http_server.root / "t10k-labels-idx1-ubyte.gz"
    y = read_idx(served)
    y[123] = (y[123] + 1) % 10
    write_idx(served, y, gzip=True)  # a valid IDX file, with the wrong content
    target = tmp_path / "fresh"
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=target, download=True, base_url=http_server.url)
    message = str(info.value)
    assert "checksum mismatch" in message and http_server.url in message
    assert SPEC.test_labels.sha256 in message and "\n" not in message
    assert "t10k-labels-idx1-ubyte.gz" not in _leftovers(target)
    assert not [n for n in _leftovers(target) if n.endswith(".part")]


@pytest.mark.parametrize(
    ("body", "what"),
    [(b"<html>not found</html>", "checksum mismatch"), (b"\x1f\x8b\x08\x00garbage", "gzip")],
    ids=["html", "bad-gzip"],
)
def test_garbage_download(tmp_path: Path, http_server: Server, body: bytes, what: str) -> None:
    (http_server.root / "x.gz").write_bytes(body)
    url = http_server.url + "x.gz"
    with pytest.raises(DataError, match=what) as info:
        download_file(url, tmp_path / "x.gz", sha256="0" * 64, progress=False)
    assert url in str(info.value) and "\n" not in str(info.value)
    assert _leftovers(tmp_path) == ["served"]


def test_http_error(tmp_path: Path, http_server: Server) -> None:
    url = http_server.url + "missing.gz"
    with pytest.raises(DataError, match="HTTP 404") as info:
        download_file(url, tmp_path / "missing.gz", sha256=None, progress=False)
    assert url in str(info.value)
    assert _leftovers(tmp_path) == ["served"]


def test_connection_cut_short(tmp_path: Path, http_server: Server) -> None:
    with pytest.raises(DataError, match="/short"):
        download_file(http_server.url + "short", tmp_path / "short", sha256=None, progress=False)
    assert _leftovers(tmp_path) == ["served"]


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="failed"):
        download_file(f"http://127.0.0.1:{port}/x.gz", tmp_path / "x.gz", None, progress=False)
    assert not (tmp_path / "x.gz").exists()


def test_unverified_download_with_progress_bar(
    tmp_path: Path, http_server: Server, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _serve_mnist(http_server, mnist_dir)
    name = SPEC.train_labels.name
    dest = download_file(http_server.url + name, tmp_path / "sub" / name, sha256=None)
    assert dest.read_bytes() == (mnist_dir / name).read_bytes()
    captured = capsys.readouterr()
    assert captured.out == ""  # the bar goes to stderr, never stdout


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/x",
        "http://127.0.0.1.example.com/x",
        "ftp://127.0.0.1/x",
        "file:///etc/passwd",
        "https://",
        "127.0.0.1/x",
    ],
)
def test_refused_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(UsageError, match="https://"):
        download_file(url, tmp_path / "x.gz", sha256=None, progress=False)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["https://example.com/mnist/", "http://127.0.0.1:8000/", "http://localhost/a/"]
)
def test_accepted_urls(url: str) -> None:
    check_url(url)


def test_load_dataset_refuses_a_plain_http_base_url(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_dataset("mnist", data_dir=tmp_path, download=True, base_url="http://example.com/x")
    assert _leftovers(tmp_path) == []


def test_missing_without_download_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--download") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(info.value)
    assert _leftovers(tmp_path) == []
