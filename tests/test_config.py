"""Config resolution and the errors a user can cause."""

from __future__ import annotations

import pytest

from bench.config import resolve
from bench.errors import BenchError


def test_profile_and_per_method_keys():
    cfg = resolve("shortcut", "digits")
    assert cfg.data.spec == "digits" and cfg.method.M == 32 and cfg.method.k == 0.25
    # the paper's recipe with the profile's two measured deviations (bench.toml)
    assert (cfg.method.recipe, cfg.method.levels, cfg.method.bootstrap_weight) == ("paper", "quarter_large", 8)
    assert (cfg.model.arch, cfg.model.hidden, cfg.model.patch) == ("dit", 96, 2)
    assert resolve("flow_matching", "digits").method.M == 32  # k does not leak into other methods
    mlp = resolve("shortcut", "digits-mlp")
    assert (mlp.model.arch, mlp.method.M, mlp.method.levels) == ("mlp", 128, "quarter_large")


def test_overrides_bare_and_dotted_and_fractions():
    cfg = resolve("shortcut", "smoke", ["k=1/8", "method.M=64", "train.steps=10", "seed=7", "bootstrap_ema=false"])
    assert cfg.method.k == 0.125 and cfg.method.M == 64 and cfg.train.steps == 10 and cfg.seed == 7
    assert cfg.method.bootstrap_ema is False
    assert cfg.sampling_steps() == [1, 2, 4, 8, 16, 32, 64]
    assert resolve("shortcut", "smoke", ["eval.steps=1,4,128"]).sampling_steps() == [1, 4, 128]


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("nope", [], "Unknown method 'nope'"),
        ("shortcut", ["kk=0.3"], "Did you mean method.k?"),
        ("shortcut", ["train.stpes=3"], "Did you mean train.steps?"),
        ("shortcut", ["M=3"], "must be a power of two"),
        ("shortcut", ["M=banana"], "method.M expects an integer"),
        ("shortcut", ["k=1.5"], "method.k must be in (0, 1)"),
        ("shortcut", ["k=0"], "method.k must be in (0, 1)"),
        ("shortcut", ["eval.steps=3"], "3 sampling steps do not divide M = 128"),
        ("shortcut", ["train.lr=fast"], "train.lr expects a number"),
        ("shortcut", ["train.lr_schedule=linear"], "train.lr_schedule must be one of constant, cosine"),
        ("shortcut", ["train.lr_warmup=-1"], "train.lr_warmup must be >= 0"),
        ("shortcut", ["train.checkpoint_every=0"], "train.checkpoint_every must be >= 1"),
        ("shortcut", ["flow_d=half"], "method.flow_d must be zero, min or apart"),
        ("shortcut", ["levels=big"], "method.levels must be one of uniform, authors, authors_bias, quarter_large"),
        ("flow_matching", ["k=0.25"], "Unknown config key 'k' for method flow_matching"),
        ("shortcut", ["novalue"], "--set takes key=value"),
        ("shortcut", ["model.d_scale=0"], "model.d_scale must be > 0"),
    ],
)
def test_bad_input_is_one_sentence(method, overrides, message):
    with pytest.raises(BenchError) as e:
        resolve(method, "smoke", overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_profile():
    with pytest.raises(BenchError, match="Unknown profile 'smok'.*Did you mean smoke"):
        resolve("shortcut", "smok")


def test_bad_toml_keys(tmp_path):
    bad = tmp_path / "bench.toml"
    bad.write_text('[profiles.p.train]\nstepz = 3\n')
    with pytest.raises(BenchError, match="Unknown config key profiles.p.train.stepz.*train.steps"):
        resolve("shortcut", "p", config_path=bad)
    bad.write_text('[profiles.p.method]\nk = 0.5\n')
    with pytest.raises(BenchError, match="not shared by every method"):
        resolve("shortcut", "p", config_path=bad)


def test_round_trip():
    from bench.config import Config

    cfg = resolve("shortcut", "smoke", ["k=0.5"])
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_stored_config_from_before_d_scale_keeps_its_embedding():
    """A checkpoint's config written before model.d_scale existed loads with the embedding it was
    trained with: d at 1000, MeanFlow's time_input_scale * d at 1000 (= d at 1000 * s)."""
    from bench.config import Config

    for method, expected in (("shortcut", 1000.0), ("meanflow", 10.0), ("flow_matching", 1000.0)):
        stored = resolve(method, "smoke").to_dict()
        del stored["model"]["d_scale"]
        assert Config.from_dict(stored).model.d_scale == pytest.approx(expected)
    assert resolve("shortcut", "smoke").model.d_scale == 1.0
