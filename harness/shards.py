"""``--shard K/N``: which part of a run one machine does. The scenarios of a profile are cut into N shards, a stable
partition balanced by recorded durations (pytest-split's idea), so that a vendor's existing CI machines run the full
profile side by side and ``accumgate report`` / ``accumgate gate`` judge the shards' results as one run.

The unit is the scenario, never the (scenario, property) test item: a scenario's properties share its runs, and a
batch split shares its reference run with its group, so a group stays on one shard (splitting it would run the same
jobs on several machines). Data and arithmetic only: it runs nothing and imports neither torch nor accelerate.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from .scenario import Scenario

# The committed durations (benchmarks/shard_durations.py writes it from a measured run): package data, so that an
# installed accumgate balances its shards as a checkout does.
DURATIONS_FILE = Path(__file__).with_name("shard_durations.json")
DURATIONS_SCHEMA = "accumgate.durations"

Item = TypeVar("Item")


class ShardError(ValueError):
    """A ``--shard`` or ``--durations`` that names no usable partition; the message is one line for the user."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> Shard | None:
    """``"2/4"`` -> Shard(2, 4); None or empty -> None (the whole run)."""
    if not text:
        return None
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if not sep or shard is None or shard.count < 1 or not 1 <= shard.index <= shard.count:
        raise ShardError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 1/4")
    return shard


@dataclass
class Durations:
    """Measured seconds per scenario (its marginal cost in a warm world, world starts excluded) and per generated
    program on each backend. A scenario that was never measured is estimated from the measured ones most like it."""

    scenarios: dict[str, float] = field(default_factory=dict)
    programs: dict[str, float] = field(default_factory=dict)  # backend -> seconds per program
    axes: dict[str, dict[str, object]] = field(default_factory=dict)  # scenario id -> the axes that estimate others
    source: str = ""

    def __post_init__(self) -> None:
        self._means: dict[tuple, float] = {}
        groups: dict[tuple, list[float]] = {}
        for scenario_id, seconds in self.scenarios.items():
            axes = self.axes.get(scenario_id, {})
            for key in _estimate_keys(axes):
                groups.setdefault(key, []).append(seconds)
        self._means = {key: statistics.fmean(values) for key, values in groups.items()}

    def seconds(self, scenario: Scenario) -> float:
        """The recorded cost, else the mean of the recorded scenarios that share the most telling axes with it
        (backend, API style and model; then backend and model; then backend; then all)."""
        if scenario.id in self.scenarios:
            return self.scenarios[scenario.id]
        for key in _estimate_keys(_axes(scenario)):
            if key in self._means:
                return self._means[key]
        return 1.0  # nothing recorded at all: every scenario costs the same

    def program_seconds(self, backend: str) -> float:
        if backend in self.programs:
            return self.programs[backend]
        return statistics.fmean(self.programs.values()) if self.programs else 1.0

    def to_json(self) -> dict:
        return {"schema": DURATIONS_SCHEMA, "source": self.source,
                "programs": {b: round(s, 4) for b, s in sorted(self.programs.items())},
                "scenarios": {i: {"seconds": round(s, 4), **self.axes.get(i, {})} for i, s in sorted(self.scenarios.items())}}


def _axes(scenario: Scenario) -> dict[str, object]:
    return {"backend": scenario.backend, "api": scenario.api, "model": scenario.model, "world_size": scenario.world_size}


def _estimate_keys(axes: dict[str, object]) -> list[tuple]:
    backend, api, model = axes.get("backend"), axes.get("api"), axes.get("model")
    return [("api", backend, api, model), ("model", backend, model), ("backend", backend), ("all",)]


def durations_from(costs: dict[Scenario, float], programs: dict[str, float], source: str) -> Durations:
    """A durations record from measured costs (what benchmarks/shard_durations.py writes)."""
    return Durations(scenarios={s.id: c for s, c in costs.items()}, programs=dict(programs),
                     axes={s.id: _axes(s) for s in costs}, source=source)


def load_durations(path: str | Path | None = None) -> Durations:
    """The committed durations (``path`` None) or a vendor's own file of the same schema."""
    file = Path(path) if path else DURATIONS_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        if path is None:
            return Durations(source="none recorded: every scenario costs the same")
        raise ShardError(f"--durations {str(file)!r}: cannot read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ShardError(f"--durations {str(file)!r}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != DURATIONS_SCHEMA:
        raise ShardError(f"--durations {str(file)!r}: not an accumgate durations file (schema {DURATIONS_SCHEMA!r})")
    try:
        scenarios = {i: float(entry["seconds"]) for i, entry in data.get("scenarios", {}).items()}
        axes = {i: {k: v for k, v in entry.items() if k != "seconds"} for i, entry in data.get("scenarios", {}).items()}
        programs = {b: float(s) for b, s in data.get("programs", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ShardError(f"--durations {str(file)!r}: malformed entry ({exc})") from exc
    return Durations(scenarios=scenarios, programs=programs, axes=axes, source=str(data.get("source", "")))


def unit_of(scenario: Scenario) -> str:
    """What stays together on one shard: a batch split with its group's reference (the run P10 compares it with)."""
    reference = scenario.split_reference
    return (reference or scenario).id


def balance(costs: dict[str, float], count: int) -> dict[str, int]:
    """Unit -> shard index (1-based): longest first onto the least loaded shard, ties by unit name then by the lower
    shard. Deterministic: the same units and costs give the same partition on every machine."""
    loads = [0.0] * count
    placed: dict[str, int] = {}
    for unit in sorted(costs, key=lambda u: (-costs[u], u)):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        loads[lightest] += costs[unit]
        placed[unit] = lightest + 1
    return placed


def partition(scenarios: Sequence[Scenario], count: int, durations: Durations) -> list[list[Scenario]]:
    """The N shards of ``scenarios``, each in the selection's own order; together they are exactly the selection."""
    costs: dict[str, float] = {}
    for scenario in scenarios:
        unit = unit_of(scenario)
        costs[unit] = costs.get(unit, 0.0) + durations.seconds(scenario)
    placed = balance(costs, count)
    shards: list[list[Scenario]] = [[] for _ in range(count)]
    for scenario in scenarios:
        shards[placed[unit_of(scenario)] - 1].append(scenario)
    return shards


def select_shard(scenarios: Sequence[Scenario], shard: Shard | None, durations: Durations | None = None) -> list[Scenario]:
    """The scenarios of one shard (all of them when ``shard`` is None)."""
    if shard is None:
        return list(scenarios)
    return partition(scenarios, shard.count, durations or load_durations())[shard.index - 1]


def shard_backends(backends: Iterable[str], shard: Shard | None, durations: Durations | None = None) -> list[str]:
    """``explore --shard K/N``: the backends this shard explores (each backend's programs stay on one machine, where
    its Hypothesis database and corpus are), balanced by the measured seconds per program. More machines than backends
    explore more seeds instead (``--seed``), which is a different exploration, not a shard of this one."""
    backends = list(backends)
    if shard is None:
        return backends
    if shard.count > len(backends):
        raise ShardError(f"--shard {shard}: {len(backends)} backend(s) to explore cannot fill {shard.count} shards; "
                         "give the other machines another --seed")
    durations = durations or load_durations()
    placed = balance({b: durations.program_seconds(b) for b in backends}, shard.count)
    return [b for b in backends if placed[b] == shard.index]


def loads(shards: Sequence[Sequence[Scenario]], durations: Durations) -> list[float]:
    """The predicted seconds of each shard (what the balance of a partition is judged by)."""
    return [sum(durations.seconds(s) for s in shard) for shard in shards]
