"""The per-level losses per k from two experiments: a `--sweep` of k = 1/8, 1/2 (sweeps/k_ends.toml) and
the run of the same config at k = 1/4 in another experiment (one seed each), drawn by bench report's
own functions:

    PYTHONPATH=. python scripts/draw_levels_per_k.py SWEEP_EXPERIMENT OTHER_EXPERIMENT OTHER_RUN_ID OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from bench import report as R


def main() -> None:
    sweep_exp, other_exp, other_run, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    a, b = R.collect(sweep_exp), R.collect(other_exp)
    b = b[b["run_id"] == other_run]
    df = pd.concat([a, b], ignore_index=True)
    df = df[[c for c in df.columns if c not in a.attrs.get("group_keys", []) and c not in b.attrs.get("group_keys", [])
             and c != "group"]]
    df = R.label_groups(df)
    la, ladder = R.collect_levels(sweep_exp)
    lb, ladder_b = R.collect_levels(other_exp)
    assert ladder == ladder_b, "the experiments' ladders differ"
    levels = pd.concat([la, lb[lb["run_id"] == other_run]], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{sweep_exp} + {other_exp} ({other_run[:8]})"
    for p in R.plot_levels(df, levels, ladder, out / "levels_per_k.png", title):
        print("wrote", p)
    table = R.levels_final_table(df, levels, ladder)
    (out / "levels_per_k.csv").write_text(table.to_csv(index=False, float_format="%.6g"))
    print("wrote", out / "levels_per_k.csv")
    fid = df[df["metric"].isin(["fid", "paired_to_2n"])].pivot_table(index=R.hue_column(df), columns=["metric", "steps"], values="value")
    (out / "levels_per_k_fid.csv").write_text(fid.to_csv(float_format="%.6g"))
    print("wrote", out / "levels_per_k_fid.csv")


if __name__ == "__main__":
    main()
