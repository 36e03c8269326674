"""Copy the tables `bench report` wrote into results/README.md, so the README never carries numbers typed by hand.

Every block of the README between

    <!-- generated from digits/table.md: do not edit, run scripts/include_report_tables.py -->
    <!-- end generated -->

is replaced by that file (a path under results/). Run it after `bench report --from-csv results/<folder>/metrics.csv`:

    python scripts/include_report_tables.py            # rewrites results/README.md
    python scripts/include_report_tables.py --check    # exit 1 where a block differs from its file

tests/test_results_readme.py runs the check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
BLOCK = re.compile(r"(<!-- generated from (?P<path>\S+): do not edit[^>]*-->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def include(text: str, root: Path = RESULTS) -> str:
    """text with every generated block's body replaced by its file's content."""

    def body(m: re.Match) -> str:
        source = root / m.group("path")
        if not source.is_file():
            raise SystemExit(f"error: {source} does not exist; run `bench report --from-csv` for its folder first.")
        content = source.read_text().strip("\n")
        return m.group(1) + "\n" + content + "\n\n" + m.group(4)

    return BLOCK.sub(body, text)


def main(argv: list[str]) -> int:
    readme = RESULTS / "README.md"
    text = readme.read_text()
    new = include(text)
    if "--check" in argv:
        if new != text:
            print("error: results/README.md differs from the tables bench report wrote; run scripts/include_report_tables.py.",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    print(f"wrote {readme} ({len(BLOCK.findall(text))} generated blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
