"""Self-proving verdicts without a world: a run made perfect from the float64 oracle itself (what a conforming target
would record, rounded to float32) is judged by the runner; each pass re-judges it with the synthetic faults of its
property's kind and must catch them; a property that would pass whatever the run did is ``error`` ("vacuous: …");
the margin of a pass is at most 1 and located by step."""
from __future__ import annotations

import dataclasses
import functools

import pytest

from harness import oracle, stack
from harness.compare import Deviation
from harness.programs.model import Facts, expect
from harness.properties import REGISTRY, Property
from harness.properties.faults import declared, micro_batch_dropped, tensor_zeroed
from harness.runner import Runner, _RunKey
from harness.scenario import Scenario
from harness.trace import StepRecord, Trace
from harness.world import JobResult


@functools.lru_cache(maxsize=None)
def perfect_run(scenario: Scenario) -> JobResult:
    """Every rank's trace as the oracle computes it (float32 copies), as a conforming target records it."""
    facts = stack.facts(scenario.backend, scenario.world_size)
    expectation = expect(scenario.program, Facts(**facts), scenario.configured_g, scenario.clip,
                         scheduler=scenario.lr_schedule != "const")
    free = oracle.expected(scenario, expectation)
    f32 = lambda tensors: {n: t.float() for n, t in tensors.items()}  # noqa: E731
    traces = []
    for rank in range(scenario.world_size):
        trace = Trace(rank=rank, losses=list(free.losses[rank]), facts=facts,
                      sync_gradients=[mb.sync_gradients for mb in expectation.micro_batches],
                      leftover_grads=f32(free.leftover[rank]), final_params=f32(free.final_params))
        for step in free.steps:
            trace.steps.append(StepRecord(step.micro_step, f32(step.params), f32(step.grads), step.lr))
            if scenario.clip is not None:
                trace.clip_returned[step.micro_step] = step.pre_clip_norm
        traces.append(trace)
    return JobResult("ok", traces)


class NoPool:
    def run(self, *args, **kwargs):
        raise AssertionError("no job may run: the runs are given")


def runner_with(scenario: Scenario, result: JobResult) -> Runner:
    runner = Runner("reference", pool=NoPool())
    runner._jobs[_RunKey(scenario, "reference", None, None)] = result
    return runner


SCENARIOS = [Scenario("single", "kwarg", "uni4", optimizer="adamw", lr_schedule="warmup", world_size=1),
             Scenario("single", "kwarg", "dyn3142", world_size=1)]


JUDGED = [(s, code) for s in SCENARIOS for code in ("P2", "P4", "P5", "P6", "P8") if REGISTRY[code].applies(s, "reference")]


@pytest.mark.parametrize(("scenario", "code"), JUDGED, ids=[f"{s.id}-{c}" for s, c in JUDGED])
def test_a_perfect_run_passes_and_proves_every_fault_of_its_kind(scenario: Scenario, code: str) -> None:
    verdict = runner_with(scenario, perfect_run(scenario)).verdict(scenario, code)
    assert verdict.outcome == "pass", verdict.first_line()
    assert verdict.faults and verdict.proven == verdict.faults, sorted(set(verdict.faults) - set(verdict.proven))
    if verdict.margin is not None:
        assert 0.0 <= verdict.margin <= 1.0
        assert all(isinstance(where, str) and 0.0 <= m <= 1.0 for where, m in verdict.margins)


def test_the_oracle_comparison_names_a_fault_for_each_tensor_and_each_kind() -> None:
    scenario = SCENARIOS[1]
    runner = runner_with(scenario, perfect_run(scenario))
    verdict = runner.verdict(scenario, "P5")
    zeroed = [f for f in verdict.faults if "zeroed" in f]
    assert len(zeroed) == 4  # every tensor (GPT-2's 16: tests/test_sensitivity.py)
    assert any(f.startswith("micro-batch") and "dropped" in f for f in verdict.faults)
    assert any(f.startswith("step 1 moved") for f in verdict.faults)


def test_a_pass_that_catches_none_of_its_faults_is_an_error() -> None:
    scenario = SCENARIOS[0]
    blind = Property("P2", "backend≡oracle", "sees nothing", lambda s, t: True, REGISTRY["P2"].needs,
                     lambda s, e: [], faults=lambda s, e: declared(s, e, (tensor_zeroed, micro_batch_dropped)))
    verdict = runner_with(scenario, perfect_run(scenario))._decide(scenario, blind)
    assert verdict.outcome == "error" and verdict.reason.startswith("vacuous: none of 5 synthetic faults caught")
    assert verdict.proven == [] and len(verdict.faults) == 5


def test_a_fault_the_judge_cannot_digest_is_said_not_passed() -> None:
    scenario = SCENARIOS[0]

    def judge(s, e):
        if e.traces()[0].steps[0].grads["fc1.bias"].abs().sum() == 0:
            raise KeyError("surprise")
        return []

    prop = Property("P2", "backend≡oracle", "", lambda s, t: True, REGISTRY["P2"].needs, judge,
                    faults=lambda s, e: declared(s, e, (tensor_zeroed,)))
    verdict = runner_with(scenario, perfect_run(scenario))._decide(scenario, prop)
    assert verdict.outcome == "error" and "self-proof: re-judging" in verdict.reason


def test_a_failing_verdict_is_not_re_judged_and_keeps_its_margin() -> None:
    scenario = SCENARIOS[0]
    run = perfect_run(scenario)
    bad = dataclasses.replace(run.traces[0], losses=[x * 1.01 for x in run.traces[0].losses])
    verdict = runner_with(scenario, JobResult("ok", [bad])).verdict(scenario, "P2")
    assert verdict.outcome == "fail" and verdict.faults == [] and verdict.margin > 1.0
    assert isinstance(Deviation(scenario.id, "P2", "w", "loss", "d"), Deviation)  # constructor-compatible
