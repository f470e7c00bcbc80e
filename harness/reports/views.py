"""What the page and ``matrix.md`` show per property, as plain data: the scenario × property grid of a run (grouped by
backend, then API style) and the stack × property heatmap of merged runs (rows accelerate × deepspeed × stage, a cell
per property with the share of verdicts judged on evidence versus excused by an xfails line, and the share proven
sensitive). Counts are of (scenario, property) verdicts, never of scenarios: one failing property is one failure.

It reads the margin and self-proof fields of a verdict where the results carry them (``margin``, ``faults``,
``proven``) and says "not recorded" where they do not; it never invents them.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from ..results import SEVERITY, Outcome, Verdict
from ..scenario import API_STYLES, BACKENDS

# Outcomes decided by the run's own evidence; an xfail is excused by a line of the xfails file.
EXCUSED = ("xfail",)


def property_order(code: str) -> tuple[int, str]:
    """P1 < P2 < … < P8 < P8-leak < P9 < P10 (as DESIGN §4 lists them)."""
    match = re.match(r"P(\d+)(.*)", code)
    return (int(match.group(1)), match.group(2)) if match else (10**6, code)


def ordered(values: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    values = set(values)
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def verdict_counts(outcomes: Iterable[Outcome]) -> Counter:
    return Counter(v.outcome for o in outcomes for v in o.properties.values())


def worst_of(counts: Counter) -> str:
    return max(counts, key=lambda o: SEVERITY[o]) if counts else "none"


def margin_of(verdict: Verdict) -> float | None:
    """Worst |Δ| ÷ tolerance of a verdict, where the results recorded it."""
    margin = getattr(verdict, "margin", None)
    return float(margin) if isinstance(margin, (int, float)) else None


def stage_of(backend: str) -> str:
    """The row label a backend gets in the heatmap: ZeRO stage (with offload) for DeepSpeed, else the backend."""
    if backend.startswith("ds") and len(backend) > 2 and backend[2].isdigit():
        return f"ZeRO-{backend[2]}" + (" +offload" if backend.endswith("off") else "")
    return backend


# ------------------------------------------------------------------------------------- stack × property heatmap
@dataclass
class HeatCell:
    """The verdicts of one property on one stack row."""

    counts: Counter = field(default_factory=Counter)
    faults_declared: int = 0  # verdicts whose property declared synthetic faults for them
    proven: int = 0  # … of which the re-judging caught at least one
    proof_recorded: int = 0  # verdicts that carry the self-proof fields at all
    worst_margin: float | None = None

    def add(self, verdict: Verdict) -> None:
        self.counts[verdict.outcome] += 1
        faults = getattr(verdict, "faults", None)
        if faults is not None:
            self.proof_recorded += 1
            if faults:
                self.faults_declared += 1
                self.proven += bool(getattr(verdict, "proven", None))
        margin = margin_of(verdict)
        if margin is not None:
            self.worst_margin = margin if self.worst_margin is None else max(self.worst_margin, margin)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def excused(self) -> int:
        return sum(self.counts[o] for o in EXCUSED)

    @property
    def judged(self) -> int:
        return self.total - self.excused

    @property
    def worst(self) -> str:
        return worst_of(self.counts)

    def shares(self) -> list[tuple[str, float]]:
        """(outcome, share of this cell's verdicts), worst last: what the cell's bar paints."""
        return [(o, self.counts[o] / self.total) for o in sorted(self.counts, key=lambda o: SEVERITY[o]) if self.counts[o]]

    def proven_text(self) -> str:
        if not self.proof_recorded:
            return "proof —"
        if not self.faults_declared:
            return "no faults declared"
        return f"proven {self.proven}/{self.faults_declared}"


@dataclass
class HeatRow:
    env: str
    stage: str
    cells: dict[str, HeatCell] = field(default_factory=dict)  # property code -> cell

    @property
    def label(self) -> str:
        return f"{self.env} · {self.stage}"


def heatmap(outcomes: Iterable[Outcome]) -> tuple[list[HeatRow], list[str]]:
    """Rows (stack label · stage, in version order as the labels sort), and the property codes that have verdicts."""
    rows: dict[tuple[str, str], HeatRow] = {}
    codes: set[str] = set()
    for outcome in outcomes:
        stage = stage_of(outcome.axes.get("backend", "?"))
        row = rows.setdefault((outcome.env or "", stage), HeatRow(outcome.env or "", stage))
        for code, verdict in outcome.properties.items():
            codes.add(code)
            row.cells.setdefault(code, HeatCell()).add(verdict)
    stage_rank = {stage_of(b): i for i, b in enumerate(BACKENDS)}
    ordered_rows = sorted(rows.values(), key=lambda r: (r.env, stage_rank.get(r.stage, len(BACKENDS)), r.stage))
    return ordered_rows, sorted(codes, key=property_order)


def property_totals(rows: Iterable[HeatRow]) -> HeatRow:
    """Every stack together: per property, all its verdicts (the share judged and the share proven over the run)."""
    total = HeatRow("all stacks", "")
    for row in rows:
        for code, cell in row.cells.items():
            into = total.cells.setdefault(code, HeatCell())
            into.counts.update(cell.counts)
            into.faults_declared += cell.faults_declared
            into.proven += cell.proven
            into.proof_recorded += cell.proof_recorded
            if cell.worst_margin is not None:
                into.worst_margin = max(into.worst_margin or 0.0, cell.worst_margin)
    return total


# ------------------------------------------------------------------------------------- scenario × property grid
@dataclass
class ScenarioRow:
    outcome: Outcome

    def verdict(self, code: str) -> Verdict | None:
        return self.outcome.properties.get(code)


@dataclass
class StyleGroup:
    api: str
    rows: list[ScenarioRow]
    counts: Counter


@dataclass
class BackendGroup:
    backend: str
    styles: list[StyleGroup]
    counts: Counter


@dataclass
class PropertyGrid:
    env: str
    codes: list[str]
    backends: list[BackendGroup]
    counts: Counter


def property_grids(outcomes: Iterable[Outcome]) -> list[PropertyGrid]:
    """One grid per stack label: rows are scenarios grouped by backend then API style, columns every property code
    that judged any scenario of the stack."""
    by_env: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_env.setdefault(outcome.env or "", []).append(outcome)
    grids = []
    for env in sorted(by_env):
        members = by_env[env]
        codes = sorted({c for o in members for c in o.properties}, key=property_order)
        backends = []
        for backend in ordered((o.axes.get("backend", "?") for o in members), BACKENDS):
            in_backend = [o for o in members if o.axes.get("backend", "?") == backend]
            styles = []
            for api in ordered((o.axes.get("api", "?") for o in in_backend), API_STYLES):
                rows = sorted((o for o in in_backend if o.axes.get("api", "?") == api), key=lambda o: o.scenario)
                styles.append(StyleGroup(api, [ScenarioRow(o) for o in rows], verdict_counts(rows)))
            backends.append(BackendGroup(backend, styles, verdict_counts(in_backend)))
        grids.append(PropertyGrid(env, codes, backends, verdict_counts(members)))
    return grids
