"""index.html: one self-contained page per experiment (the leaderboards, the figures as inline base64
PNGs, the tables, what was not paired and why); nothing on it is fetched from the network."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from bench.report.leaderboard import ALPHA, Leaderboard, describe_tests, page_steps, ties_text
from bench.report.tables import plain

# figures a report may hold, in the order the page shows them, with a one-line caption
FIGURES = (
    ("fid_vs_steps.png", "FID against sampling steps, one panel per method family."),
    ("fid_vs_compute.png", "FID at 1, 4 and M steps against training compute (teacher included)."),
    ("fid_vs_swept.png", "FID against the swept value at 1, 4 and M steps; stopped (o) and failed (x) trials at their last FID in training."),
    ("paired_vs_steps.png", "Each n's samples against the same model's M-step samples from the same noise."),
    ("levels.png", "Training loss per level of the method's loss ladder."),
)

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1300px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #555; } .note { color: #444; font-size: 13px; max-width: 1000px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.letters { font-family: ui-monospace, monospace; } td.nowrap { white-space: nowrap; }
.boards { display: grid; grid-template-columns: repeat(auto-fit, minmax(600px, 1fr)); gap: 0 24px; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _e(text) -> str:
    return html.escape(str(text))


def inline_png(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{_e(Path(path).name)}" src="data:image/png;base64,{data}">'


def markdown_to_html(text: str) -> str:
    """The report's own markdown (headings, pipe tables, lists, paragraphs, **bold**) as HTML."""
    out, table, items, para = [], [], [], []

    def inline(s: str) -> str:
        s = _e(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    def flush():
        if table:
            rows = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table if not re.match(r"^\|[-|\s]+\|$", r.strip())]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in rows[0]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]) + "</table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if para:
            out.append(f'<p class="note">{inline(" ".join(para))}</p>')
            para.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            if items or para:
                flush()
            table.append(line)
            continue
        if table:
            flush()
        if not line.strip():
            flush()
        elif line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            if para:
                flush()
            items.append(line[2:])
        else:
            para.append(line)
    flush()
    return "\n".join(out)


def board_html(lb: Leaderboard) -> str:
    board, M = lb.board, int(lb.board["steps"].max())
    parts = []
    for n in page_steps(board["steps"]):
        b = board[board["steps"] == n]
        t = lb.tests[lb.tests["steps"] == n]
        rows = []
        for r in b.itertuples():
            interval = "one run" if pd.isna(r.ci95) else f"[{plain(r.mean - r.ci95, 3)}, {plain(r.mean + r.ci95, 3)}]"
            seeds = r.seeds + (f" ({r.runs} runs)" if r.runs > len(str(r.seeds).split()) else "")
            rows.append(f'<tr><td class="num">{r.rank}</td><td>{_e(r.group)}</td><td class="num">{plain(r.mean, 3)}</td>'
                        f'<td class="num">{_e(interval)}</td><td class="nowrap">{_e(seeds)}</td><td class="letters">{_e(r.letters)}</td>'
                        f"<td>{_e(ties_text(r.ties, r.rank, len(b)))}</td></tr>")
        parts.append(f"<div><h3>n = {n}{' (M)' if n == M else ''}</h3>"
                     f'<p class="note">{len(b)} groups; {_e(describe_tests(t))}; {int(t["differs"].sum())} of '
                     f"{int((t['test'] != 'none').sum())} pairs differ after {_e(lb.correction)}.</p>"
                     "<table><tr><th>rank</th><th>variant</th><th>FID</th><th>95 % interval</th><th>seeds</th>"
                     "<th>letters</th><th>ties with (ranks)</th></tr>" + "".join(rows) + "</table></div>")
    return '<div class="boards">' + "".join(parts) + "</div>"


def groups_html(df: pd.DataFrame) -> str:
    """Each variant with every key that tells the groups apart (all of them stay in metrics.csv)."""
    keys = [k for k in (df.attrs.get("group_keys") or []) if k in df.columns and k != "method"]
    runs = df.drop_duplicates("run_id")
    rows = []
    for g, sub in sorted(runs.groupby("group"), key=lambda x: str(x[0])):
        first = sub.iloc[0]
        values = ", ".join(f"{k}={first[k]}" for k in keys if pd.notna(first[k]) and str(first[k]) not in ("", "-", "nan"))
        rows.append(f"<tr><td>{_e(g)}</td><td>{_e(first['method'])}</td><td>{_e(values) or '-'}</td>"
                    f'<td class="num">{sub["run_id"].nunique()}</td></tr>')
    return ("<table><tr><th>variant</th><th>method</th><th>its values of the keys that differ between groups</th>"
            "<th>runs</th></tr>" + "".join(rows) + "</table>")


def write_page(out: Path, df: pd.DataFrame, lb: Leaderboard | None, title: str, source: str,
               sections: dict[str, str]) -> Path:
    """index.html in `out`: title, source, leaderboards, the figures present in `out`, then `sections`
    (heading -> markdown from the report's own .md files)."""
    from bench.files.checkpoint import atomic_write

    out = Path(out)
    body = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{_e(source)}</p>']
    if lb is not None:
        body += ["<h2>Leaderboard: FID per number of sampling steps</h2>",
                 f'<p class="note">Rank by mean FID over the runs (lower is better); the interval is the 95 % Student-t '
                 f"interval over them. <b>Two variants that share a letter cannot be told apart</b>: every two variants at "
                 f"one n are compared by a paired t-test on per-seed differences where their runs pair (same seeds, "
                 f"evaluation noise and teacher), else by Welch's t-test; the p-values of one n are corrected together by "
                 f"<b>{_e(lb.correction)}</b> at {ALPHA:.0%} (statsmodels). Every n: leaderboard.csv; every test: "
                 "comparisons.csv.</p>", board_html(lb)]
    for name, caption in FIGURES:
        if (out / name).is_file():
            body += [f"<h2>{_e(caption)}</h2>", inline_png(out / name)]
    body += ["<h2>Variants</h2>", groups_html(df)]
    for heading, text in sections.items():
        if text.strip():
            body += [f"<h2>{_e(heading)}</h2>", markdown_to_html(text)]
    page = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return atomic_write(out / "index.html", lambda fh: fh.write(page.encode()))
