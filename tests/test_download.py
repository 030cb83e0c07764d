import dataclasses
import http.server
import os
import socket
import stat
import threading
from typing import ClassVar

import pytest

from usam.download import cache_dir, download_file, resolve_checkpoint
from usam.errors import CheckpointError, DownloadError
from usam.models import get_model_spec

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        if self.path.endswith("/missing.pt"):
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        if self.path.endswith("/truncated.pt"):
            # Announce the full length, send half, hang up: an interrupted download.
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("USAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_download_writes_the_file(server, tmp_path):
    path = download_file(f"{server}/file.pt", tmp_path / "out" / "file.pt", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [entry.name for entry in path.parent.iterdir()] == ["file.pt"]


def test_interrupted_download_leaves_nothing_that_looks_complete(server, tmp_path):
    target = tmp_path / "file.pt"
    with pytest.raises(DownloadError, match=r"ended after|interrupted"):
        download_file(f"{server}/truncated.pt", target, progress=False)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_keeps_an_existing_file(server, tmp_path):
    target = tmp_path / "file.pt"
    target.write_bytes(b"previous")
    with pytest.raises(DownloadError):
        download_file(f"{server}/truncated.pt", target, progress=False)
    assert target.read_bytes() == b"previous"


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server}/missing.pt", tmp_path / "x.pt", progress=False)


def test_no_network_error_says_how_to_pass_a_local_file(cache):
    spec = dataclasses.replace(
        get_model_spec("sam2.1-tiny"), url=f"http://127.0.0.1:{_closed_port()}/sam2.1_hiera_tiny.pt"
    )
    with pytest.raises(DownloadError, match=r"cannot reach.*--checkpoint PATH"):
        resolve_checkpoint(spec, progress=False)
    assert not (cache / "checkpoints" / "sam2.1_hiera_tiny.pt").exists()


def test_first_use_downloads_into_the_cache_then_reuses_it(server, cache):
    spec = dataclasses.replace(get_model_spec("sam2.1-small"), url=f"{server}/sam2.1_hiera_small.pt")
    assert cache_dir() == cache
    first = resolve_checkpoint(spec, progress=False)
    assert first == cache / "checkpoints" / "sam2.1_hiera_small.pt"
    assert first.read_bytes() == PAYLOAD
    second = resolve_checkpoint(spec, progress=False)
    assert second == first
    assert _Handler.requests == ["/sam2.1_hiera_small.pt"]


def test_local_checkpoint_and_folder_skip_the_download(tmp_path, cache):
    spec = dataclasses.replace(get_model_spec("sam2.1-tiny"), url="http://127.0.0.1:9/never")
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert resolve_checkpoint(spec, local) == local
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "sam2.1_hiera_tiny.pt").write_bytes(b"y")
    assert resolve_checkpoint(spec, checkpoint_dir=tmp_path / "ckpts") == tmp_path / "ckpts" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(spec, tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="official file names"):
        resolve_checkpoint(get_model_spec("sam2.1-large"), checkpoint_dir=tmp_path / "ckpts")
    with pytest.raises(CheckpointError, match="--checkpoint"):
        resolve_checkpoint(spec, download=False)


def test_downloaded_file_follows_the_umask(server, tmp_path):
    previous = os.umask(0o022)
    try:
        path = download_file(f"{server}/ok.pt", tmp_path / "ok.pt", progress=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_cache_folder_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("USAM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DownloadError, match=r"a file is in the way \(set \$USAM_CACHE_DIR to a folder\)"):
        resolve_checkpoint(get_model_spec("sam2.1-tiny"), progress=False)
