"""FID fed straight from the sampler (torch-fidelity's generator input, no image files): the
numbers against features and Frechet distances computed here independently; the Inception
weights from a local file; the run's params; the duration estimate."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import DataConfig, resolve
from bench.data import TensorData, load_dataset
from bench.errors import BenchError
from bench.evaluation.evaluate import Evaluator
from methods.base import Method


class Replay(Method):
    """A 'sampler' that returns given model-space samples in order, batch after batch."""

    name = "replay"

    def __init__(self, samples: torch.Tensor):
        super().__init__(None, 0)
        self.samples, self.pos = samples, 0

    def sample_step(self, model, x, t, num_sampling_steps, y, generator):
        out = self.samples[self.pos: self.pos + len(x)]
        self.pos += len(x)
        return out.to(x.device)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)), written from the definition."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def digits_features(images_uint8: torch.Tensor) -> np.ndarray:
    """The shipped digits classifier's 128-d penultimate layer, called directly."""
    from bench.classifiers.digits import load_classifier

    net = load_classifier()
    with torch.no_grad():
        return net.features(images_uint8[:, :1].float() / 127.5 - 1).double().numpy()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)


def digits_evaluator(tmp_path, num_samples: int, batch_size: int, *sets: str):
    cfg = resolve("flow_matching", "digits", [f"eval.num_samples={num_samples}", f"eval.batch_size={batch_size}", *sets])
    data = load_dataset(cfg.data)
    return Evaluator(cfg, data, torch.device("cpu"), tmp_path / "cache", progress=False), data


def test_replaying_the_reference_gives_fid_zero_and_no_files(tmp_path):
    ev, data = digits_evaluator(tmp_path, 1797, 500, "eval.kid=false")  # KID's 100 subsets: seconds, not needed here
    r = ev.evaluate(Replay(data.x), nn.Identity(), 1)
    assert abs(r.metrics["fid"]) < 1e-6
    assert r.metrics["precision"] == 1.0 and r.metrics["recall"] == 1.0
    # samples went straight into the extractor: the only file is the cached reference statistics
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [f"cache/{ev.cache_name()}"]


def test_generator_fed_fid_equals_an_independent_computation(tmp_path):
    ev, data = digits_evaluator(tmp_path, 1797, 400, "eval.kid=false", "eval.prc=false")
    flipped = data.x.flip(-1)  # a known, different image set
    r = ev.evaluate(Replay(flipped), nn.Identity(), 1)
    expected = frechet(digits_features(to_uint8(flipped)), digits_features(to_uint8(data.x)))
    assert expected > 1.0
    assert r.metrics["fid"] == pytest.approx(expected, rel=1e-5)


def test_latent_samples_are_decoded_with_the_vae_and_compared_with_the_real_images(tmp_path):
    """Features of generated latents = features of diffusers' own decoding of them; reference = the PNGs."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL
    from PIL import Image

    from bench.data.prepare_latents import prepare_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=8).eval()
    vae.save_pretrained(tmp_path / "vae")
    rng = np.random.default_rng(1)
    pngs = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    for i, arr in enumerate(pngs):
        Image.fromarray(arr).save(tmp_path / "imgs" / f"{i:02d}.png")
    out = prepare_latents(f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "vae", tmp_path / "lat", resolution=8,
                          device="cpu", workers=0, progress=False)

    cfg = resolve("flow_matching", "digits", ["eval.num_samples=10", "eval.batch_size=4", "features=digits-classifier"],
                  data_spec=f"latents:{out}")
    data = load_dataset(cfg.data)
    ev = Evaluator(cfg, data, torch.device("cpu"), tmp_path / "cache", progress=False)
    z = torch.randn(10, 4, 4, 4, generator=torch.Generator().manual_seed(2))  # "generated" latents
    feats, samples, _ = ev._generate_images(Replay(z), nn.Identity(), 1)

    with torch.no_grad():
        decoded = vae.decode(z / vae.config.scaling_factor).sample
    expected = digits_features(to_uint8(decoded))
    np.testing.assert_allclose(feats, expected, rtol=0, atol=1e-4)
    assert torch.equal(torch.from_numpy(samples), z)  # kept in model space (latents)
    real = torch.from_numpy(pngs).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_allclose(ev.reference_features(), digits_features(real), rtol=0, atol=1e-5)


def test_params_record_sample_count_features_weights_and_reference(tmp_path):
    from bench.classifiers.digits import WEIGHTS_PATH
    from bench.train.run import prepare, run_params

    cfg = resolve("shortcut", "digits", ["eval.num_samples=1234"])
    params = run_params(prepare(cfg, progress=False))
    h = hashlib.sha256()  # the classifier's weights, hashed tensor by tensor in name order
    with np.load(WEIGHTS_PATH) as f:
        for k in sorted(f.files):
            h.update(k.encode())
            h.update(np.ascontiguousarray(f[k]).tobytes())
    assert params["eval.samples_per_n"] == 1234 and params["eval.num_samples"] == 1234
    assert params["eval.feature_space"] == "digits-classifier"
    assert params["eval.feature_weights_sha256"] == h.hexdigest()
    assert params["eval.reference_set"] == "digits" and params["eval.reference_size"] == 1797
    assert params["eval.reference_fingerprint"] == params["data.fingerprint"]
    assert params["eval.sample_decoder"] == "none"


FOLDER = TensorData("imagefolder:x", "images", torch.zeros(2, 3, 8, 8), None, 0)  # images that declare no feature space of their own


@pytest.mark.slow
def test_inception_v3_compat_loads_a_local_weights_file(tmp_path, monkeypatch):
    """A same-shape random state dict (91 MiB) stands in for the real file: it must be the one loaded,
    from eval.inception_weights, $BENCH_INCEPTION_WEIGHTS or torch hub's cache, and hashed."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.evaluation.metrics import INCEPTION_FILE, FeatureSpace
    from bench.speed import write_random_inception

    path = write_random_inception(tmp_path / "hub" / "checkpoints" / INCEPTION_FILE)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    space = FeatureSpace.resolve("inception", FOLDER, str(path))
    assert space.name == "inception-v3-compat" and space.weights_sha256 == sha and space.weights_path == path

    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(path))
    assert FeatureSpace.resolve("auto", FOLDER, "").weights_path == path
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch hub's cache: $TORCH_HOME/hub/checkpoints/
    assert FeatureSpace.resolve("inception", FOLDER, "").weights_path == path

    fe = space.create(torch.device("cpu"))
    imgs = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = fe(imgs)[0]
    reference_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    assert got.shape == (2, 2048) and torch.isfinite(got).all()
    # calibrated BatchNorm: features of unit scale that tell two images apart (uncalibrated: ~1e-8, FID 0.000)
    assert got.abs().mean() > 0.1 and (got[0] - got[1]).abs().mean() > 0.1
    torch.testing.assert_close(got, reference_net(imgs)[0])


def test_missing_inception_weights_are_one_sentence(tmp_path, monkeypatch):
    from bench.evaluation.metrics import INCEPTION_FILE, FeatureSpace

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    for configured, words in (("", INCEPTION_FILE), (str(tmp_path / "nope.pth"), "does not exist")):
        with pytest.raises(BenchError) as e:
            FeatureSpace.resolve("inception", FOLDER, configured)
        msg = str(e.value)
        assert words in msg and "\n" not in msg and msg.endswith(".")


def test_the_estimate_extrapolates_one_timed_batch(tmp_path, monkeypatch):
    """N = 1000 in batches of 300 (4 batches) at n = 1, 2, 4. Timed: the first batch 0.2 s (warm-up),
    then one batch 0.1 s per sampling step (at n = 1, and one step of the 2- and 4-step schedules: 0.1 s,
    0.12 s) and 0.05 s for features, the reference features 0.3 s (not
    cached yet: computed once), the distances 0.02 s. 4 x (3 x 0.05 + 0.1 + 2 x 0.1 + 4 x 0.12) + 3 x 0.02
    = 3.78 s, plus the reference 0.3 s and the warm-up's extra 0.2 - 0.1 - 0.05 = 0.05 s: 4.13 s (the samples
    file and picture per n are timed for real: added apart)."""
    import bench.evaluation.evaluate as E

    durations = iter([0.2, 0.1, 0.1, 0.12, 0.05, 0.3, 0.02])
    monkeypatch.setattr(E, "timed", lambda fn, device: (next(durations), fn()))
    ev, data = digits_evaluator(tmp_path, 1000, 300, "eval.kid=false", "eval.prc=false")  # distances: timing mocked
    from methods import get_method

    method = get_method("flow_matching")(ev.cfg.method, 10)
    torch.manual_seed(0)
    from bench.models import build_model

    est = ev.estimate(method, build_model(ev.cfg.model, data.shape, 10), [1, 2, 4])
    assert est.sample_seconds == 0.1 and est.feature_seconds == 0.05
    assert est.reference_seconds == 0.3 and est.distance_seconds == 0.02
    assert est.warmup_seconds == pytest.approx(0.05)
    assert est.step_seconds == {1: 0.1, 2: 0.1, 4: 0.12}
    assert 0 < est.output_seconds < 5
    assert est.seconds == pytest.approx(3.78 + 0.3 + 0.05 + 3 * est.output_seconds)
    assert est.text().startswith("evaluation estimate: ~")
    assert "s for 1,000 samples at each n = 1,2,4 on cpu, fp32" in est.text()
    assert ev._ref_feats is not None  # the reference features are kept for the evaluation
