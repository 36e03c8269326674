"""Print the newest finished flow-matching run of one seed in an experiment ("" if none): the teacher
the digits scripts (regenerate_digits.sh, run_distillation_variants.sh) distil from when they did not train it.

    python scripts/teacher_of.py EXPERIMENT SEED
"""

from __future__ import annotations

import sys

from bench.store.tracking import RunStore


def teacher_of(experiment: str, seed: str) -> str:
    runs = RunStore.existing().find(experiment, tags={"method": "flow_matching"}, params={"seed": seed},
                                    status="FINISHED", newest_first=True)
    return runs[0].run_id if runs else ""


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/teacher_of.py EXPERIMENT SEED")
    print(teacher_of(sys.argv[1], sys.argv[2]))
