"""Fixtures for the data tests: MNIST copies, a loopback HTTP server, an isolated cache."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dgm.data import REGISTRY


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point the download cache at a fresh directory: no test reads or writes ~/.cache."""
    monkeypatch.setenv("DGM_DATA_HOME", str(tmp_path_factory.mktemp("dgm_home")))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST files shipped inside the package."""
    return REGISTRY["mnist"].search_dirs[0]


@pytest.fixture
def mnist_copy(tmp_path: Path, mnist_dir: Path) -> Path:
    """A writable copy of the four MNIST files in a fresh directory."""
    d = tmp_path / "mnist_copy"
    d.mkdir()
    for f in mnist_dir.glob("*.gz"):
        shutil.copyfile(f, d / f.name)
    return d


@dataclass
class Server:
    """A loopback HTTP server over ``root``; ``requests`` lists the paths asked for."""

    root: Path
    url: str = ""
    requests: list[str] = field(default_factory=list)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server_record: Server

    def do_GET(self) -> None:
        self.server_record.requests.append(self.path)
        if self.path == "/short":  # announce 1000 bytes, send 10, hang up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"\0" * 8)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Server]:
    """Serve a fresh directory on 127.0.0.1 at an ephemeral port, in a thread."""
    root = tmp_path / "served"
    root.mkdir()
    record = Server(root=root)
    handler = type("Handler", (_Handler,), {"server_record": record})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    record.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield record
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
