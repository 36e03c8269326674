"""Plot helpers shared by `bench report` and the tracker (a run's own FID-vs-steps artifact):
headless matplotlib, readable ticks on any range, a PNG with a deterministic SVG beside it."""

from __future__ import annotations

import math
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "bench"  # the same data gives the same SVG bytes (committed results)
    return plt


def save(fig, path: Path) -> list[Path]:
    """The PNG at `path` and a vector copy (.svg) beside it, each written whole."""
    from bench.files.checkpoint import atomic_write

    path = Path(path)
    svg = path.with_suffix(".svg")
    written = [atomic_write(path, lambda fh: fig.savefig(fh, format="png", bbox_inches="tight")),
               atomic_write(svg, lambda fh: fig.savefig(fh, format="svg", bbox_inches="tight", metadata={"Date": None}))]
    import matplotlib.pyplot as plt

    plt.close(fig)
    return written


def axis(ax, which: str, lo: float, hi: float, log2_ticks: list[float] | None = None) -> None:
    """Readable ticks on any range: a log axis when the values span a decade or more (major
    ticks only, plain numbers), else a linear one with at most 6 ticks; `log2_ticks` puts a log2
    axis with a tick at each given value (sampling steps)."""
    from matplotlib import ticker

    ax_ = ax.xaxis if which == "x" else ax.yaxis
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    fmt = ticker.FuncFormatter(lambda v, _: f"{v:.4g}" if abs(v) < 1e4 else ticker.EngFormatter(sep=" ")(v))
    if log2_ticks:
        set_scale("log", base=2)
        ax_.set_major_locator(ticker.FixedLocator(log2_ticks))
        ax_.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_.set_minor_locator(ticker.NullLocator())
    elif lo > 0 and hi / lo >= 10:
        set_scale("log")
        ax_.set_major_locator(ticker.LogLocator(base=10, numticks=8))
        ax_.set_minor_locator(ticker.LogLocator(base=10, subs=range(2, 10), numticks=100))
        ax_.set_major_formatter(fmt)
        ax_.set_minor_formatter(ticker.NullFormatter())
        if hi / lo < 100:  # one or two decades: label 2x and 5x too, or the axis has a single label
            ax_.set_minor_formatter(ticker.FuncFormatter(
                lambda v, _: fmt(v, None) if round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
    else:
        set_scale("linear")
        ax_.set_major_locator(ticker.MaxNLocator(6))
        ax_.set_major_formatter(fmt)


def plot_run_curve(fid: dict[int, float], path: Path, title: str) -> list[Path]:
    """One run's FID against n (the MLflow artifact plots/fid_vs_steps.png)."""
    plt = pyplot()
    steps = sorted(fid)
    vals = [fid[n] for n in steps]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.plot(steps, vals, marker="o", lw=1.6)
    pos = [v for v in vals if v > 0]
    lo, hi = (min(pos) / 1.5, max(pos) * 1.3) if pos else (0, 1)
    axis(ax, "x", steps[0], steps[-1], log2_ticks=steps)
    axis(ax, "y", lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    return save(fig, path)
