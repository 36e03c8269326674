"""results/README.md carries the report's own tables, not numbers typed by hand: every generated block
equals the file `bench report` wrote (scripts/include_report_tables.py copies them in)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("include_report_tables", ROOT / "scripts" / "include_report_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_digits_tables_in_results_readme_are_the_generated_files():
    script = load_script()
    text = (ROOT / "results" / "README.md").read_text()
    blocks = [m.group("path") for m in script.BLOCK.finditer(text)]
    assert {"digits/table.md", "digits/leaderboard.md"} <= set(blocks)
    assert script.include(text) == text, "results/README.md drifted from the report's files: run scripts/include_report_tables.py"


def test_a_block_is_replaced_by_its_file(tmp_path):
    script = load_script()
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    text = "before\n<!-- generated from t.md: do not edit -->\nstale\n<!-- end generated -->\nafter\n"
    assert script.include(text, tmp_path) == ("before\n<!-- generated from t.md: do not edit -->\n\n| a |\n|---|\n| 1 |\n\n"
                                              "<!-- end generated -->\nafter\n")
