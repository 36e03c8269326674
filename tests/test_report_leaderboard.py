"""The report a person reads (issue 36): short variant labels, a leaderboard per n whose ties come from
corrected tests (checked against p-values worked out by hand), pairing that assumes nothing, and one
self-contained page rebuilt from a committed metrics.csv."""

from __future__ import annotations

import itertools
import math
import random
import re
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from bench.report.labels import MAX_LABEL, parse_names, variant_labels
from bench.report.leaderboard import adjust, comparisons, leaderboard, letters
from bench.report.paired import duplicate_seeds, paired_table

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "results" / "digits" / "metrics.csv"


# -- the correction, against a hand-worked example ------------------------------------------------------
def test_holm_and_benjamini_hochberg_match_the_hand_worked_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max: 0.02, 0.03, 0.06, 0.06
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted p * 4 / rank = 0.02, 0.02, 0.04, 0.04; running min from the top: the same
    assert adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])


def frame(rows) -> pd.DataFrame:
    """Long frame as metrics.csv has it: (group, method, seed, steps, value[, eval_seed, teacher, run])."""
    out = []
    for r in rows:
        group, method, seed, steps, value = r[:5]
        extra = r[5] if len(r) > 5 else {}
        out.append({"group": group, "method": method, "seed": seed, "steps": steps, "metric": "fid", "value": value,
                    "run_id": extra.get("run", f"{group}-{seed}"), "eval_seed": str(extra.get("eval_seed", 100 + seed)),
                    "num_samples": 100, "reference": "ref", "feature_space": "coords",
                    "teacher_sha256": extra.get("teacher", ""), "teacher_examples": 0.0, "dataset": "toy:a", "profile": "smoke"})
    return pd.DataFrame(out)


A_OFFSET = (2.1, 1.9, 2.0, 2.2, 1.8)  # B - A per seed
SEED = (0.0, 9.0, -7.0, 4.0, -3.0)


def three_groups() -> pd.DataFrame:
    rows = []
    for s, (e, o) in enumerate(zip(SEED, A_OFFSET)):
        rows.append(("A", "flow_matching", s, 1, 20 + e))
        rows.append(("B", "meanflow", s, 1, 20 + e + o))
        rows.append(("C", "diffusion", s, 1, [30.0, 31.0, 29.0, 30.5, 29.5][s], {"eval_seed": 7}))  # other noise
    return frame(rows)


def test_paired_and_welch_p_values_and_holm_by_hand():
    t = comparisons(three_groups(), "holm").set_index(["group_a", "group_b"])
    # A vs B pair: d = A - B = -offsets; t = mean / (sd / sqrt 5), 4 dof
    d = [-o for o in A_OFFSET]
    m, sd = sum(d) / 5, math.sqrt(sum((x - sum(d) / 5) ** 2 for x in d) / 4)
    p_ab = 2 * stats.t.sf(abs(m / (sd / math.sqrt(5))), 4)
    assert t.loc[("A", "B"), "test"] == "paired" and t.loc[("A", "B"), "p"] == pytest.approx(p_ab)
    # A vs C: another evaluation seed, so Welch: (mean_a - mean_c) / sqrt(va/5 + vc/5), Welch-Satterthwaite dof
    a = [20 + e for e in SEED]
    c = [30.0, 31.0, 29.0, 30.5, 29.5]
    va, vc = pd.Series(a).var(), pd.Series(c).var()
    se2 = va / 5 + vc / 5
    dof = se2 ** 2 / ((va / 5) ** 2 / 4 + (vc / 5) ** 2 / 4)
    p_ac = 2 * stats.t.sf(abs((sum(a) / 5 - sum(c) / 5) / math.sqrt(se2)), dof)
    assert t.loc[("A", "C"), "test"] == "welch" and t.loc[("A", "C"), "p"] == pytest.approx(p_ac)
    assert "evaluation seed differs" in t.loc[("A", "C"), "why_unpaired"]
    # Holm over the three p-values of n = 1, retyped: sort, multiply by 3, 2, 1, running max, cap at 1
    ps = {k: t.loc[k, "p"] for k in t.index}
    order = sorted(ps, key=ps.get)
    held, expect = 0.0, {}
    for i, k in enumerate(order):
        held = max(held, min(1.0, ps[k] * (3 - i)))
        expect[k] = held
    for k in ps:
        assert t.loc[k, "p_adjusted"] == pytest.approx(expect[k])


def test_the_board_ranks_by_mean_and_letters_show_the_ties():
    lb = leaderboard(three_groups())
    b = lb.board.set_index("group")
    assert list(lb.board.sort_values("rank")["group"]) == ["A", "B", "C"]  # means 20.6, 22.6, 30
    assert b.loc["A", "seeds"] == "0 1 2 3 4" and b.loc["A", "runs"] == 5
    assert b.loc["A", "ci95"] == pytest.approx(stats.t.ppf(0.975, 4) * pd.Series([20 + e for e in SEED]).std() / math.sqrt(5))
    # A and B differ (paired, p ~ 1e-6); the seed effect (sd 6.4) hides C from A and B under Welch
    differs = {frozenset((r.group_a, r.group_b)) for r in lb.tests.itertuples() if r.differs}
    assert differs == {frozenset("AB")}
    assert b.loc["A", "letters"] == "a" and b.loc["B", "letters"] == "b" and set(b.loc["C", "letters"]) == {"a", "b"}
    assert b.loc["C", "ties"] == "1 2" and b.loc["A", "ties"] == "3"
    assert lb.correction == "Holm" and leaderboard(three_groups(), "bh").correction == "Benjamini-Hochberg"


def test_letters_share_a_letter_exactly_when_not_told_apart():
    rng = random.Random(0)
    for _ in range(200):
        order = list("ABCDEFG")
        pairs = [frozenset(p) for p in itertools.combinations(order, 2)]
        differs = {p for p in pairs if rng.random() < 0.4}
        got = letters(order, differs)
        for p in pairs:
            i, j = tuple(p)
            assert bool(set(got[i]) & set(got[j])) == (p not in differs), (differs, got)


# -- pairing never assumes ------------------------------------------------------------------------------
def test_a_distilled_run_without_a_teacher_hash_is_not_paired():
    rows = []
    for s, e in enumerate(SEED):
        rows.append(("flow_matching", "flow_matching", s, 1, 20 + e))
        rows.append(("progressive", "progressive", s, 1, 19 + e, {"teacher": f"t-{s}" if s else ""}))  # seed 0: no hash
    df = frame(rows)
    pairs, skipped, _ = paired_table(df)
    assert pairs.empty
    assert "B distils and its run at seed 0 records no teacher hash" in skipped.iloc[0]["reason"]
    assert comparisons(df)["test"].tolist() == ["welch"]  # compared all the same, as unpaired runs
    with_hash = frame([(*r[:5], {"teacher": f"t-{r[2]}"}) if r[0] == "progressive" else r for r in rows])
    assert len(paired_table(with_hash)[0]) == 1


def test_duplicate_runs_at_one_seed_are_flagged_and_left_out_of_the_pairing(tmp_path):
    from bench.report.paired import write_paired

    rows = []
    for s, (e, o) in enumerate(zip(SEED, A_OFFSET)):
        rows.append(("A", "flow_matching", s, 1, 20 + e))
        rows.append(("B", "meanflow", s, 1, 20 + e + o))
    rows.append(("B", "meanflow", 0, 1, 99.0, {"run": "B-0-again"}))  # a second run of B at seed 0
    df = frame(rows)
    dup = duplicate_seeds(df)
    assert dup[["group", "seed", "runs"]].values.tolist() == [["B", 0, 2]]
    pairs, _, _ = paired_table(df)
    assert pairs.iloc[0]["seeds"] == "1 2 3 4"  # seed 0 left out, not averaged into (99 + 20.2) / 2
    assert pairs.iloc[0]["diff_mean"] == pytest.approx(-sum(A_OFFSET[1:]) / 4)
    write_paired(df, tmp_path)
    text = (tmp_path / "paired.md").read_text()
    assert "## Several runs at one seed (flagged)" in text and "- B, seed 0: 2 runs" in text
    b = leaderboard(df).board.set_index("group")
    assert b.loc["B", "runs"] == 6 and b.loc["B", "seeds"] == "0 1 2 3 4"


# -- labels ---------------------------------------------------------------------------------------------
def test_a_label_is_the_method_plus_what_differs_from_its_published_defaults():
    keys = ["method", "method.bootstrap_weight", "method.levels", "method.recipe", "method.k", "method.level_shares"]
    base = {"method": "shortcut", "method.bootstrap_weight": "1.0", "method.levels": "uniform", "method.recipe": "paper",
            "method.k": "0.25", "method.level_shares": "x"}
    configs = {
        "paper": base,
        "tuned": {**base, "method.bootstrap_weight": "8.0", "method.levels": "quarter_large", "method.level_shares": "y"},
        # the authors' recipe brings its own k and levels: only the recipe differs from the defaults
        "authors": {**base, "method.recipe": "authors", "method.k": "0.125", "method.levels": "authors", "method.level_shares": "z"},
        "fm": {"method": "flow_matching"},
    }
    got = variant_labels(configs, keys)
    assert got == {"paper": "shortcut", "tuned": "shortcut: bootstrap_weight=8, levels=quarter_large",
                   "authors": "shortcut: recipe=authors", "fm": "flow_matching"}
    named = variant_labels(configs, keys, parse_names(["shortcut: bootstrap_weight=8, levels=quarter_large=shortcut (tuned)"]))
    assert named["tuned"] == "shortcut (tuned)"
    with pytest.raises(Exception, match="at most 60"):
        parse_names([f"shortcut={'x' * 61}"])


def test_labels_stay_unique_and_short_whatever_differs():
    keys = ["method", *(f"train.k{i}" for i in range(12))]
    configs = {f"g{j}": {"method": "flow_matching", **{f"train.k{i}": f"value-{i}-{j}" for i in range(12)}} for j in range(5)}
    got = variant_labels(configs, keys)
    assert len(set(got.values())) == 5 and max(map(len, got.values())) <= MAX_LABEL


# -- the page, from the committed digits metrics ---------------------------------------------------------
@pytest.mark.skipif(not DIGITS.is_file(), reason="results/digits/metrics.csv is not in this checkout")
def test_from_csv_rebuilds_one_self_contained_page_with_short_labels(tmp_path):
    from bench.report import write_from_csv
    from bench.report.figures import panels, MAX_LINES
    from bench.report.frames import read_metrics_csv

    written = {p.name for p in write_from_csv(DIGITS, tmp_path)}
    assert {"index.html", "leaderboard.md", "leaderboard.csv", "comparisons.csv", "fid_vs_steps.png", "table.md",
            "paired.md"} <= written
    page = (tmp_path / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)  # nothing fetched from the network
    assert not re.search(r"<(script|link|iframe)\b", page, re.I)
    assert page.count("data:image/png;base64,") >= 2 and "Holm" in page
    df = read_metrics_csv(DIGITS)
    labels = set(df["group"])
    assert max(map(len, labels)) <= MAX_LABEL and len(labels) == 17
    assert all(len(g) <= MAX_LINES + 1 for _, g in panels(df))
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board["steps"]) == {1, 2, 4, 8, 16, 32} and board["group"].str.len().max() <= MAX_LABEL
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## n = 1" in md and "## n = 32 (M)" in md and "corrected together by **Holm**" in md
    rows = [ln for ln in (tmp_path / "table.md").read_text().splitlines() if ln.startswith("| ")]
    assert all(len(r.split("|")[1].strip()) <= MAX_LABEL for r in rows) and "e+0" not in "".join(rows)
