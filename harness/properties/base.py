"""The property registry: each property says which scenarios it applies to, which runs it needs and how it judges
them; nothing else decides a verdict.

A property is data (``Property``) with three functions. ``needs`` names runs by role: the scenario itself, its
``accumulate()`` baseline, the same scenario on upstream accelerate, another batch split, a probe that changes the
stack, a follow-up run after another scenario. The runner runs each distinct run once and hands the results to
``judge`` as ``Evidence``. A run a property needs that did not succeed is never skipped: ``Evidence`` raises
``NotDecided`` and the verdict says which run and why.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..compare import Deviation
from ..scenario import Scenario

if TYPE_CHECKING:
    from ..oracle import OracleTrace
    from ..programs.model import Expectation
    from ..trace import Trace
    from ..world import JobResult
    from .faults import Fault

SUBJECT = "subject"


@dataclass(frozen=True)
class Need:
    """One run a property needs. ``target`` None is the runner's target; ``after`` runs right after that scenario
    in the same processes (a leak follow-up); ``probe`` changes the stack for the run (``job.PROBES``)."""

    role: str
    scenario: Scenario
    target: str | None = None
    probe: str | None = None
    after: Scenario | None = None


class NotDecided(Exception):
    """A run the property needs did not give evidence: ``outcome`` is ``error`` or ``unsupported``."""

    def __init__(self, outcome: str, reason: str, errors: dict[int, str] | None = None) -> None:
        super().__init__(reason)
        self.outcome, self.reason, self.errors = outcome, reason, errors or {}


class Evidence:
    """What a property judges: the runs it asked for, by role, and the expectations computed from them (the model of
    DESIGN §3 on the facts each run measured, and the float64 oracle), cached by the runner that built it."""

    def __init__(self, scenario: Scenario, needs: dict[str, Need], results: dict[str, "JobResult"],
                 expectations: Callable[[Scenario, dict[str, Any]], "Expectation"],
                 free_oracle: Callable[[Scenario, "Expectation"], "OracleTrace"],
                 local_oracle: Callable[[Scenario, "Expectation", "Trace"], "OracleTrace"],
                 before: dict[str, "JobResult"] | None = None) -> None:
        self.scenario = scenario
        self.needs = needs
        self.results = results
        self._expectations = expectations
        self._free = free_oracle
        self._local = local_oracle
        self._before = before or {}
        # A faulted copy's traces -> the recorded trace its oracle was computed from (``with_result``).
        self._recorded: dict[int, "Trace"] = {}

    def before(self, role: str) -> "JobResult":
        """The run made right before ``role``'s in the same processes (``Need.after``): its own outcome is evidence
        too (a leak follow-up after a run that crashed restarted the world and tests nothing)."""
        return self._before[role]

    def with_result(self, role: str, result: "JobResult", before: "JobResult | None" = None) -> "Evidence":
        """The same evidence with one run's result replaced by a synthetic fault's (``faults.py``): expectations and
        oracles stay those of the recorded runs (a fault edits what a run reported; nothing is run or recomputed)."""
        clone = copy.copy(self)
        clone.results = dict(self.results)
        clone._before = dict(self._before)
        clone._recorded = dict(self._recorded)
        original = self.results.get(role)
        if original is not None and original.traces and result.traces:
            clone._recorded[id(result.traces[0])] = self._recorded.get(id(original.traces[0]), original.traces[0])
        clone.results[role] = result
        if before is not None:
            clone._before[role] = before
        return clone

    def result(self, role: str = SUBJECT) -> "JobResult":
        return self.results[role]

    def traces(self, role: str = SUBJECT) -> list["Trace"]:
        """The traces of a run that must have succeeded; otherwise the verdict cannot be decided (never skipped)."""
        result = self.results[role]
        if result.ok:
            return result.traces
        need = self.needs[role]
        if role == SUBJECT:
            raise NotDecided(result.status, result.reason or _last_line(result.errors), result.errors)
        what = f"{role} run {need.scenario.id}" + (f" on target {need.target}" if need.target else "") + (
            f" (probe {need.probe})" if need.probe else "")
        detail = result.reason or _last_line(result.errors)
        raise NotDecided("error", f"needed {what}: {result.status}: {detail}", result.errors)

    def expect(self, scenario: Scenario, facts: Any) -> "Expectation":
        """The model's expectation on other facts than a run measured (a probe that could not run to the end)."""
        return self._expectations(scenario, vars(facts) if not isinstance(facts, dict) else facts)

    def expectation(self, role: str = SUBJECT) -> "Expectation":
        traces = self.traces(role)
        return self._expectations(self.needs[role].scenario, traces[0].facts)

    def oracle(self, role: str = SUBJECT) -> "OracleTrace":
        """Free-running float64 expectation (shared across API styles with the same steps)."""
        return self._free(self.needs[role].scenario, self.expectation(role))

    def local(self, role: str = SUBJECT) -> "OracleTrace":
        """Teacher-forced float64 expectation from where this run stood at each step (rank 0's weights)."""
        return self.local_of(self.needs[role].scenario, self.traces(role))

    def expectation_of(self, scenario: Scenario, traces: list["Trace"]) -> "Expectation":
        """The model's expectation for a run that is no role of this evidence (the run before a follow-up)."""
        return self._expectations(scenario, traces[0].facts)

    def local_of(self, scenario: Scenario, traces: list["Trace"]) -> "OracleTrace":
        first = self._recorded.get(id(traces[0]), traces[0])
        return self._local(scenario, self._expectations(scenario, first.facts), first)


def _last_line(errors: dict[int, str]) -> str:
    for text in errors.values():
        lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("---")]
        traceback_end = [line for line in lines if not line.startswith(" ")]
        if traceback_end:
            return next((line for line in reversed(traceback_end) if "Error" in line or "Exception" in line),
                        traceback_end[-1])[:300]
    return "no report"


@dataclass(frozen=True)
class Property:
    code: str  # "P2": what xfails lines, gates and reports key on
    title: str  # "backend≡oracle"
    sentence: str  # the property as DESIGN §4 says it
    applies: Callable[[Scenario, str], bool]  # (scenario, target)
    needs: Callable[[Scenario], list[Need]]
    judge: Callable[[Scenario, Evidence], list[Deviation]]
    count_collectives: bool = field(default=False)  # the subject run must count its collectives
    clients: bool = field(default=False)  # also judges client programs (harness.clients), not only programs
    # The synthetic faults of the kind the property exists for, made from the recorded runs of a pass (faults.py):
    # a pass that catches none of them is not a pass (DESIGN §4 "Every pass proves something").
    faults: Callable[[Scenario, Evidence], list["Fault"]] = field(default=lambda s, e: [])

    @property
    def name(self) -> str:
        return f"{self.code} {self.title}"


REGISTRY: dict[str, Property] = {}


def register(prop: Property) -> Property:
    if prop.code in REGISTRY:
        raise ValueError(f"property {prop.code} registered twice")
    REGISTRY[prop.code] = prop
    return prop


def subject(scenario: Scenario) -> list[Need]:
    return [Need(SUBJECT, scenario)]
