"""Where a run's wall time goes: named phases, each second counted once.

A run (bench.train.run.execute) records into a PhaseClock; code anywhere below it marks its work with
`with phases.span("name"):` and pays nothing when no clock records (Ray workers, tests, `bench speed`).
Spans nest and are exclusive: a span's seconds leave out those of the spans inside it, so the phases of
a run add up to the time the clock ran, and `other` is what no span claimed.

    clock = PhaseClock()
    with recording(clock):
        with span("train_steps"):
            ...
            with span("checkpoints"):   # not counted in train_steps
                ...
    clock.rows()  # [{"phase": "train_steps", "seconds": ..., "calls": 1}, ...]
"""

from __future__ import annotations

import contextlib
import os
import time
from contextvars import ContextVar
from typing import Iterator

_ACTIVE: ContextVar["PhaseClock | None"] = ContextVar("bench_phase_clock", default=None)
_startup_unclaimed = False  # set by a command that is one run (`bench run`): its first clock counts the process's start


def count_process_start() -> None:
    """The next PhaseClock made counts this process's age as `startup` (a command whose process is one run)."""
    global _startup_unclaimed
    _startup_unclaimed = True


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that cannot be read: the
    interpreter's start and the imports before a clock exists."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


class PhaseClock:
    """Seconds and calls per phase name, exclusive of nested spans; `startup` (the process's age when the
    clock was made, when known) counts as a phase of its own where count_startup, or by default where
    the process said so (count_process_start) and no clock has claimed it yet."""

    def __init__(self, count_startup: bool | None = None):
        global _startup_unclaimed
        if count_startup is None:
            count_startup, _startup_unclaimed = _startup_unclaimed, False
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # per open span: seconds of the spans nested in it
        self._absorbing = 0  # open spans that keep the spans inside them as their own time
        age = process_age() if count_startup else None
        if age is not None:
            self.seconds["startup"], self.calls["startup"] = age, 1

    @contextlib.contextmanager
    def span(self, name: str, absorb: bool = False) -> Iterator[None]:
        """absorb: the spans inside this one count as its own time (a timing pass that runs the
        phases it measures: the evaluation's estimate)."""
        if self._absorbing:
            yield
            return
        t0 = time.perf_counter()
        self._stack.append([0.0])
        self._absorbing += absorb
        try:
            yield
        finally:
            self._absorbing -= absorb
            inner = self._stack.pop()[0]
            total = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + total - inner
            self.calls[name] = self.calls.get(name, 0) + 1
            if self._stack:
                self._stack[-1][0] += total

    def elapsed(self) -> float:
        """Seconds since the clock was made, plus the startup before it."""
        return time.perf_counter() - self.started + self.seconds.get("startup", 0.0)

    def rows(self) -> list[dict[str, float | int | str]]:
        """One row per phase in the order first seen, then `other` (what no span claimed) and `total`."""
        total = self.elapsed()
        rows = [{"phase": k, "seconds": v, "calls": self.calls[k]} for k, v in self.seconds.items()]
        rows.append({"phase": "other", "seconds": max(total - sum(self.seconds.values()), 0.0), "calls": 0})
        rows.append({"phase": "total", "seconds": total, "calls": 0})
        return rows

    def text(self, min_seconds: float = 0.05) -> str:
        """The phases as a fixed-width table (those under min_seconds folded into `other`'s neighbours)."""
        rows = self.rows()
        total = rows[-1]["seconds"] or 1e-9
        lines = [f"{'phase':<28} {'seconds':>9} {'share':>6} {'calls':>6}"]
        for r in rows:
            if r["phase"] not in ("other", "total") and r["seconds"] < min_seconds:
                continue
            lines.append(f"{r['phase']:<28} {r['seconds']:>9.2f} {r['seconds'] / total:>6.1%} {r['calls'] or '':>6}")
        return "\n".join(lines)


def current_clock() -> PhaseClock | None:
    """The clock spans record into now, if any."""
    return _ACTIVE.get()


def span(name: str, absorb: bool = False):
    """A span of the clock now recording, or nothing when none records."""
    clock = _ACTIVE.get()
    return clock.span(name, absorb) if clock is not None else contextlib.nullcontext()


@contextlib.contextmanager
def recording(clock: PhaseClock) -> Iterator[PhaseClock]:
    """Make `clock` the one spans record into, for this context (a thread or a task keeps its own)."""
    token = _ACTIVE.set(clock)
    try:
        yield clock
    finally:
        _ACTIVE.reset(token)
