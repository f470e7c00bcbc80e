"""P4 forced boundaries: steps, what sync_gradients reports, the engine's step count and the lr schedule follow
the model of DESIGN §3; P5 dynamic schedules (and generated programs) match the oracle."""
from __future__ import annotations

from ..compare import Deviation, compare_scalar
from ..models import parts_of
from ..scenario import Scenario
from .base import Evidence, Property, register, subject
from .checks import lengths, not_recorded, step_label
from .equivalence import oracle_faults, oracle_judge
from .faults import declared, engine_global_steps_off, lr_late, step_moved, sync_report_flipped

LR_RTOL = 1e-6


def _p4_judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    traces = evidence.traces()
    expectation = evidence.expectation()
    local = evidence.local()
    want_at = expectation.step_points
    want_sync = [mb.sync_gradients for mb in expectation.micro_batches]
    name = P4.name
    found: list[Deviation] = []
    for trace in traces:
        rank = f"rank {trace.rank}"
        got_at = [step.micro_step for step in trace.steps]
        if got_at != want_at:
            found.append(Deviation(scenario.id, name, rank, "optimizer steps",
                                   f"stepped during micro-batches {got_at}, want {want_at} "
                                   f"({len(got_at)} vs {len(want_at)} steps)"))
        # §3 "Each optimizer steps once per boundary": with two models, both optimizers at every step.
        every = tuple(range(len(parts_of(scenario.model))))
        for k, step in enumerate(trace.steps):
            if tuple(sorted(step.optimizers)) != every:
                found.append(Deviation(scenario.id, name, f"{rank} · {step_label(k, len(want_at))} (micro-batch "
                                       f"{step.micro_step})", "optimizers stepped",
                                       f"optimizers {[i + 1 for i in step.optimizers]} stepped, want each of "
                                       f"{[i + 1 for i in every]} once"))
                break
        found += lengths(scenario, name, rank, "accelerator.sync_gradients reports", len(trace.sync_gradients),
                         len(want_sync))
        for index, (got, want) in enumerate(zip(trace.sync_gradients, want_sync)):
            if got != want:
                found.append(Deviation(scenario.id, name, f"{rank} · micro-batch {index}", "accelerator.sync_gradients",
                                       f"got {got}, want {want}"))
                break
        found += _queries(scenario, name, rank, trace, expectation)
        if expectation.engine_global_steps is not None:
            if trace.engine_global_steps is None:
                found.append(not_recorded(scenario, name, rank, "engine.global_steps"))
            elif trace.engine_global_steps != expectation.engine_global_steps:
                found.append(Deviation(scenario.id, name, rank, "engine.global_steps",
                                       f"got {trace.engine_global_steps}, want {expectation.engine_global_steps} "
                                       "(one per step)"))
        for k, (step, want) in enumerate(zip(trace.steps, local.steps)):
            where = f"{rank} · {step_label(k, len(want_at))}"
            if step.lr is None:
                found.append(not_recorded(scenario, name, where, "learning rate"))
            else:
                found += compare_scalar(step.lr, want.lr, scenario=scenario.id, prop=name, where=where,
                                        label="lr used by the step", rtol=LR_RTOL, atol=0.0)
    return found


def _queries(scenario: Scenario, name: str, rank: str, trace, expectation) -> list[Deviation]:
    """What user code read before a forward (§3: sync_gradients reports the resolved boundary of the most recent
    backward until the next accumulate() entry or backward; on DeepSpeed the override reaches the engine before the
    forward). A query the program made and the trace lacks is a deviation; a value the model does not judge (None) is
    skipped by name, not silently."""
    found = []
    for index, mb in enumerate(expectation.micro_batches):
        if mb.query is None:
            continue
        where = f"{rank} · micro-batch {index} (before the forward)"
        if index not in trace.queries:
            found.append(not_recorded(scenario, name, where, "the query"))
            continue
        got = trace.queries[index]
        for label, seen, want in (("accelerator.sync_gradients", got[0], mb.query[0]),
                                  ("engine.is_gradient_accumulation_boundary()", got[1], mb.query[1])):
            if want is not None and seen != want:
                found.append(Deviation(scenario.id, name, where, label, f"got {seen}, want {want}"))
    return found


P4 = register(Property(
    "P4", "boundaries",
    "forced boundaries: True steps now, False holds the step; step counts and lr schedule follow",
    lambda s, t: True, subject, _p4_judge,
    faults=lambda s, e: declared(s, e, (step_moved, lr_late, sync_report_flipped, engine_global_steps_off))))


def _p5_applies(scenario: Scenario, target: str) -> bool:
    return scenario.api == "program" or not scenario.is_uniform


P5 = register(Property(
    "P5", "dynamic schedule≡oracle",
    "dynamic schedules (windows of any length, forced early/late boundaries, generated programs) match the oracle",
    _p5_applies, subject, lambda s, e: oracle_judge(P5)(s, e), faults=oracle_faults))
