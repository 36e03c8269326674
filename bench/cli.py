"""`bench`: run, report, methods, profiles, deviations, digits-classifier, digits-probe.

Heavy imports (torch, mlflow, ray) happen inside the commands so `bench --help` stays fast.
Exit codes: 0 done; 2 bad input a user can fix (one line, nothing run), also click's usage errors;
1 a run or sweep that started and failed (non-finite loss, failed trials) or an unexpected error;
130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from bench.errors import BenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: flags print as flags (typer's rich help shows `--quiet <bool>`)
    help="Benchmark few-step generative models: FID against the number of sampling steps.",
)


@app.command()
def run(
    method: str = typer.Option(..., "--method", "-m", help="Method name (see `bench methods`)."),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile in bench.toml (default: digits)."),
    data: Optional[str] = typer.Option(None, "--data", help="toy:NAME | digits | cifar10[:PATH] | imagefolder:PATH | npz:PATH | latents:DIR"),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key: section.key=value or key=value (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed (training and evaluation noise)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="MLflow experiment (default: the profile name)."),
    config: Optional[Path] = typer.Option(None, "--config", help="bench.toml to read (default: ./bench.toml or the checkout's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest unfinished run of this configuration from its last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    sweep: List[str] = typer.Option([], "--sweep", help="Sweep on Ray Tune: a name in sweeps/ (k, M, cfg, seeds, ...) or a .toml path; repeat to cross sweeps."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster for --sweep, host:port (default: $RAY_ADDRESS, else a local Ray for this command only)."),
):
    """Train one method, evaluate it at n = 1, 2, 4, ..., M sampling steps, and track everything in MLflow."""
    if sweep:
        from bench.sweep.tune import sweep_command

        return sweep_command(method, profile, set_, sweep, data_spec=data, seed=seed, experiment=experiment,
                             config_path=config, resume=resume, address=address, quiet=quiet)
    if address:
        raise BenchError("--address runs a sweep on a Ray cluster; add --sweep NAME.")
    from bench.config import resolve
    from bench.phases import count_process_start

    count_process_start()  # this process is one run: its phases include the interpreter's start and imports
    cfg = resolve(method, profile, set_, data_spec=data, seed=seed, config_path=config)
    from bench.train.run import deviation_text, execute
    from bench.store.session import find_unfinished_run

    deviations = deviation_text(cfg)
    if deviations:
        typer.echo(f"{cfg.method_name}: {deviations} (away from its published recipe; "
                   f"set by profile {cfg.profile} or --set, bench.toml says why)")

    run_id = None
    if resume:
        run_id = find_unfinished_run(cfg, experiment or cfg.profile)
    experiment = experiment or cfg.profile
    _print_outcome(cfg, execute(cfg, experiment, resume_run_id=run_id, progress=_progress(quiet),
                                on_run=_announce(experiment)))


def _progress(quiet: bool) -> bool:
    """Progress bars only on a terminal: redirected to a file, tqdm's cursor codes would fill it."""
    return not quiet and sys.stderr.isatty()


def _announce(experiment: str):
    """on_run for execute: where the run's results go, printed as soon as its MLflow run exists."""
    from bench.train.run import checkpoint_dir
    from bench.store.tracking import tracking_uri

    def on_run(run_id: str) -> None:
        typer.echo(f"run {run_id} in experiment {experiment!r} at {tracking_uri()}; "
                   f"checkpoints in {checkpoint_dir(run_id)}")

    return on_run


@app.command()
def resume(
    run_id: str = typer.Argument(..., help="MLflow run id of an interrupted run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Continue an interrupted run from its last checkpoint, in the same MLflow run."""
    from bench.train.run import execute
    from bench.store.session import config_of_run

    cfg, experiment = config_of_run(run_id)
    _print_outcome(cfg, execute(cfg, experiment, resume_run_id=run_id, progress=_progress(quiet),
                                on_run=_announce(experiment)))


def _print_outcome(cfg, out) -> None:
    from bench.train.run import format_table

    typer.echo(f"\n{cfg.method_name} on {cfg.data.spec} (profile {cfg.profile}, seed {cfg.seed}, "
               f"{cfg.eval.num_samples} samples per n)")
    typer.echo(format_table(out.results))
    if any("kid" in m for m in out.results.values()):
        typer.echo("kid: unbiased MMD² with the cubic kernel (x·y/d + 1)³ in the feature space's raw units, "
                   "not x1000; compare it only within one feature space")
    typer.echo(f"\nrun {out.run_id} in experiment {out.experiment!r} at {out.tracking_uri}")
    typer.echo(f"artifacts: {out.artifact_uri}")
    typer.echo(f"checkpoint: {out.checkpoint}")
    typer.echo(f"plots and tables: bench report --experiment {out.experiment}")


@app.command()
def report(
    experiment: Optional[List[str]] = typer.Option(None, "--experiment", "-e", help="Experiment(s) to report (default: every experiment)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: $BENCH_STORE/reports/<experiment>/, outside git; the reference results: --out results/<experiment>)."),
    ratio: Optional[str] = typer.Option(None, "--ratio", help="A/B, e.g. shortcut/flow_matching: also ratio_A_B.md, FID of A over FID of B at every n, for runs set up alike."),
    from_csv: Optional[Path] = typer.Option(None, "--from-csv", help="Instead of the store: rebuild the whole report (figures, tables, leaderboard, page) from a report's metrics.csv (into --out, default: the CSV's folder)."),
    correction: str = typer.Option("holm", "--correction", help="Multiple-comparison correction of the leaderboard's tests within each n: holm (family-wise error) or bh (Benjamini-Hochberg, false-discovery rate)."),
    name: Optional[List[str]] = typer.Option(None, "--name", help="LABEL=NAME: show the group labelled LABEL as NAME (at most 60 characters); bench.toml's [report.names] table does the same."),
    config: Optional[Path] = typer.Option(None, "--config", help="bench.toml to read [report.names] from (default: the usual one)."),
):
    """Read the tracking store only; per experiment write index.html (one self-contained page), leaderboard.md/.csv
    (rank per n with the ties a Holm-corrected test cannot separate), table.md (FID at M, 4, 1 steps: mean ± 95 %
    t-interval over seeds, one row per group of like runs), fid_vs_steps.png/.svg, metrics.csv and paired.md/.csv.
    KID in metrics.csv is in the feature space's raw units (not x1000)."""
    from bench.config import load_toml
    from bench.report.labels import parse_names
    from bench.report.leaderboard import CORRECTIONS

    if correction not in CORRECTIONS:
        raise BenchError(f"--correction must be {' or '.join(CORRECTIONS)}, got {correction!r}.")
    try:
        doc = load_toml(config)
    except BenchError:
        if config is not None:
            raise
        doc = {}  # no bench.toml where the report runs: no names from it
    names = parse_names(name, doc.get("report", {}).get("names", {}))
    if from_csv is not None:
        if experiment or ratio:
            raise BenchError("--from-csv reads one metrics.csv: it takes no --experiment or --ratio.")
        from bench.report import write_from_csv

        for path in write_from_csv(from_csv, out, correction, names):
            typer.echo(f"wrote {path}")
        return
    from bench.report import write_reports

    pair = None
    if ratio:
        pair = tuple(ratio.split("/"))
        if len(pair) != 2 or not all(pair):
            raise BenchError(f"--ratio takes two methods as A/B (e.g. shortcut/flow_matching), got {ratio!r}.")
    for path in write_reports(experiment or None, out, ratio=pair, correction=correction, names=names):
        typer.echo(f"wrote {path}")


@app.command()
def methods():
    """List the methods."""
    from methods import METHODS

    for name, cls in sorted(METHODS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        typer.echo(f"{name:28s} {doc}")


@app.command()
def profiles(config: Optional[Path] = typer.Option(None, "--config")):
    """List the profiles of bench.toml."""
    from bench.config import load_toml

    doc = load_toml(config)
    for name, prof in sorted(doc.get("profiles", {}).items()):
        typer.echo(f"{name:14s} {prof.get('description', '')}")


@app.command()
def deviations(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile in bench.toml (default: digits)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key, as for `bench run` (keys a method lacks are skipped for it)."),
    config: Optional[Path] = typer.Option(None, "--config", help="bench.toml to read (default: ./bench.toml or the checkout's)."),
):
    """Every method's knobs away from its published recipe under a profile: what `bench run` tags as method.deviations."""
    from bench.config import resolve
    from bench.train.run import deviation_text
    from methods import METHODS

    for name in sorted(METHODS):
        try:
            cfg = resolve(name, profile, set_, config_path=config)
        except BenchError as e:  # a --set key another method lacks, say
            typer.echo(f"{name:26s} (not resolved: {e})")
            continue
        typer.echo(f"{name:26s} {deviation_text(cfg) or '-'}")


@app.command("digits-classifier")
def digits_classifier(
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the weights (default: the shipped file)."),
    seed: int = typer.Option(0, "--seed"),
    epochs: int = typer.Option(40, "--epochs"),
):
    """Retrain the digits feature extractor reproducibly and print its held-out accuracy."""
    from bench.classifiers.digits import train_classifier

    _retrain_digits_net(train_classifier, seed, epochs, out)


@app.command("digits-probe")
def digits_probe(
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the weights (default: the shipped file)."),
    seed: int = typer.Option(1, "--seed"),
    epochs: int = typer.Option(120, "--epochs"),
):
    """Retrain the second digits classifier (CFD and RDD distil through it; not the FID network): on the 360
    digits the FID classifier held out, its accuracy on the 1,437 the FID classifier trained on."""
    from bench.classifiers.probe import train_probe

    _retrain_digits_net(train_probe, seed, epochs, out)


def _retrain_digits_net(train, seed: int, epochs: int, out: Optional[Path]) -> None:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    r = train(seed=seed, epochs=epochs, out=out)
    typer.echo(f"held-out accuracy {r['heldout_accuracy']:.4f} on {r['num_heldout']} digits "
               f"(train {r['train_accuracy']:.4f} on {r['num_train']}); weights sha256 {r['weights_sha256']} -> {r['path']}")
    if "cka_vs_fid_features" in r:
        typer.echo(f"linear CKA of its features against the FID classifier's on the 1,797 digits: {r['cka_vs_fid_features']:.3f}")


@app.command("prepare-latents")
def prepare_latents(
    data: str = typer.Option(..., "--data", help="The images to encode: imagefolder:PATH (or npz:PATH with uint8 images)."),
    vae: Path = typer.Option(..., "--vae", help="Local diffusers AutoencoderKL folder (config.json + weights), e.g. sd-vae-ft-mse."),
    out: Path = typer.Option(..., "--out", help="Folder to create; then train with --data latents:OUT."),
    resolution: int = typer.Option(256, "--resolution", help="Image side after resize + centre crop."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per VAE call."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if present), cpu, cuda, cuda:1, ..."),
    workers: int = typer.Option(4, "--workers", help="DataLoader processes reading image files (0: none)."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage: float32 or float16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Encode images once with a Stable Diffusion VAE into a memory-mapped latents folder."""
    import time

    from bench.data.latents import read_metadata
    from bench.data.prepare_latents import prepare_latents as prepare

    t0 = time.perf_counter()
    path = prepare(data, vae, out, resolution=resolution, batch_size=batch_size, device=device, workers=workers,
                   dtype=dtype, progress=_progress(quiet))
    seconds = time.perf_counter() - t0
    meta = read_metadata(path)
    typer.echo(f"wrote {meta['num_samples']} latents of shape {tuple(meta['latent_shape'])} "
               f"(scaling {meta['scaling_factor']:g}, {meta['num_classes']} classes) to {path} "
               f"in {seconds:.1f} s ({meta['num_samples'] / seconds:.1f} images/s)")
    typer.echo(f"train on them with --data latents:{path}")


@app.command()
def speed(
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="Profile in bench.toml (default: digits)."),
    model: Optional[str] = typer.Option(None, "--model", help="mlp, a DiT preset (DiT-tiny/2, DiT-B/2, ...) or a U-Net preset (UNet-tiny, UNet-cifar); default: the profile's."),
    data: Optional[str] = typer.Option(None, "--data", help="A dataset spec, or synthetic:CxHxW[:CLASSES] (random latent stand-ins)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key (a key only some methods have goes to those)."),
    methods: str = typer.Option("no-teacher", "--methods", help="Comma list, 'all', or 'no-teacher' (teacher methods get an untrained teacher when named)."),
    rounds: int = typer.Option(7, "--rounds", help="Interleaved timing rounds (medians over them)."),
    steps: int = typer.Option(5, "--steps", help="Training steps per method per round."),
    image_size: int = typer.Option(0, "--image-size", help="Side of the images fed to the feature extractor (0: the data's)."),
    config: Optional[Path] = typer.Option(None, "--config", help="bench.toml to read."),
):
    """Step time of every method relative to flow matching, sampling and feature-extraction throughput."""
    from bench.speed import main as speed_main

    speed_main(profile, model, data, set_, methods, rounds, steps, image_size, config, echo=typer.echo)


def main() -> None:
    import logging

    import click

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no migration chatter on stderr

    # typer >= 0.2x raises its vendored click's exceptions (TyperException), which are not click's
    usage_errors = (click.ClickException, *((typer.TyperException,) if hasattr(typer, "TyperException") else ()))
    try:
        app(standalone_mode=False)
    except BenchError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except usage_errors as e:  # a wrong flag or argument: click's usage line and message, exit 2
        if hasattr(e, "show"):
            e.show()
        else:
            typer.echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
