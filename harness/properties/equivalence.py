"""P1 manual ≡ automatic, P2 backend ≡ oracle (DESIGN §4)."""
from __future__ import annotations

from dataclasses import replace

from ..compare import Deviation
from ..scenario import Scenario
from .base import SUBJECT, Evidence, Need, Property, register, subject
from .checks import oracle_deviations, same_run, two_run_tolerance
from .faults import (
    declared,
    lr_late,
    micro_batch_doubled,
    micro_batch_dropped,
    rank_perturbed,
    rounded_differently,
    step_moved,
    tensor_zeroed,
    window_scaled,
)

BASELINE = "baseline"


def _program_twin_matches(scenario: Scenario) -> bool:
    """A generated program whose explicit calls only restate the schedule: its untouched twin has the same steps,
    clipping, lr-scheduler steps and reductions under the model, on the installed stack."""
    from ..programs.model import BACKEND_FACTS, InvalidProgram, expect
    from ..stack import accelerate_forwards_boundary

    if not scenario.program.uses_new_api or scenario.backend not in BACKEND_FACTS:
        return False
    facts = replace(BACKEND_FACTS[scenario.backend], accelerate_forwards_boundary=accelerate_forwards_boundary())
    twin = scenario.untouched_twin()
    try:
        mine, theirs = (expect(s.program, facts, s.configured_g, s.clip) for s in (scenario, twin))
    except InvalidProgram:
        return False
    plan = lambda e: [(m.steps, m.clip, m.scheduler_steps, m.reduces) for m in e.micro_batches]  # noqa: E731
    return plan(mine) == plan(theirs) and mine.error is None and theirs.error is None


def _p1_applies(scenario: Scenario, target: str) -> bool:
    """Any style but accumulate() itself, on windows accumulate() finds on its own (uniform, or a DataLoader that
    ends mid-window), where the style means the same windows (legacy follows the installed accelerate instead) and
    the same lr schedule (the raw engine loop never steps accelerate's scheduler), and where accumulate()'s run can be
    made here (not a scenario measured not to be runnable)."""
    if scenario.api == "program":
        return _program_twin_matches(scenario)
    return (scenario.api not in ("auto", "legacy", "program", "trainer") and scenario.accumulate_finds_boundaries
            and scenario.loss_norm == "mean" and not (scenario.api == "ds_native" and scenario.lr_schedule != "const")
            and scenario.with_api("auto").not_runnable is None)


def _p1_needs(scenario: Scenario) -> list[Need]:
    baseline = scenario.untouched_twin() if scenario.api == "program" else scenario.with_api("auto")
    return subject(scenario) + [Need(BASELINE, baseline)]


def _p1_judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    """Bit-identical to accumulate()'s run, unless the two reduce across ranks on different micro-batches (DDP with
    the keyword alone: the keyword arrives at backward, after DDP decided at forward to all-reduce; a sum of means,
    not a mean of sums): then the same mathematics in another rounding order. The per-micro-batch gradients are the
    same bytes in both runs and DDP sums fp32 gradients (bf16 autocast included), so the two runs may differ by
    fp32's round-off of those sums: the error analysis's bound, twice (``two_run_tolerance``)."""
    traces, base = evidence.traces(SUBJECT), evidence.traces(BASELINE)
    tolerance = None if _same_reductions(evidence) else two_run_tolerance(scenario, evidence.local(SUBJECT), "fp32")
    label = "its untouched twin" if scenario.api == "program" else "accumulate()"
    return same_run(scenario, P1.name, traces, base, f"{label} ({evidence.needs[BASELINE].scenario.id})",
                    tolerance=tolerance, same_code=False)


def _same_reductions(evidence: Evidence) -> bool:
    mine, theirs = evidence.expectation(SUBJECT), evidence.expectation(BASELINE)
    return [m.reduces for m in mine.micro_batches] == [m.reduces for m in theirs.micro_batches]


def _p1_faults(scenario: Scenario, evidence: Evidence) -> list:
    """A step's worth of difference from accumulate()'s run; bit for bit, also one ulp."""
    kinds = (micro_batch_dropped, step_moved, rank_perturbed) + ((rounded_differently,) if _same_reductions(evidence)
                                                                   else ())
    return declared(scenario, evidence, kinds)


P1 = register(Property(
    "P1", "manual≡automatic",
    "manual ≡ automatic on the same backend and uniform schedule (and a generated program ≡ its untouched twin where "
    "its explicit calls only restate the schedule): bit-identical losses, grads, params",
    _p1_applies, _p1_needs, _p1_judge, faults=_p1_faults))


def free_running_applies(scenario: Scenario) -> bool:
    """Where the perfect float64 trajectory is a fair measure too: SGD in fp32 (AdamW divides each element by its
    own history, bf16 rounds every step: there only the teacher-forced comparison is fair)."""
    return scenario.optimizer == "sgd" and scenario.precision == "fp32"


def oracle_judge(prop: Property):
    def judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
        traces = evidence.traces()
        expectation = evidence.expectation()
        free = evidence.oracle() if free_running_applies(scenario) else None
        return oracle_deviations(scenario, prop.name, traces, evidence.local(), expectation, free)
    return judge


# What an oracle comparison exists to see (DESIGN §4, §7 "Sensitivity").
ORACLE_FAULTS = (tensor_zeroed, micro_batch_dropped, micro_batch_doubled, window_scaled, step_moved, lr_late,
                 rank_perturbed)


def oracle_faults(scenario: Scenario, evidence: Evidence) -> list:
    return declared(scenario, evidence, ORACLE_FAULTS)


def _p2_applies(scenario: Scenario, target: str) -> bool:
    return scenario.api != "program" and scenario.is_uniform


P2 = register(Property(
    "P2", "backend≡oracle",
    "backend ≡ oracle: losses, pre-clip gradients and every step as the float64 oracle says (within F·u·Σ|terms| per "
    "element, harness/tolerances.py), every rank holding the same bytes",
    _p2_applies, subject, lambda s, e: oracle_judge(P2)(s, e), faults=oracle_faults))
