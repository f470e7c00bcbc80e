"""Merge ``results.json`` files from many tox envs, versions, targets and shards into one view.

A scenario is identified by (stack label, scenario id): the same id on two DeepSpeed versions is two rows. The shards
of one run (``--shard K/N``) merge into that run; a set of shards with one missing is said in ``warnings`` (its
verdicts are absent, which the gate counts as regressions), never silently reported as the whole run.
"""
from __future__ import annotations

import json
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
    counts: Counter = field(default_factory=Counter)  # (scenario, property) verdicts by outcome
    scenarios: list[Outcome] = field(default_factory=list)

    @property
    def worst(self) -> str:
        return max(self.counts, key=lambda o: SEVERITY[o]) if self.counts else "none"


@dataclass
class Merged:
    runs: list[tuple[Path, RunResults]]
    outcomes: list[Outcome]  # each with .env set
    warnings: list[str] = field(default_factory=list)

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
            cell.counts.update(v.outcome for v in outcome.properties.values())
            cell.scenarios.append(outcome)
        return grid

    def counts(self) -> Counter:
        """Scenarios by their worst verdict."""
        return Counter(o.outcome for o in self.outcomes)

    def verdict_counts(self) -> Counter:
        """(scenario, property) verdicts by outcome: what headlines count."""
        return Counter(v.outcome for o in self.outcomes for v in o.properties.values())

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
    return Merged(runs=runs, outcomes=list(by_key.values()), warnings=missing_shards(runs))


# Selection keys that differ between the shards of one run: the shard itself, and what an explore shard explored.
SHARD_KEYS = ("shard", "shard_part")


def missing_shards(runs: list[tuple[Path, RunResults]]) -> list[str]:
    """One line per sharded run whose shards are not all here (or disagree on N). Shards belong to one run when target,
    stack and every other selection option agree; pytest-xdist workers of one shard write several files of one shard."""
    sets: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    names: dict[str, str] = {}
    for _, run in runs:
        shard = str(run.selection.get("shard") or "")
        index, sep, count = shard.partition("/")
        if not sep or not index.isdigit() or not count.isdigit():
            continue
        rest = {k: v for k, v in run.selection.items() if k not in SHARD_KEYS}
        key = json.dumps([run.target, environment_label(run), rest], sort_keys=True, default=str)
        sets[key][int(count)].add(int(index))
        options = ", ".join(f"{k} {v}" for k, v in sorted(rest.items()) if v not in (None, "", []))
        names[key] = f"{environment_label(run)} ({options or 'default selection'})"
    warnings = []
    for key, by_count in sorted(sets.items()):
        if len(by_count) > 1:
            warnings.append(f"shards of {names[key]} cut into different counts ({', '.join(str(n) for n in sorted(by_count))}): "
                            "they do not partition one run")
        for count, seen in sorted(by_count.items()):
            missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in seen]
            if missing:
                warnings.append(f"shard {', '.join(missing)} of {names[key]} missing: its verdicts are not in this report")
    return warnings
