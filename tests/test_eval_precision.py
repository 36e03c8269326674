"""Evaluation at the GPU's pace: eval.precision (bf16 autocast / fp32 / TF32), eval.compile's fixed
batch shape (the last batch padded and dropped), for every method's sampler, CFG included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.config import resolve
from bench.data import load_dataset
from bench.errors import BenchError
from bench.evaluation.evaluate import Evaluator
from bench.models import build_model
from bench.evaluation.sampling import EvalModel, generate, pad_rows, resolve_precision
from methods import get_method


class Shapes(nn.Module):
    """Records (rows, autocast dtype seen inside) of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, t, d, y):
        out = self.model(x, t, d, y)
        self.calls.append((x.shape[0], out.dtype))
        return out


def test_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("auto", cuda) == "bf16"
    assert resolve_precision("fp32", cuda) == "fp32-tf32" and resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(BenchError, match="eval.precision must be auto, bf16 or fp32"):
        resolve("flow_matching", "smoke", ["eval.precision=fp16"])
    with pytest.raises(BenchError, match="train.compile_mode must be one of"):
        resolve("flow_matching", "smoke", ["train.compile_mode=fast"])


def test_bf16_runs_the_model_in_bf16_and_hands_back_float32():
    torch.manual_seed(0)  # the MLP: an untrained DiT's adaLN-zero output is exactly 0 in both precisions
    net = Shapes(build_model(resolve("flow_matching", "digits-mlp").model, (1, 8, 8), 10))
    x, t, y = torch.randn(5, 1, 8, 8), torch.rand(5), torch.randint(0, 10, (5,))
    fp32 = EvalModel(net, "fp32", torch.device("cpu"))(x, t, t * 0, y)
    bf16 = EvalModel(net, "bf16", torch.device("cpu"))(x, t, t * 0, y)
    assert [dt for _, dt in net.calls] == [torch.float32, torch.bfloat16]
    assert fp32.dtype == bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)  # bf16 keeps 8 bits of mantissa


def test_pad_rows():
    t = torch.arange(3)
    assert pad_rows(t, 5, 9).tolist() == [0, 1, 2, 9, 9] and pad_rows(t, 3) is t


@pytest.mark.parametrize("name,cfg_scale", [("flow_matching", 1.0), ("flow_matching", 1.5), ("shortcut", 1.5),
                                            ("consistency_training", 1.0), ("meanflow", 1.0)])
def test_padding_keeps_one_batch_shape_and_the_same_samples(name, cfg_scale):
    """N = 10 in batches of 4: padded, every call sees 4 rows (8 under CFG); the samples equal the unpadded
    ones (a stochastic sampler's last batch draws its fresh noise at the padded shape: other values, same law)."""
    cfg = resolve(name, "digits-mlp", [f"method.cfg_scale={cfg_scale}", "method.M=4"])
    torch.manual_seed(0)
    net = Shapes(build_model(cfg.model, (1, 8, 8), 10)).eval()
    method = get_method(name)(cfg.method, 10)
    probs = torch.full((10,), 0.1)
    for n in (1, 4):
        net.calls.clear()
        plain = list(generate(method, net, (1, 8, 8), 10, probs, 10, 4, n, 7, "cpu"))
        plain_rows = [r for r, _ in net.calls]
        net.calls.clear()
        padded = list(generate(method, net, (1, 8, 8), 10, probs, 10, 4, n, 7, "cpu", pad=True))
        per_batch = len(plain_rows) // 3
        # the same calls, the last batch's at the full batch's rows (2 -> 4, or 4 -> 8 under CFG)
        assert [r for r, _ in net.calls] == plain_rows[: 2 * per_batch] + [2 * r for r in plain_rows[2 * per_batch:]]
        assert set(plain_rows[: per_batch]) <= {4, 8} and set(plain_rows[2 * per_batch:]) <= {2, 4}
        assert [len(x) for x, _ in padded] == [4, 4, 2]
        stochastic = name.startswith("consistency") and n > 1
        for i, ((xp, yp), (xq, yq)) in enumerate(zip(plain, padded)):
            assert torch.equal(yp, yq)
            if i < 2 or not stochastic:
                torch.testing.assert_close(xq, xp, atol=1e-5, rtol=1e-5)  # the last batch at another shape: float rounding


def test_compiled_evaluation_pads_and_counts_nfe_per_real_row(tmp_path, monkeypatch):
    """eval.compile with torch.compile stubbed out (compiling on 2 CPU cores takes minutes): the evaluator
    pads the last batch, the metrics equal the uncompiled evaluation's and NFE counts real rows only."""
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    out = {}
    for compile_ in (False, True):
        cfg = resolve("flow_matching", "smoke", ["eval.num_samples=1000", "eval.batch_size=300", "eval.forward_rows=300", f"eval.compile={compile_}",
                                                 "method.M=4"])
        data = load_dataset(cfg.data)
        ev = Evaluator(cfg, data, torch.device("cpu"), tmp_path / "cache", progress=False)
        torch.manual_seed(0)
        net = Shapes(build_model(cfg.model, data.shape, data.num_classes))
        method = get_method("flow_matching")(cfg.method, data.num_classes)
        r = ev.evaluate(method, net, 2)
        out[compile_] = (r.metrics, {rows for rows, _ in net.calls})
        assert r.samples.shape == (1000, 2)
    (plain, plain_rows), (padded, padded_rows) = out[False], out[True]
    assert plain_rows == {300, 100} and padded_rows == {300}
    assert padded["nfe"] == plain["nfe"] == 2.0
    assert padded["fid"] == pytest.approx(plain["fid"], rel=1e-5)


@pytest.mark.slow
def test_bf16_evaluation_is_recorded_and_close_to_fp32(tmp_path):
    """The same untrained-but-fixed model and noise on digits: FID in bf16 within 2 % of fp32, and the
    precision that ran is a run param."""
    from bench.train.run import prepare, run_params

    fids = {}
    for precision in ("fp32", "bf16"):  # the MLP: an untrained DiT samples exactly x0 in both precisions
        cfg = resolve("flow_matching", "digits-mlp", ["eval.num_samples=300", "eval.batch_size=300", "eval.kid=false",
                                                  "eval.prc=false", f"eval.precision={precision}"])
        p = prepare(cfg, progress=False)
        assert run_params(p)["eval.sampling_precision"] == precision
        torch.manual_seed(0)
        model = build_model(cfg.model, p.data.shape, p.data.num_classes)
        fids[precision] = p.evaluator.evaluate(p.method, model, 2).metrics["fid"]
    assert fids["bf16"] != fids["fp32"]
    assert fids["bf16"] == pytest.approx(fids["fp32"], rel=0.02)


def test_train_compile_mode_reduce_overhead_clones_outputs(monkeypatch):
    """train.compile_mode = reduce-overhead (CUDA graphs reuse one output buffer per graph): the compiled
    views hand back copies, so a method may keep one output across the next call. torch.compile is
    replaced by a module that, like a CUDA graph, writes every output into the same buffer."""
    from bench.train.trainer import Trainer, _CloneOutput

    class ReusedBuffer(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.buf = model, None

        def forward(self, *args):
            out = self.model(*args).detach()
            if self.buf is None or self.buf.shape != out.shape:
                self.buf = torch.empty_like(out)
            return self.buf.copy_(out)

    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: modes.append(kw.get("mode")) or ReusedBuffer(model))
    cfg = resolve("shortcut", "smoke", ["train.compile=true", "train.compile_mode=reduce-overhead", "train.batch_size=32"])
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    tr = Trainer(cfg, get_method("shortcut")(cfg.method, data.num_classes), build_model(cfg.model, data.shape, 0),
                 data, torch.device("cpu"), progress=False)
    assert modes == ["reduce-overhead", "reduce-overhead"] and isinstance(tr.fema, _CloneOutput)
    t, y = torch.rand(4), torch.zeros(4, dtype=torch.long)
    x1, x2 = torch.randn(4, 2), torch.randn(4, 2)
    with torch.no_grad():
        first = tr.fema(x1, t, t, y)
        tr.fema(x2, t, t, y)  # the buffer now holds the second output
        assert torch.equal(first, tr.ema(x1, t, t, y))  # the first is intact
        raw = tr.fema.fn(x1, t, t, y)
        tr.fema.fn(x2, t, t, y)
        assert not torch.equal(raw, tr.ema(x1, t, t, y))  # without the copy it would not be


def test_every_batch_starts_from_the_same_noise_at_every_n():
    """A stochastic sampler (consistency) draws fresh noise at every step; the second batch's labels
    and starting noise must not depend on how many draws the first batch's n took."""
    import torch

    from bench.config import resolve
    from bench.train.run import prepare
    from bench.evaluation.sampling import batch_seed, generate

    assert batch_seed(7, 0) == 7 and batch_seed(7, 100) != batch_seed(8, 100)
    p = prepare(resolve("consistency_training", "smoke", ["M=8"]), progress=False)
    model = p.model.eval()
    starts = {}
    for n in (1, 8):
        seen = []
        orig = p.method.sample_step

        def spy(model_, x, t, num, y, g, _seen=seen):
            if t == 0:
                _seen.append(x.clone())
            return orig(model_, x, t, num, y, g)

        p.method.sample_step = spy
        with torch.no_grad():
            list(generate(p.method, model, (2,), 0, None, 30, 10, n, seed=3, device="cpu"))
        p.method.sample_step = orig
        starts[n] = seen
    assert len(starts[1]) == len(starts[8]) == 3
    for a, b in zip(starts[1], starts[8]):
        assert torch.equal(a, b)


def test_cuda_graph_wrapper_unwraps_to_the_eager_module():
    """Methods that need the eager module (a target network copy, a JVP) unwrap `_orig_mod`: the
    reduce-overhead wrapper must lead to the same module a plain torch.compile wrapper does."""
    from bench.train.trainer import compiled

    m = nn.Linear(2, 2)
    assert compiled(m, "reduce-overhead")._orig_mod is m and compiled(m)._orig_mod is m
