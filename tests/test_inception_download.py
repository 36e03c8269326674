"""The Inception file fetched like every FID tool does: downloaded into torch hub's cache from a
server (here one on 127.0.0.1, started in the test), used only when its SHA-256 matches."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from bench.evaluation import metrics as M
from bench.errors import BenchError


class _Server:
    """Serves `body` at any path on 127.0.0.1; counts the requests it saw."""

    def __init__(self, body: bytes):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{M.INCEPTION_FILE}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


BODY = b"stand-in weights " * 4096  # 68 KiB: the path is what is tested, not the network


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache ($TORCH_HOME/hub/checkpoints) and downloads allowed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_the_real_hash_is_the_one_checked():
    # torch hub names files <name>-<first 8 hex digits of the SHA-256>.<ext>
    assert len(M.INCEPTION_SHA256) == 64 and M.INCEPTION_FILE.split("-")[-1].startswith(M.INCEPTION_SHA256[:8])
    assert M.INCEPTION_URL.endswith(M.INCEPTION_FILE) and M.INCEPTION_URL.startswith("https://github.com/toshas/torch-fidelity/")


def test_a_file_with_the_right_hash_is_cached_and_used(hub, monkeypatch):
    monkeypatch.setattr(M, "INCEPTION_SHA256", hashlib.sha256(BODY).hexdigest())
    with _Server(BODY) as server:
        monkeypatch.setenv("BENCH_INCEPTION_URL", server.url)
        path = M.find_inception_weights("", progress=False)
        assert path == hub / M.INCEPTION_FILE and path.read_bytes() == BODY
        assert M.find_inception_weights("", progress=False) == path  # cached: not fetched again
    assert server.requests == [f"/{M.INCEPTION_FILE}"]
    assert sorted(p.name for p in hub.iterdir()) == [M.INCEPTION_FILE]  # no temporary file left


def test_a_file_with_a_wrong_hash_is_refused_and_not_kept(hub, monkeypatch):
    with _Server(BODY) as server:  # the expected hash stays the real file's
        monkeypatch.setenv("BENCH_INCEPTION_URL", server.url)
        with pytest.raises(BenchError) as e:
            M.find_inception_weights("", progress=False)
    msg = str(e.value)
    assert "SHA-256" in msg and "deleted" in msg and "\n" not in msg and msg.endswith(".")
    assert server.requests and list(hub.iterdir()) == []


def test_offline_never_connects(hub, monkeypatch):
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with _Server(BODY) as server:
        monkeypatch.setenv("BENCH_INCEPTION_URL", server.url)
        with pytest.raises(BenchError) as e:
            M.find_inception_weights("", progress=False)
    assert M.INCEPTION_FILE in str(e.value) and "BENCH_OFFLINE" in str(e.value)
    assert server.requests == [] and not hub.exists()


def test_an_unreachable_server_is_one_sentence(hub, monkeypatch):
    with _Server(BODY) as server:
        url = server.url
    monkeypatch.setenv("BENCH_INCEPTION_URL", url)  # the server is closed: connection refused
    with pytest.raises(BenchError) as e:
        M.find_inception_weights("", progress=False)
    assert "failed" in str(e.value) and "\n" not in str(e.value)
    assert list(hub.iterdir()) == []


@pytest.mark.slow
def test_bench_run_exits_2_on_a_wrong_hash(hub, monkeypatch, tmp_path):
    """The CLI: an image dataset that needs Inception; the download's hash mismatch is exit code 2."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(imgs / f"{i}.png")
    with _Server(BODY) as server:
        env = {**__import__("os").environ, "BENCH_INCEPTION_URL": server.url}
        out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--method", "flow_matching", "--profile", "smoke",
                              "--data", f"imagefolder:{imgs}", "--set", "model.arch=dit", "--set", "train.steps=1",
                              "--quiet"], env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2, out.stderr
    assert "SHA-256" in out.stderr and "deleted" in out.stderr
    assert list(hub.iterdir()) == []
