"""The latent path: `bench prepare-latents` and `latents:DIR`, with a tiny randomly initialised
AutoencoderKL saved into tmp (no weights can be downloaded). Expected values are computed here
straight from the PNG files and diffusers' own encode/decode, not from bench's code."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import DataConfig
from bench.data import load_dataset
from bench.errors import BenchError

pytest.importorskip("diffusers")

SIDE = 8  # image side; the tiny VAE halves it once -> 4x4 latents


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=SIDE).eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A VAE folder and an image folder with two classes of three random 8x8 PNGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("latent-assets")
    tiny_vae().save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cats", "dogs"):
        (root / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "imgs" / cls / f"{i}.png")
            pixels[f"{cls}/{i}.png"] = arr
    return root, pixels


def prepare(assets, out, **kw):
    from bench.data.prepare_latents import prepare_latents

    root, _ = assets
    kw = {"resolution": SIDE, "batch_size": 4, "device": "cpu", "workers": 0, "progress": False, **kw}
    return prepare_latents(f"imagefolder:{root / 'imgs'}", root / "vae", out, **kw)


@pytest.fixture(scope="module")
def latents_dir(assets, tmp_path_factory):
    return prepare(assets, tmp_path_factory.mktemp("lat") / "celeb-latents")


def pixels_in_order(pixels):
    return np.stack([pixels[k] for k in sorted(pixels)])  # (N, H, W, 3) uint8, the folder's sorted order


def test_prepare_writes_the_vae_posterior_mean_times_the_scaling(assets, latents_dir):
    from diffusers import AutoencoderKL

    root, pixels = assets
    vae = AutoencoderKL.from_pretrained(root / "vae")
    imgs = torch.from_numpy(pixels_in_order(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        expected = vae.encode(imgs).latent_dist.mean * vae.config.scaling_factor

    z = np.load(latents_dir / "latents.npy")
    assert z.shape == (6, 4, SIDE // 2, SIDE // 2) and z.dtype == np.float32
    np.testing.assert_allclose(z, expected.numpy(), rtol=0, atol=1e-5)
    assert np.load(latents_dir / "labels.npy").tolist() == [0, 0, 0, 1, 1, 1]

    meta = json.loads((latents_dir / "latents.json").read_text())
    weights = (root / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert meta["vae_weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert meta["scaling_factor"] == pytest.approx(0.18215) and meta["shift_factor"] == 0.0
    assert meta["latent_shape"] == [4, 4, 4] and meta["num_samples"] == 6 and meta["resolution"] == SIDE
    assert meta["source"] == f"imagefolder:{(root / 'imgs').resolve()}" and meta["vae_path"] == str((root / "vae").resolve())
    assert meta["classes"] == ["cats", "dogs"]
    assert not list(latents_dir.parent.glob(".*tmp*"))  # the temporary folder was renamed, not left


def test_latents_dataset_reads_rows_decodes_with_the_vae_and_references_real_images(assets, latents_dir):
    from diffusers import AutoencoderKL

    root, pixels = assets
    d = load_dataset(DataConfig(spec=f"latents:{latents_dir}"))
    assert d.kind == "images" and d.shape == (4, 4, 4) and len(d) == 6 and d.num_classes == 2
    z = torch.from_numpy(np.load(latents_dir / "latents.npy"))
    x, y = d.get(torch.tensor([5, 0, 3]))
    assert torch.equal(x, z[[5, 0, 3]]) and y.tolist() == [1, 0, 1]
    torch.testing.assert_close(d.label_probs(), torch.tensor([0.5, 0.5]))

    # evaluation decodes samples with the same VAE: z / scaling -> decoder -> [-1, 1] -> uint8
    vae = AutoencoderKL.from_pretrained(root / "vae")
    with torch.no_grad():
        img = vae.decode(z[:4] / vae.config.scaling_factor).sample
    expected = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    got = d.to_uint8(z[:4])
    assert got.dtype == torch.uint8 and got.shape == (4, 3, SIDE, SIDE)
    assert (got.int() - expected.int()).abs().max() <= 1  # rounding at .5 may differ by one level

    # FID's reference: the real images, pixel for pixel
    ref = d.reference()
    assert ref.name == f"imagefolder:{(root / 'imgs').resolve()}" and len(ref) == 6 and ref.shape == (3, SIDE, SIDE)
    rx, _ = ref.get(torch.arange(6))
    assert torch.equal(ref.to_uint8(rx), torch.from_numpy(pixels_in_order(pixels)).permute(0, 3, 1, 2))
    assert "AutoencoderKL" in d.decoder_name


def test_fingerprint_follows_the_latents_and_the_vae(latents_dir, tmp_path):
    a = load_dataset(DataConfig(spec=f"latents:{latents_dir}")).fingerprint()
    assert a == load_dataset(DataConfig(spec=f"latents:{latents_dir}")).fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(latents_dir, copy)
    assert load_dataset(DataConfig(spec=f"latents:{copy}")).fingerprint() == a  # where it lies does not matter
    meta = json.loads((copy / "latents.json").read_text())
    meta["vae_weights_sha256"] = "0" * 64
    (copy / "latents.json").write_text(json.dumps(meta))
    assert load_dataset(DataConfig(spec=f"latents:{copy}")).fingerprint() != a


def test_an_interrupted_prepare_leaves_nothing(assets, tmp_path, monkeypatch):
    import bench.data.latents as L

    real, calls = L.encode, []

    def encode_then_crash(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real(*args)

    monkeypatch.setattr(L, "encode", encode_then_crash)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="power cut"):
        prepare(assets, out, batch_size=2)
    assert len(calls) == 2 and not out.exists() and list(tmp_path.iterdir()) == []


def test_float16_storage(assets, latents_dir, tmp_path):
    out = prepare(assets, tmp_path / "half", dtype="float16")
    z16 = np.load(out / "latents.npy")
    assert z16.dtype == np.float16
    np.testing.assert_allclose(z16.astype(np.float32), np.load(latents_dir / "latents.npy"), rtol=2e-3, atol=2e-3)
    x, _ = load_dataset(DataConfig(spec=f"latents:{out}")).get(torch.tensor([0]))
    assert x.dtype == torch.float32


def _one_sentence(e: BenchError) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def test_bad_vae_folders_are_one_sentence(assets, tmp_path):
    from safetensors.torch import save_file

    from bench.data.prepare_latents import prepare_latents

    root, _ = assets
    with pytest.raises(BenchError) as e:
        prepare_latents(f"imagefolder:{root / 'imgs'}", tmp_path / "no-vae", tmp_path / "o1", resolution=SIDE, progress=False)
    assert "does not exist" in _one_sentence(e.value)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(root / "vae" / "config.json", no_weights)
    with pytest.raises(BenchError) as e:
        prepare_latents(f"imagefolder:{root / 'imgs'}", no_weights, tmp_path / "o2", resolution=SIDE, progress=False)
    assert "no weights" in _one_sentence(e.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError) as e:
        prepare_latents(f"imagefolder:{root / 'imgs'}", tmp_path / "empty", tmp_path / "o3", resolution=SIDE, progress=False)
    assert "no config.json" in _one_sentence(e.value)

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(root / "vae" / "config.json", partial)
    state = {k: v for k, v in tiny_vae().state_dict().items() if not k.startswith("decoder.")}
    save_file(state, partial / "diffusion_pytorch_model.safetensors")
    with pytest.raises(BenchError) as e:
        prepare_latents(f"imagefolder:{root / 'imgs'}", partial, tmp_path / "o4", resolution=SIDE, progress=False)
    assert "lack" in _one_sentence(e.value)
    assert not any(p.name.startswith(("o", ".o")) for p in tmp_path.iterdir())


def test_bad_latents_folders_and_outputs_are_one_sentence(assets, latents_dir, tmp_path):
    with pytest.raises(BenchError) as e:
        load_dataset(DataConfig(spec=f"latents:{tmp_path / 'nothing'}"))
    assert "does not exist" in _one_sentence(e.value)

    (tmp_path / "no-meta").mkdir()
    np.save(tmp_path / "no-meta" / "latents.npy", np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(BenchError) as e:
        load_dataset(DataConfig(spec=f"latents:{tmp_path / 'no-meta'}"))
    assert "latents.json" in _one_sentence(e.value)

    with pytest.raises(BenchError) as e:  # never overwrite a folder that holds something
        prepare(assets, latents_dir)
    assert "already exists" in _one_sentence(e.value)

    moved = tmp_path / "moved"
    shutil.copytree(latents_dir, moved)
    meta = json.loads((moved / "latents.json").read_text())
    meta["source"] = f"imagefolder:{tmp_path / 'gone'}"
    (moved / "latents.json").write_text(json.dumps(meta))
    with pytest.raises(BenchError) as e:
        load_dataset(DataConfig(spec=f"latents:{moved}")).reference()
    assert "real images" in _one_sentence(e.value)


def test_decoding_refuses_a_different_vae(assets, latents_dir, tmp_path):
    root, _ = assets
    vae2 = tmp_path / "vae2"
    tiny_vae(seed=1).save_pretrained(vae2)
    moved = tmp_path / "moved"
    shutil.copytree(latents_dir, moved)
    meta = json.loads((moved / "latents.json").read_text())
    meta["vae_path"] = str(vae2)
    (moved / "latents.json").write_text(json.dumps(meta))
    d = load_dataset(DataConfig(spec=f"latents:{moved}"))  # training does not need the decoder
    with pytest.raises(BenchError) as e:
        d.to_uint8(d.get(torch.tensor([0]))[0])
    assert "not the ones" in _one_sentence(e.value)


@pytest.mark.slow
def test_cli_prepare_then_train_and_evaluate_on_latents(assets, tmp_path):
    """prepare-latents from the command line, then a tiny DiT run whose FID compares decoded samples with the PNGs."""
    import math

    from typer.testing import CliRunner

    from bench.cli import app
    from bench.config import resolve
    from bench.train.run import execute
    from bench.store.tracking import client, tracking_uri

    root, _ = assets
    out = tmp_path / "lat"
    r = CliRunner().invoke(app, ["prepare-latents", "--data", f"imagefolder:{root / 'imgs'}", "--vae", str(root / "vae"),
                                 "--out", str(out), "--resolution", str(SIDE), "--workers", "0", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert f"latents:{out}" in r.output

    cfg = resolve("flow_matching", "digits", ["model.arch=dit", "model.hidden=32", "model.depth=1", "model.heads=2",
                                              "train.steps=3", "train.batch_size=4", "eval.steps=1,2",
                                              "eval.num_samples=6", "eval.batch_size=4", "features=digits-classifier",
                                              "M=8", "train.checkpoint_every=100"],
                  data_spec=f"latents:{out}")
    lines = []
    outcome = execute(cfg, "latents-test", progress=False, echo=lines.append)
    assert any(ln.startswith("evaluation estimate") for ln in lines)
    assert set(outcome.results) == {1, 2} and all(math.isfinite(m["fid"]) for m in outcome.results.values())
    params = client(tracking_uri()).get_run(outcome.run_id).data.params
    assert params["eval.reference_set"] == f"imagefolder:{(root / 'imgs').resolve()}"
    assert params["eval.samples_per_n"] == "6" and params["eval.feature_space"] == "digits-classifier"
    assert params["eval.sample_decoder"].startswith("AutoencoderKL sha256:")
    assert params["data.shape"] == "4x4x4"
