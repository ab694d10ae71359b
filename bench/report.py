"""The one table ``python -m bench`` prints: a row per measurement, the
targets checked on the row they belong to."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.harness import WrkResult


@dataclass
class Summary:
    """The median of a scenario's rounds (each figure on its own), and the
    spread of req/s and p99 over them."""

    rounds: int
    requests_per_s: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    p99_min: float
    p99_max: float
    errors: int
    worker_cpu_s: list[float]
    foreign_cpu_s: float
    noisy: bool
    unbalanced: bool

    @classmethod
    def of(cls, runs: Sequence[WrkResult]) -> Summary:
        rps = [r.requests_per_s for r in runs]
        p99 = [r.p99_ms for r in runs]
        middle = sorted(runs, key=lambda r: r.requests_per_s)[(len(runs) - 1) // 2]
        return cls(rounds=len(runs), requests_per_s=statistics.median(rps), rps_min=min(rps), rps_max=max(rps),
                   p50_ms=statistics.median(r.p50_ms for r in runs), p99_ms=statistics.median(p99),
                   p99_min=min(p99), p99_max=max(p99), errors=sum(r.errors for r in runs),
                   worker_cpu_s=middle.worker_cpu_s, foreign_cpu_s=max(r.foreign_cpu_s for r in runs),
                   noisy=any(r.noisy for r in runs), unbalanced=any(r.unbalanced for r in runs))

    def notes(self) -> list[str]:
        notes = []
        if self.errors:
            notes.append(f"{self.errors} socket errors")
        if self.unbalanced:
            notes.append("UNBALANCED worker cpu " + "/".join(f"{s:.1f}" for s in self.worker_cpu_s) + " s")
        if self.noisy:
            notes.append(f"NOISY: others used {self.foreign_cpu_s:.1f} cpu s")
        return notes


@dataclass
class Check:
    shown: str  # the figure, e.g. "7.14x bare_constant"
    target: str  # e.g. ">= 6x"; "" when the figure is reported only
    met: bool | None  # None: no target
    value: float | None = None
    key: str = ""  # a stable name for the JSON

    @property
    def verdict(self) -> str:
        return {True: "OK", False: "MISS", None: "-"}[self.met]


@dataclass
class Row:
    scenario: str
    server: str
    summary: Summary | None = None
    p50_ms: float | None = None  # rows without a wrk run (stampede)
    p99_ms: float | None = None
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ratio(key: str, value: float, against: str, op: str, target: float) -> Check:
    met = value >= target if op == ">=" else value <= target
    return Check(shown=f"{value:.2f}x {against}", target=f"{op} {target:g}x", met=met, value=value, key=key)


def print_table(rows: Sequence[Row], *, rounds: int) -> None:
    spread = rounds > 1
    head = [("scenario", 24, "<"), ("server", 40, "<"), ("req/s", 9, ">")]
    if spread:
        head.append(("req/s min-max", 15, ">"))
    head += [("p50 ms", 8, ">"), ("p99 ms", 8, ">"), ("ratio", 30, "<"), ("target", 11, "<"),
             ("result", 6, "<"), ("notes", 0, "<")]

    def line(cells: Sequence[str]) -> str:
        out = []
        for (_, width, align), cell in zip(head, cells, strict=True):
            out.append(f"{cell:{align}{width}}" if width else cell)
        return "  ".join(out).rstrip()

    print(line([h[0] for h in head]))
    print("-" * (sum(w for _, w, _ in head) + 2 * (len(head) - 1) + 10))
    for row in rows:
        s = row.summary
        rps = f"{s.requests_per_s:.0f}" if s else ""
        p50 = s.p50_ms if s else row.p50_ms
        p99 = s.p99_ms if s else row.p99_ms
        first = [row.scenario, row.server, rps]
        if spread:
            first.append(f"{s.rps_min:.0f}-{s.rps_max:.0f}" if s and s.rounds > 1 else "")
        first += [_ms(p50), _ms(p99)]
        notes = (s.notes() if s else []) + row.notes
        checks = row.checks or [Check("", "", None)]
        for i, check in enumerate(checks):
            lead = first if i == 0 else [""] * len(first)
            verdict = check.verdict if check.shown else ""
            print(line([*lead, check.shown, check.target, verdict, "; ".join(notes) if i == 0 else ""]))


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"
