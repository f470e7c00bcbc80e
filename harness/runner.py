"""Scenarios in, one verdict per (scenario, property) out: worlds + model + oracle + the property registry + xfails.
The CLI, the pytest plugin and the explorer only ask this; none of them orchestrates anything itself.

Every run a property needs (the scenario, its accumulate() baseline, upstream, a split, a probe, a follow-up) runs
once and is cached; so are the model's expectations and the oracles (the free-running one is shared by every API
style with the same steps).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

from . import metrics, oracle
from .compare import Deviation, DeviationSeen, first_deviation_stops, ledger
from .models import parts_of
from .programs.model import Expectation, Facts, InvalidProgram, expect
from .properties import CODES, REGISTRY, SUBJECT, Evidence, Need, NotDecided, Property, applicable
from .properties.batch_split import SPLIT_REFERENCE, split_compared, split_loss_drift
from .properties.communication import applies as communication_applies
from .results import SEVERITY, Outcome, RunResults, Verdict, environment, worst
from .scenario import Scenario
from .world import JobResult, World
from .xfails import Xfail, judge, signature

MAX_DEVIATIONS_KEPT = 8


def _key(deviation: Deviation) -> str:
    """A deviation's key in a verdict's signature (``param@2``)."""
    return next(iter(signature([(deviation.tensor, deviation.where)])))


def _finite(margin: float | None) -> float | None:
    """results.json stays strict JSON: a margin no tolerance could hold (a missing tensor) is written as 1e308."""
    return None if margin is None else (margin if math.isfinite(margin) else 1e308)


class WorldPool:
    """One warm world per world size, started on first use. A world-size-1 scenario without DeepSpeed runs
    on rank 0 of the 2-rank world (warm-world.md); a 1-rank DeepSpeed engine gets a world of its own."""

    def __init__(self, job_timeout_s: float = 120.0) -> None:
        self.job_timeout_s = job_timeout_s
        self.worlds: dict[int, World] = {}

    def world_for(self, scenario: Scenario) -> World:
        size = 2 if (scenario.world_size == 1 and not scenario.is_deepspeed) else scenario.world_size
        if size not in self.worlds:
            self.worlds[size] = World(world_size=size, job_timeout_s=self.job_timeout_s)
        return self.worlds[size]

    def start_seconds(self) -> float:
        return sum(world.start_seconds for world in self.worlds.values())

    def run(self, scenario: Scenario, target: str, **options: object) -> JobResult:
        return self.world_for(scenario).run(scenario, target, **options)

    def close(self) -> list[str]:
        warnings = []
        for size, world in self.worlds.items():
            warnings += [f"world of {size}: {w}" for w in world.close()]
        self.worlds.clear()
        return warnings


@dataclass(frozen=True)
class _RunKey:
    scenario: Scenario
    target: str
    probe: str | None
    after: Scenario | None


class Runner:
    """Runs what the properties need on one target and returns their verdicts; caches every job and expectation."""

    def __init__(self, target: str, xfails: Sequence[Xfail] = (), pool: WorldPool | None = None,
                 job_timeout_s: float = 120.0, count_collectives: bool = True, run_not_runnable: bool = False) -> None:
        self.target = target
        # The known-bug replay runs scenarios measured not to be runnable, to show the bug is still there.
        self.run_not_runnable = run_not_runnable
        self.xfails = list(xfails)
        self.pool = pool or WorldPool(job_timeout_s)
        self.count_collectives = count_collectives
        self._jobs: dict[_RunKey, JobResult] = {}
        self._before: dict[_RunKey, JobResult] = {}  # a follow-up's key -> the run made right before it
        self._expectations: dict[tuple, Expectation] = {}
        self._free: dict[tuple, oracle.OracleTrace] = {}
        self._local: dict[tuple, oracle.OracleTrace] = {}
        self._verdicts: dict[tuple[Scenario, str], Verdict] = {}
        self._seconds: dict[Scenario, float] = {}
        # Where the runner's time goes (benchmarks read it): jobs by role kind, the model, both oracles, judging.
        self.timings: dict[str, float] = {}

    def _timed(self, what: str, started: float) -> None:
        self.timings[what] = self.timings.get(what, 0.0) + time.perf_counter() - started

    def _computing(self) -> float:
        """Seconds spent so far in the model and the oracles (what a self-proof may trigger but is not its cost)."""
        return sum(v for k, v in self.timings.items() if k == "model" or k.startswith("oracle"))

    # -- runs -----------------------------------------------------------------------------------------------
    def job(self, need: Need) -> JobResult:
        key = _RunKey(need.scenario, need.target or self.target, need.probe, need.after)
        refusal = None if self.run_not_runnable else need.scenario.not_runnable
        if refusal and key not in self._jobs:  # refused up front with its measurement, no job spent on it
            self._jobs[key] = JobResult("error", reason=refusal)
        if key not in self._jobs:
            started = time.perf_counter()
            # Counting collectives costs the profiler's time: only the subject run where P7 judges the counts (not
            # upstream's run, which P3 compares by its bytes).
            counting = (self.count_collectives and need.probe is None and need.after is None and key.target == self.target
                        and communication_applies(need.scenario))
            if need.after is not None:  # its own outcome is evidence too (P8-leak): kept, never discarded
                self._before[key] = self.pool.run(need.after, key.target)
            starts = getattr(self.pool, "start_seconds", lambda: 0.0)()
            # A probe is meant to make the target refuse by name: such a clean refusal need not cost a world.
            self._jobs[key] = self.pool.run(need.scenario, key.target, count_collectives=counting,
                                            **({"probe": need.probe, "recoverable": True} if need.probe else {}))
            self._seconds[need.scenario] = self._seconds.get(need.scenario, 0.0) + time.perf_counter() - started
            kind = "probe" if need.probe else "follow-up" if need.after else "upstream" if need.target else "run"
            started_worlds = getattr(self.pool, "start_seconds", lambda: 0.0)() - starts
            self.timings["world starts"] = self.timings.get("world starts", 0.0) + started_worlds
            self._timed(f"jobs ({kind}{', counting collectives' if counting else ''})", started + started_worlds)
        return self._jobs[key]

    # -- expectations ---------------------------------------------------------------------------------------
    def expectation(self, scenario: Scenario, facts: dict[str, Any]) -> Expectation:
        key = (scenario, tuple(sorted(facts.items())))
        if key not in self._expectations:
            started = time.perf_counter()
            self._expectations[key] = expect(scenario.program, Facts(**facts), scenario.configured_g, scenario.clip,
                                             scheduler=scenario.lr_schedule != "const",
                                             optimizers=len(parts_of(scenario.model)))
            self._timed("model", started)
        return self._expectations[key]

    def free_oracle(self, scenario: Scenario, expectation: Expectation) -> oracle.OracleTrace:
        """Depends on the data, the optimizer and the steps, not on the API style: shared across styles."""
        plan = tuple(mb.oracle_plan for mb in expectation.micro_batches)
        key = (scenario.model, scenario.seed, scenario.optimizer, scenario.world_size, scenario.micro_batch_size,
               scenario.loss_norm, scenario.windows if scenario.loss_norm == "tokens" else None,
               scenario.configured_g, scenario.lr_schedule, plan, expectation.error_at,
               scenario.generated.short_dataset if scenario.generated else False)  # whose data a micro-batch reads
        if key not in self._free:
            started = time.perf_counter()
            self._free[key] = oracle.expected(scenario, expectation)
            self._timed("oracle (free-running)", started)
        return self._free[key]

    def local_oracle(self, scenario: Scenario, expectation: Expectation, trace: Any) -> oracle.OracleTrace:
        key = (scenario, id(trace))
        if key not in self._local:
            started = time.perf_counter()
            self._local[key] = oracle.teacher_forced(scenario, expectation, trace, probe=trace.leftover_probe)
            self._timed("oracle (teacher-forced)", started)
        return self._local[key]

    # -- verdicts -------------------------------------------------------------------------------------------
    def evidence(self, scenario: Scenario, prop: Property) -> Evidence:
        needs = {need.role: need for need in prop.needs(scenario)}
        results = {role: self.job(need) for role, need in needs.items()}
        before = {role: self._before[key] for role, need in needs.items()
                  if (key := _RunKey(need.scenario, need.target or self.target, need.probe, need.after)) in self._before}
        return Evidence(scenario, needs, results, self.expectation, self.free_oracle, self.local_oracle, before)

    def verdict(self, scenario: Scenario, code: str) -> Verdict:
        key = (scenario, code)
        if key not in self._verdicts:
            self._verdicts[key] = self._decide(scenario, REGISTRY[code])
        return self._verdicts[key]

    def _decide(self, scenario: Scenario, prop: Property) -> Verdict:
        reason = None
        faults: list[str] = []
        proven: list[str] = []
        with ledger() as book:
            try:
                evidence = self.evidence(scenario, prop)
                found: list[Deviation] = prop.judge(scenario, evidence)
                raw = "fail" if found else "pass"
            except NotDecided as undecided:
                found, raw, reason = [], undecided.outcome, undecided.reason
            except InvalidProgram as invalid:
                found, raw, reason = [], "error", f"the harness built an invalid program: {invalid}"
        if raw == "pass":
            started, computed = time.perf_counter(), self._computing()
            faults, proven, reason = self._prove(scenario, prop, evidence)
            # An oracle first needed by a fault (a P1 verdict judges bytes, its faults need the oracle) is the oracle's.
            self._timed("self-proof", started + (self._computing() - computed))
            if reason is not None:
                raw = "error"
        # -- xfails: a line excuses its bug's signature (quantities, steps), nothing else of the verdict -----------
        shown = signature(((d.tensor, d.where) for d in found), raw)
        judged = judge(self.xfails, scenario.id, prop.code, raw, shown, reason)
        if judged.beyond:  # the known failure changed: show first what lies outside every line's signature
            inside = [any(line.excuses(prop.code, _key(d), reason) for line in judged.lines) for d in found]
            found = [d for d, known in zip(found, inside) if not known] + [d for d, known in zip(found, inside) if known]
        # -- end of xfails ------------------------------------------------------------------------------------------
        return Verdict(prop.code, prop.name, judged.outcome,
                       [{"prop": d.prop, "where": d.where, "tensor": d.tensor, "message": d.message()}
                        for d in found[:MAX_DEVIATIONS_KEPT]], len(found), reason, judged.known, raw, signature=shown,
                       margin=_finite(book.worst), margins=[[where, _finite(m)] for where, m in book.as_list()],
                       faults=faults, proven=proven, notes=list(book.notes))

    def _prove(self, scenario: Scenario, prop: Property, evidence: Evidence
               ) -> tuple[list[str], list[str], str | None]:
        """Every pass proves something (DESIGN §4): the property re-judges the recorded runs with each synthetic fault
        of its kind (``properties/faults.py``) and says which it caught. (faults, proven, why the pass is not one)."""
        try:
            declared = prop.faults(scenario, evidence)
        except NotDecided:
            declared = []
        except Exception as exc:  # the harness's bug: said, never a pass
            return [], [], f"self-proof: declaring the faults raised {type(exc).__name__}: {exc}"
        proven = []
        for fault in declared:
            try:
                with first_deviation_stops():
                    caught = bool(prop.judge(scenario, fault.evidence()))
            except (DeviationSeen, NotDecided):
                caught = True
            except Exception as exc:  # a fault the judge cannot digest is the harness's bug: said, never a pass
                return [f.name for f in declared], proven, (f"self-proof: re-judging {fault.name!r} raised "
                                                            f"{type(exc).__name__}: {exc}")
            if caught:
                proven.append(fault.name)
        names = [f.name for f in declared]
        if names and not proven:
            shown = "; ".join(names[:4]) + ("; …" if len(names) > 4 else "")
            return names, proven, f"vacuous: none of {len(names)} synthetic faults caught ({shown})"
        return names, proven, None

    def verdicts(self, scenario: Scenario) -> dict[str, Verdict]:
        return {prop.code: self.verdict(scenario, prop.code) for prop in applicable(scenario, self.target)}

    # -- outcomes -------------------------------------------------------------------------------------------
    def outcome(self, scenario: Scenario, codes: Iterable[str] | None = None) -> Outcome:
        """The scenario's verdicts (every applicable property, or those named) and what reports keep beside them."""
        started = time.perf_counter()
        wanted = [p.code for p in applicable(scenario, self.target)] if codes is None else list(codes)
        verdicts = {code: self.verdict(scenario, code) for code in wanted}
        out = Outcome(scenario=scenario.id, outcome=worst([v.outcome for v in verdicts.values()]),
                      axes={k: v for k, v in asdict(scenario).items() if k != "generated"}, properties=verdicts)
        if scenario.api == "program":
            out.program = scenario.program.code(scenario.clip, scenario.lr_schedule != "const")
        bad = [v for v in verdicts.values() if v.outcome != "pass"]
        if bad:
            out.reason = max(bad, key=lambda v: SEVERITY[v.outcome]).first_line()[:500]
        result = self.job(Need(SUBJECT, scenario))
        if result.status == "error":
            out.errors = {str(rank): text for rank, text in sorted(result.errors.items())}
        elif result.ok and not scenario.is_client:
            self._measure(scenario, result, out)
        out.seconds = self._seconds.get(scenario, 0.0) + (time.perf_counter() - started)
        return out

    def _measure(self, scenario: Scenario, result: JobResult, out: Outcome) -> None:
        try:
            expectation = self.expectation(scenario, result.traces[0].facts)
            out.metrics = metrics.oracle_errors(result.traces, self.local_oracle(scenario, expectation,
                                                                                 result.traces[0]))
            out.curves = metrics.curves(result.traces, self.free_oracle(scenario, expectation))
        except InvalidProgram:
            return
        if split_compared(scenario):
            reference = self.job(Need(SPLIT_REFERENCE, scenario.split_reference))
            if reference.ok:
                out.metrics["split_window_loss_drift"] = split_loss_drift(
                    scenario, result.traces, scenario.split_reference, reference.traces)
        out.warnings = sorted({w for trace in result.traces for w in trace.warnings})

    def outcomes(self) -> list[Outcome]:
        """Outcomes of every scenario judged so far, with the properties that were asked (the pytest plugin's
        report at session end)."""
        asked: dict[Scenario, list[str]] = {}
        for scenario, code in self._verdicts:
            asked.setdefault(scenario, []).append(code)
        order = {code: i for i, code in enumerate(CODES)}
        return [self.outcome(s, sorted(codes, key=order.get)) for s, codes in asked.items()]

    def run(self, scenarios: Iterable[Scenario], on_outcome: Callable[[Outcome], None] | None = None,
            selection: dict | None = None) -> RunResults:
        started = time.perf_counter()
        outcomes = []
        for scenario in scenarios:
            outcome = self.outcome(scenario)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        warnings = self.pool.close()
        return RunResults(target=self.target, outcomes=outcomes, environment=environment(self.target),
                          selection=selection or {}, wall_seconds=time.perf_counter() - started, warnings=warnings)
