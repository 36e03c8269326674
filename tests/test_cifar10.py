"""`--data cifar10:PATH` on synthetic archives in the official format (tests/cifar10_format.py writes them as
Python 2's cPickle did): loading in both forms, labels, values; broken or planted archives refused with one
sentence and exit code 2; the MD5-checked download from a server on 127.0.0.1; a few training steps of a
tiny U-Net for flow matching and the shortcut on the synthetic images, sampled at n = 1 and 2."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import cifar10 as C
from bench.config import DataConfig
from bench.data import load_dataset
from bench.errors import BenchError
from tests.cifar10_format import FOLDER, batch_bytes, make_batches, write_archive, write_folder
from tests.test_inception_download import _Server

ROOT = Path(__file__).resolve().parents[1]
PER = 6  # images per batch: 30 training images


@pytest.fixture(scope="module")
def batches():
    return make_batches(PER, seed=3, structured=False)


def expected(batches):
    """What the loader must return, computed from the HWC images directly: (30, 3, 32, 32) in [-1, 1], labels."""
    imgs = np.concatenate([b[0] for b in batches[:5]])  # data_batch_1..5 in order; test_batch not read
    x = torch.from_numpy(imgs.astype(np.float64) / 127.5 - 1.0).permute(0, 3, 1, 2).float()
    return x, torch.from_numpy(np.concatenate([b[1] for b in batches[:5]]))


def bench(*args, env=None):
    e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=e,
                          timeout=300, cwd=ROOT)


def test_the_writer_writes_what_the_official_files_hold(batches):
    """Protocol 2, byte strings as Python 2 wrote them, the three numpy globals and nothing else; and plain
    pickle (with encoding="bytes", as everyone reads CIFAR-10) gets the dict of bytes keys back."""
    raw = batch_bytes(*batches[0])
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ops[0] == ("PROTO", 2)
    assert {a for n, a in ops if n == "GLOBAL"} == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not {n for n, _ in ops} & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES", "STACK_GLOBAL"}
    d = pickle.loads(raw, encoding="bytes")
    assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert d[b"data"].shape == (PER, 3072) and d[b"data"].dtype == np.uint8 and len(d[b"labels"]) == PER


@pytest.mark.parametrize("form", ["archive", "archive-parent", "folder", "folder-parent"])
def test_loads_every_form(batches, tmp_path, form):
    if form.startswith("archive"):
        archive = write_archive(tmp_path / "c" / C.ARCHIVE, batches)
        path = archive if form == "archive" else archive.parent
    else:
        folder = write_folder(tmp_path / "c", batches)
        path = folder if form == "folder" else folder.parent
    data = load_dataset(DataConfig(spec=f"cifar10:{path}"))
    x, y = data.get(torch.arange(len(data)))
    want_x, want_y = expected(batches)
    assert len(data) == 5 * PER and data.shape == (3, 32, 32) and data.num_classes == 10 and data.kind == "images"
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, want_x, rtol=0, atol=1e-6)
    assert torch.equal(y, want_y)
    # channel-major rows: pixel (row 2, column 5) of image 7 in its three colours, read from the HWC array
    img = np.concatenate([b[0] for b in batches[:5]])[7]
    assert [round((float(v) + 1) * 127.5) for v in x[7, :, 2, 5]] == [int(c) for c in img[2, 5]]
    assert torch.equal(data.to_uint8(x), torch.from_numpy(np.concatenate([b[0] for b in batches[:5]])).permute(0, 3, 1, 2))
    assert data.reference() is data  # FID against the training images


def test_same_images_same_fingerprint_either_form(batches, tmp_path):
    a = load_dataset(DataConfig(spec=f"cifar10:{write_archive(tmp_path / 'a' / C.ARCHIVE, batches)}"))
    b = load_dataset(DataConfig(spec=f"cifar10:{write_folder(tmp_path / 'b', batches)}"))
    other = load_dataset(DataConfig(spec=f"cifar10:{write_folder(tmp_path / 'o', make_batches(PER, seed=4))}"))
    assert a.fingerprint() == b.fingerprint() != other.fingerprint()


def test_labels_false_trains_unconditionally(batches, tmp_path):
    path = write_archive(tmp_path / C.ARCHIVE, batches)
    data = load_dataset(DataConfig(spec=f"cifar10:{path}", labels=False))
    x, y = data.get(torch.arange(4))
    assert data.num_classes == 0 and y is None and data.label_probs() is None and x.shape == (4, 3, 32, 32)
    assert data.name == "cifar10" and data.kind == "images" and data.reference().num_classes == 10


class Planted:
    """A pickle payload: unpickling it would call os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _broken(kind: str, batches, tmp_path: Path) -> tuple[Path, str]:
    """An archive (or path) that must be refused, and a phrase its one sentence holds."""
    good = write_archive(tmp_path / "good" / C.ARCHIVE, batches).read_bytes()
    bad = tmp_path / "bad" / C.ARCHIVE
    bad.parent.mkdir()
    if kind == "truncated":
        bad.write_bytes(good[: len(good) // 2])
        return bad, "truncated or corrupt"
    if kind == "not-gzip":
        bad.write_bytes(b"<html>404</html>" * 100)
        return bad, "truncated or corrupt"
    if kind == "planted":
        from tests.cifar10_format import Py2Pickler

        payload = io.BytesIO()  # the official layout, the array replaced by a call of os.system
        Py2Pickler(payload).dump({b"data": Planted(tmp_path / "pwned"), b"labels": []})
        write_archive(bad, batches, members={"data_batch_3": payload.getvalue()})
        return bad, "system, which an official batch never holds"
    if kind == "missing-batch":
        with tarfile.open(bad, "w:gz") as tar:
            body = batch_bytes(*batches[0])
            info = tarfile.TarInfo(f"{FOLDER}/data_batch_1")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        return bad, "lacks"
    if kind == "wrong-shape":
        payload = io.BytesIO()
        from tests.cifar10_format import Py2Pickler

        Py2Pickler(payload).dump({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
        write_archive(bad, batches, members={"data_batch_2": payload.getvalue()})
        return bad, "(N, 3072)"
    if kind == "bad-labels":
        payload = io.BytesIO()
        from tests.cifar10_format import Py2Pickler

        Py2Pickler(payload).dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 12]})
        write_archive(bad, batches, members={"data_batch_5": payload.getvalue()})
        return bad, "labels in 0-9"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "not-gzip", "planted", "missing-batch", "wrong-shape", "bad-labels"])
def test_broken_archives_are_one_sentence(kind, batches, tmp_path):
    path, phrase = _broken(kind, batches, tmp_path)
    with pytest.raises(BenchError) as e:
        load_dataset(DataConfig(spec=f"cifar10:{path}"))
    msg = str(e.value)
    assert phrase in msg, msg
    assert "\n" not in msg and msg.endswith(".")
    assert not (tmp_path / "pwned").exists()  # the planted call never ran


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["truncated", "planted"])
def test_the_cli_refuses_a_broken_archive_with_exit_2(kind, batches, tmp_path):
    path, _ = _broken(kind, batches, tmp_path)
    r = bench("run", "--method", "flow_matching", "--profile", "cifar10", "--data", f"cifar10:{path}",
              "--set", "train.steps=1", "--set", "model.preset=UNet-tiny", "--quiet",
              env={"BENCH_STORE": str(tmp_path / "store")})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "CIFAR-10" in r.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_missing_path_offline_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with _Server(b"never served") as server:
        monkeypatch.setenv("BENCH_CIFAR10_URL", server.url)
        with pytest.raises(BenchError) as e:
            load_dataset(DataConfig(spec=f"cifar10:{tmp_path / 'nothing'}"))
    assert "BENCH_OFFLINE" in str(e.value) and C.ARCHIVE in str(e.value) and server.requests == []
    assert not (tmp_path / "nothing").exists()


def test_the_download_is_md5_checked_and_kept(batches, tmp_path, monkeypatch):
    body = write_archive(tmp_path / "served.tar.gz", batches).read_bytes()
    monkeypatch.delenv("BENCH_OFFLINE")
    monkeypatch.setattr(C, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    with _Server(body) as server:
        monkeypatch.setenv("BENCH_CIFAR10_URL", server.url)
        data = load_dataset(DataConfig(spec=f"cifar10:{tmp_path / 'data'}"))
        again = load_dataset(DataConfig(spec=f"cifar10:{tmp_path / 'data'}"))  # cached: not fetched again
    assert len(server.requests) == 1 and len(data) == len(again) == 5 * PER
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [C.ARCHIVE]
    torch.testing.assert_close(data.get(torch.arange(5 * PER))[0], expected(batches)[0], rtol=0, atol=1e-6)


def test_a_download_with_the_wrong_md5_is_refused_and_not_kept(batches, tmp_path, monkeypatch):
    body = write_archive(tmp_path / "served.tar.gz", batches).read_bytes()  # not the real archive's MD5
    monkeypatch.delenv("BENCH_OFFLINE")
    with _Server(body) as server:
        monkeypatch.setenv("BENCH_CIFAR10_URL", server.url)
        with pytest.raises(BenchError) as e:
            load_dataset(DataConfig(spec=f"cifar10:{tmp_path / 'data'}"))
    assert "MD5" in str(e.value) and "deleted" in str(e.value) and "\n" not in str(e.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_the_official_url_and_md5():
    # as published on https://www.cs.toronto.edu/~kriz/cifar.html
    assert C.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert C.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


def test_the_profile_resolves_to_the_literature_settings():
    from bench.config import resolve

    cfg = resolve("shortcut", "cifar10")
    assert cfg.data.spec.startswith("cifar10:") and cfg.data.labels is False
    assert (cfg.model.arch, cfg.model.preset, cfg.model.dropout) == ("unet", "UNet-cifar", 0.13)
    assert (cfg.train.batch_size, cfg.train.precision, cfg.train.compile) == (512, "bf16", True)
    assert (cfg.eval.num_samples, cfg.eval.features, cfg.method.M) == (50_000, "inception", 128)


@pytest.mark.parametrize("name", ["flow_matching", "shortcut"])
def test_a_tiny_unet_trains_and_samples_on_synthetic_cifar(name, tmp_path):
    """A few steps through the harness's trainer (the cifar10 profile with a tiny U-Net, fp32 on the CPU),
    then the method's sampler at n = 1 and 2 from the EMA model."""
    from bench.config import resolve
    from bench.evaluation.sampling import sample
    from bench.speed import build_trainer

    path = write_archive(tmp_path / C.ARCHIVE, make_batches(8, seed=0))
    cfg = resolve(name, "cifar10", ["model.preset=", "model.hidden=16", "model.depth=1", "model.channel_mult=1,2",
                                    "model.attn_resolutions=16", "model.heads=1", "train.batch_size=8",
                                    "train.precision=fp32", "train.compile=false", "train.device=cpu",
                                    "train.lr_warmup=0", "train.ema_decay=0.5", "M=4"], data_spec=f"cifar10:{path}")
    data = load_dataset(cfg.data)
    tr = build_trainer(cfg, data, torch.device("cpu"))
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.run_steps(4)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.zeros(4, dtype=torch.long)  # the null class of an unconditional model
    out = {n: sample(tr.method, tr.ema.eval(), x0, y, n, g) for n in (1, 2)}
    for n, x in out.items():
        assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all(), n
        assert not torch.equal(x, x0)  # the trained model moves the noise
    assert not torch.equal(out[1], out[2])
