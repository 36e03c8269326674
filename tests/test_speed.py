"""The fast path: no host-device synchronisation inside a training step, and `bench speed`'s
arithmetic (predicted ratios, FLOPs, peaks) checked against numbers worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from methods import METHODS

TINY = ["train.batch_size=16", "train.label_dropout=0.1", "M=8", "train.threads=1"]


class SyncSpy(TorchDispatchMode):
    """Records the aten ops that make the host wait for a GPU: reading a value back
    (.item(), bool(), int(), float() -> _local_scalar_dense) and data-dependent shapes
    (nonzero, masked_select, boolean-mask indexing)."""

    def __init__(self):
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if any(k in name for k in ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero")):
            self.hits.append(name)
        if "index.Tensor" in name or "index_put" in name:
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or [])):
                self.hits.append(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


def host_copies(monkeypatch, device):
    """torch.tensor / torch.as_tensor of host data onto `device`: a blocking copy on CUDA."""
    hits = []
    for fname in ("tensor", "as_tensor"):
        real = getattr(torch, fname)

        def spy(data, *a, _real=real, _name=fname, **kw):
            if kw.get("device") is not None and not isinstance(data, torch.Tensor):
                hits.append(f"torch.{_name}({data!r}, device=...)")
            return _real(data, *a, **kw)

        monkeypatch.setattr(torch, fname, spy)
    for meth in ("item", "tolist", "cpu", "numpy"):
        real = getattr(torch.Tensor, meth)

        def spy_m(self, *a, _real=real, _meth=meth, **kw):
            hits.append(f"Tensor.{_meth}()")
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, meth, spy_m)
    return hits


@pytest.mark.parametrize("arch", [["model.arch=mlp", "model.hidden=32"],
                                  ["model.arch=dit", "model.hidden=32", "model.depth=1", "model.heads=2"],
                                  ["model.arch=unet", "model.hidden=8", "model.depth=1", "model.heads=1",
                                   "model.channel_mult=1,2", "model.attn_resolutions=4", "model.dropout=0.1"]],
                         ids=["mlp", "dit", "unet"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_step_never_waits_for_the_device(name, arch, monkeypatch):
    """Everything in Trainer.train_step and the per-step accumulation, with the fused AdamW the
    trainer uses on CUDA; the data rows come from an in-memory dataset (the CPU side of the step)."""
    from bench.speed import build_trainer, setup

    s = setup("digits", None, None, arch + TINY + (["num_pairs=32"] if name == "reflow" else []), name)
    tr = build_trainer(s.configs[name], s.data, s.device)
    d = tr.opt.defaults
    tr.opt = torch.optim.AdamW(tr.model.parameters(), lr=d["lr"], betas=d["betas"], weight_decay=d["weight_decay"], fused=True)
    loss, parts = tr.train_step()  # one-off work at the first step (a reflow's pairs) is allowed to sync
    tr.step += 1
    tr._accumulate(loss, parts)
    spy = SyncSpy()
    copies = host_copies(monkeypatch, tr.device)
    with spy:
        for _ in range(2):
            loss, parts = tr.train_step()
            tr.step += 1
            tr._accumulate(loss, parts)
    monkeypatch.undo()
    assert spy.hits == [] and copies == [], (spy.hits, copies)
    assert torch.isfinite(loss)


def test_the_spies_see_what_they_must():
    """The detector itself: each kind of synchronisation is caught."""
    x = torch.randn(4)
    for fn in (lambda: x.sum().item(), lambda: bool(x[0] > 0), lambda: x[x > 0], lambda: torch.nonzero(x)):
        spy = SyncSpy()
        with spy:
            fn()
        assert spy.hits, fn


def test_predicted_ratios_by_hand():
    from bench.config import resolve
    from bench.speed import predicted_ratio, step_cost
    from methods import get_method

    def passes(name, *sets):
        cfg = resolve(name, "digits", list(sets))
        return get_method(name)(cfg.method, 10).passes_per_step(256)

    fm = passes("flow_matching")
    assert step_cost(fm) == 256 * 3
    # shortcut, k = 1/4 of 256 rows = 64 rows, two no-grad half steps: (3 * 256 + 2 * 64) / (3 * 256) = 7/6
    assert predicted_ratio(passes("shortcut", "k=0.25"), fm) == pytest.approx(7 / 6)
    # k = 1/8: 32 rows -> (768 + 64) / 768
    assert predicted_ratio(passes("shortcut", "k=0.125"), fm) == pytest.approx(832 / 768)


def test_every_method_is_timed_with_the_profile_train_steps():
    """bench speed builds each method with train.steps: reflow's one-off pairs (num_pairs x M teacher rows) are
    spread over the run's steps, not over one (a signature check once hid train_steps from (*args, **kwargs))."""
    from bench.config import resolve
    from bench.speed.prepare import _make_method

    for name in METHODS:
        cfg = resolve(name, "digits", [])
        assert _make_method(cfg, 10, None).train_steps == cfg.train.steps == 2500, name
    cfg = resolve("reflow", "digits", ["num_pairs=22000"])
    extra = _make_method(cfg, 10, None).passes_per_step(128)["nograd_rows"]
    assert extra == pytest.approx(2000 * 11 * 32 / 2500)  # 2,000 pairs per label x 11 labels x M = 32 rows


def test_peaks_and_ratios():
    from bench.speed import median_ratio, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16", True) == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "fp32", True) == 378.0
    assert peak_tflops("NVIDIA H100 PCIe", "fp32", False) == 51.0
    assert peak_tflops("NVIDIA H200", "bf16", False) == 989.0
    assert peak_tflops("Some GPU", "bf16", True) is None
    # paired per round, then the median: rounds where both slow down cancel out
    assert median_ratio([2.0, 4.0, 2.4], [1.0, 2.0, 2.0]) == pytest.approx(2.0)


@pytest.mark.parametrize("preset", ["DiT-tiny/2", "DiT-B/2"])
def test_dit_flops_formula_agrees_with_torch_flop_counter(preset):
    """DiT.flops_per_forward (what TFLOP/s uses) against torch's own count, on the meta device (no memory, no time)."""
    from bench.models.dit import DiT, PRESETS
    from bench.speed import counted_forward_flops

    hidden, depth, heads, patch = PRESETS[preset]
    with torch.device("meta"):
        model = DiT((4, 32, 32), 1000, hidden, depth, heads, patch)
    counted = counted_forward_flops(model, (4, 32, 32), 1000, "meta")
    assert model.flops_per_forward() == pytest.approx(counted, rel=0.01)
    if preset == "DiT-B/2":  # the DiT paper: 23 GFLOPs counted as multiply-adds = 46e9 FLOPs
        assert counted == pytest.approx(46e9, rel=0.01)


def test_bare_loop_replays_the_harness_calls():
    """One Euler step of flow matching from x0 with f(x) = -x lands at 0 (by hand), both ways."""
    from bench.config import resolve
    from bench.evaluation.sampling import sample
    from bench.speed.training import _Recorder, bare_loop
    from methods import get_method

    class MinusX(torch.nn.Module):
        def forward(self, x, t, d, y):
            return -x

    cfg = resolve("flow_matching", "digits", [])
    method = get_method("flow_matching")(cfg.method, 10)
    x0 = torch.randn(5, 1, 8, 8)
    rec = _Recorder(MinusX())
    out = sample(method, rec, x0, torch.zeros(5, dtype=torch.long), 1)
    assert len(rec.calls) == 1 and rec.calls[0][0] == 5
    assert torch.equal(out, torch.zeros_like(x0)) and torch.equal(bare_loop(MinusX(), x0, rec.calls, 1), out)


def test_overrides_go_to_the_methods_that_have_them():
    from bench.errors import BenchError
    from bench.speed import setup

    s = setup("smoke", "mlp", None, ["k=0.5", "train.batch_size=8"], "flow_matching,shortcut")
    assert s.configs["shortcut"].method.k == 0.5 and s.configs["flow_matching"].train.batch_size == 8
    with pytest.raises(BenchError, match="Unknown config key"):
        setup("smoke", "mlp", None, ["nonsense=1"], "flow_matching")
    with pytest.raises(BenchError, match="neither mlp nor a DiT preset"):
        setup("smoke", "DiT-Q/3", None, [], "flow_matching")


def test_bench_speed_prints_every_section():
    from typer.testing import CliRunner

    from bench.cli import app

    r = CliRunner().invoke(app, ["speed", "--profile", "digits-mlp", "--model", "mlp", "--rounds", "2", "--steps", "1",
                                 "--methods", "flow_matching,shortcut", "--set", "train.batch_size=32",
                                 "--set", "model.hidden=32", "--set", "eval.batch_size=64", "--set", "train.threads=1"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "training step" in out and "predicted" in out and "harness/bare" in out
    assert "feature extraction (digits-classifier" in out
    assert "evaluation sampler (EMA model, eval.precision auto -> fp32" in out and "FID-2,000 wall time estimate" in out
    evaluation = out.split("evaluation sampler")[1].split("FID-2,000")[0]
    assert {ln.split()[1] for ln in evaluation.splitlines() if ln.startswith("flow_matching ")} == {"1", "128"}
    training = out.split("training step")[1].split("sampling at n = 1")[0]
    rows = {ln.split()[0]: ln.split() for ln in training.splitlines() if ln.startswith(("flow_matching ", "shortcut "))}
    assert rows["flow_matching"][2] == "1.000" and rows["flow_matching"][3] == "1.000"  # ratio and prediction to itself
    # digits-mlp: M = 128; k = 1/4 of 32 rows = 8, two no-grad half steps: (96 + 16) / 96
    assert float(rows["shortcut"][3]) == pytest.approx(112 / 96, abs=1e-3)


def test_bench_speed_on_synthetic_latents_with_a_dit(tmp_path):
    """The GPU invocation's shape (DiT on 4-channel synthetic latents) on CPU; no Inception file: one sentence, skipped."""
    from bench.speed import main

    lines = []
    res = main("digits", "DiT-tiny/2", "synthetic:4x8x8:3", ["train.batch_size=8", "eval.batch_size=16", "train.threads=1"],
               "flow_matching,shortcut", rounds=1, steps=1, echo=lines.append)
    text = "\n".join(lines)
    assert "data synthetic:4x8x8:3 4x8x8 (3 classes)" in text
    assert res["features"].per_second is None and "skipped: FID on images needs the Inception weights" in text
    dit_flops = res["setup"].trainers["flow_matching"].model.flops_per_forward()
    fm = res["training"][0]
    assert fm.tflops == pytest.approx(dit_flops * 3 * 8 / fm.median / 1e12)


def digits_flow_matching(*sets: str):
    from bench.config import resolve
    from bench.data import load_dataset
    from bench.models import build_model
    from methods import get_method

    cfg = resolve("flow_matching", "digits", ["method.M=8", *sets])
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.shape, data.num_classes)
    return cfg, data, model, get_method("flow_matching")(cfg.method, data.num_classes)


def test_fid_time_estimate_by_hand():
    """flow matching with CFG on digits (M = 8): NFE(n) = 2n, so 2 x 64 = 128 rows per step at every n, the
    rows of the 0.01 s timing. N = 1000 in batches of 64: 16 batches per n (the last one counted whole, as the
    evaluator counts it). Sampling 16 x (1 + 4 + 8) x 0.01 s = 2.08 s; features 3 x 16 x 64 / 1000 images/s
    = 3.072 s; no decoding."""
    from bench.speed import EvalSamplerTiming, FeatureTiming, fid_time_estimate

    cfg, data, model, method = digits_flow_matching("method.cfg_scale=1.5", "eval.batch_size=64", "eval.num_samples=1000")
    timing = EvalSamplerTiming("flow_matching", 1, 64, "fp32", 128, 0.01, 0.0, 1.0, 0.5)
    feat = FeatureTiming("digits-classifier", (3, 8, 8), 64, 1000.0)
    e = fid_time_estimate(method, model, data, cfg, torch.device("cpu"), [1, 4, 8], [timing], feat)
    assert e.estimate.step_seconds == pytest.approx({1: 0.01, 4: 0.01, 8: 0.01})
    assert e.sampling_seconds == pytest.approx(2.08)
    assert e.feature_seconds == pytest.approx(3.072) and e.decode_seconds == 0
    assert e.seconds == pytest.approx(2.08 + 3.072)
    # floor: the peak implied by the timing (1 TFLOP/s at 50 %: 2 TFLOP/s) x the model's FLOPs per row
    flops = model.flops_per_forward() if hasattr(model, "flops_per_forward") else None
    if flops is None:
        from bench.speed import counted_forward_flops

        flops = counted_forward_flops(model, data.shape, data.num_classes, "cpu")
    assert e.floor_seconds == pytest.approx(1000 * 2 * 13 * flops / 2e12)


def test_each_n_takes_the_rate_measured_nearest_its_rows():
    """Without CFG (NFE(n) = n): 64 rows per step, between the timings of 50 rows (5 ms) and 200 rows (8 ms);
    the 50-row rate applies: 64 x 5 / 50 = 6.4 ms per step. N = 128: 2 batches; decoding 32 images/s and
    features 64/s: one batch 2 + 1 s. Per n: 2 x (3 + n x 0.0064); n = 1, 2: 12 + 2 x 3 x 0.0064 s."""
    from bench.speed import EvalSamplerTiming, FeatureTiming, fid_time_estimate

    cfg, data, model, method = digits_flow_matching("eval.batch_size=64", "eval.num_samples=128")
    timings = [EvalSamplerTiming("flow_matching", 1, 50, "fp32", 50, 0.005, 0.0, 1.0, None),
               EvalSamplerTiming("flow_matching", 8, 100, "fp32", 200, 0.008, 0.0, 1.0, None)]
    feat = FeatureTiming("digits-classifier", (3, 8, 8), 64, 64.0, decode_per_second=32.0)
    e = fid_time_estimate(method, model, data, cfg, torch.device("cpu"), [1, 2], timings, feat)
    assert e.estimate.step_seconds == pytest.approx({1: 0.0064, 2: 0.0064})
    assert (e.decode_seconds, e.feature_seconds) == pytest.approx((2 * 2 * 2.0, 2 * 2 * 1.0))
    assert e.seconds == pytest.approx(12 + 2 * 3 * 0.0064) and e.floor_seconds is None


def test_bench_speed_and_a_run_print_the_one_estimate(tmp_path, monkeypatch):
    """The FID time `bench speed` prints and the estimate a run prints before it evaluates are both
    EvalEstimate.seconds: replaced by 4321 s, both show 1.2 h."""
    from bench.evaluation.evaluate import EvalEstimate, Evaluator
    from bench.speed import EvalSamplerTiming, FeatureTiming, fid_time_estimate, format_eval

    monkeypatch.setattr(EvalEstimate, "seconds", property(lambda self: 4321.0))
    cfg, data, model, method = digits_flow_matching("eval.batch_size=50", "eval.num_samples=100", "eval.kid=false",
                                                    "eval.prc=false")
    timing = EvalSamplerTiming("flow_matching", 1, 50, "fp32", 50, 0.01, 0.0, 1.0, None)
    feat = FeatureTiming("digits-classifier", (3, 8, 8), 50, 1000.0)
    e = fid_time_estimate(method, model, data, cfg, torch.device("cpu"), [1, 8], [timing], feat)
    assert isinstance(e.estimate, EvalEstimate) and e.seconds == 4321.0
    row = [ln for ln in format_eval([timing], [("1,8", e)], cfg).splitlines() if ln.startswith("flow_matching ") and "1,8" in ln]
    assert row and row[0].split()[2:4] == ["1.20", "h"]
    run = Evaluator(cfg, data, torch.device("cpu"), tmp_path / "cache", progress=False).estimate(method, model, [1, 8])
    assert run.text().startswith("evaluation estimate: ~1.2 h for 100 samples at each n = 1,8")
