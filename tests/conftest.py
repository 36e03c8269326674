"""Shared fixtures: every test gets its own tracking store, checkpoints and caches."""

from __future__ import annotations

import os

import pytest
import torch

# tests share 2 cores with each other and with CI: one torch thread each keeps them predictable
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """BENCH_STORE in a temp dir, no MLFLOW_TRACKING_URI from the environment, cwd = tmp."""
    store = tmp_path / "store"
    monkeypatch.setenv("BENCH_STORE", str(store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("BENCH_INCEPTION_URL", raising=False)
    monkeypatch.setenv("BENCH_OFFLINE", "1")  # no test downloads; the download tests serve files on 127.0.0.1
    monkeypatch.setenv("BENCH_CONFIG", os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench.toml"))
    monkeypatch.chdir(tmp_path)
    return store
