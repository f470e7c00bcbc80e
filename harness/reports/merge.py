"""Merge ``results.json`` files from many tox envs, versions and targets into one view.

A scenario is identified by (stack label, scenario id): the same id on two DeepSpeed versions is two rows.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..results import SEVERITY, Outcome, ResultsError, RunResults, environment_label, load
from ..xfails import VERSIONED


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line, and every ``results.json`` below directories named there."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("results.json") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise ResultsError(f"{path}: no such file or directory")
    if not found:
        raise ResultsError(f"no results.json under {', '.join(str(p) for p in paths)}")
    return found


@dataclass
class Cell:
    counts: Counter = field(default_factory=Counter)
    scenarios: list[Outcome] = field(default_factory=list)

    @property
    def worst(self) -> str:
        return max(self.counts, key=lambda o: SEVERITY[o]) if self.counts else "none"


@dataclass
class Merged:
    runs: list[tuple[Path, RunResults]]
    outcomes: list[Outcome]  # each with .env set

    @property
    def labels(self) -> list[str]:
        return sorted({o.env for o in self.outcomes if o.env})

    def grid(self, label: str | None = None) -> dict[str, dict[str, Cell]]:
        """backend -> api style -> cell, for one stack label or all."""
        grid: dict[str, dict[str, Cell]] = defaultdict(lambda: defaultdict(Cell))
        for outcome in self.outcomes:
            if label is not None and outcome.env != label:
                continue
            cell = grid[outcome.axes.get("backend", "?")][outcome.axes.get("api", "?")]
            cell.counts[outcome.outcome] += 1
            cell.scenarios.append(outcome)
        return grid

    def counts(self) -> Counter:
        return Counter(o.outcome for o in self.outcomes)

    def as_results(self) -> RunResults:
        """One results file holding everything (what a gate baseline is made of)."""
        targets = sorted({r.target for _, r in self.runs})
        environments = {environment_label(r): r.environment for _, r in self.runs}
        return RunResults(target="+".join(targets), outcomes=self.outcomes,
                          environment={"merged": environments},
                          selection={"merged_from": [str(p) for p, _ in self.runs]},
                          wall_seconds=sum(r.wall_seconds for _, r in self.runs))


def rejudge(outcome: Outcome, entries: list, versions: dict) -> None:
    """Judge a recorded outcome again, property by property, against an xfails file (the versions are the run's
    own): the evidence is unchanged, only which failures are known. Lets a triaged xfails file be applied to runs
    already made."""
    from ..results import worst
    from ..xfails import judge

    for verdict in outcome.properties.values():
        raw = verdict.raw or verdict.outcome
        judged = judge(entries, outcome.scenario, verdict.code, raw, verdict.signature, verdict.reason, versions)
        verdict.outcome, verdict.known = judged.outcome, judged.known
    outcome.outcome = worst([v.outcome for v in outcome.properties.values()])


def merge(paths: Iterable[str | Path], xfails: dict[str, list] | None = None) -> Merged:
    """``xfails``: target -> parsed xfails entries to judge that target's recorded outcomes with again."""
    runs = [(path, load(path)) for path in find_results(paths)]
    for _, run in runs:
        entries = (xfails or {}).get(run.target)
        if entries is not None:
            caps = run.environment.get("capabilities", {})
            versions = {name: caps.get(name) for name in VERSIONED}
            for outcome in run.outcomes:
                rejudge(outcome, entries, versions)
    by_key: dict[tuple[str, str], Outcome] = {}
    for _, run in runs:
        label = environment_label(run) if "merged" not in run.environment else None
        for outcome in run.outcomes:
            outcome.env = outcome.env or label
            key = (outcome.env or "", outcome.scenario)
            previous = by_key.get(key)
            # The same scenario on the same stack twice (two envs ran it): the worst outcome stands.
            if previous is None or SEVERITY[outcome.outcome] > SEVERITY[previous.outcome]:
                by_key[key] = outcome
    return Merged(runs=runs, outcomes=list(by_key.values()))
