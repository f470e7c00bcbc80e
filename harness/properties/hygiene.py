"""P8 hygiene: nothing of one window leaks into the next (the gradients a program leaves behind are exactly what
the model says: none after a step), the engine's counters are what the program implies; P8-leak: nothing of one
scenario (a boundary override left set) leaks into the next one run in the same processes."""
from __future__ import annotations

from .. import tolerances
from ..compare import Deviation, compare_scalar, compare_tensors
from ..scenario import Scenario
from .base import SUBJECT, Evidence, Need, NotDecided, Property, register, subject
from .checks import not_recorded, oracle_deviations, same_run
from .faults import (
    declared,
    engine_micro_steps_off,
    gradients_left,
    leaving_run_errored,
    micro_batch_doubled,
    micro_batch_dropped,
    step_moved,
)


def _p8_judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    """The gradients left after the program are read in full (at ZeRO 1-3 through one more, unstepped boundary
    micro-batch on the raw engine, the only moment DeepSpeed lets them be read) and compared with the float64
    leftover at the run's final weights: zero after a step, the window's own gradients where it ended mid-window."""
    traces = evidence.traces()
    expectation = evidence.expectation()
    local = evidence.local()
    name = P8.name
    found: list[Deviation] = []
    for trace in traces:
        rank = f"rank {trace.rank}"
        where = f"{rank} · after the program" + (
            f" (+ micro-batch {trace.leftover_probe} at a boundary, unstepped)" if trace.leftover_probe is not None else "")
        if trace.leftover_grads is None:
            found.append(not_recorded(scenario, name, where, "the gradients left behind"))
        elif not local.leftover:
            found.append(not_recorded(scenario, name, where, "the steps the leftover follows (fewer steps than expected)"))
        else:
            found += compare_tensors(trace.leftover_grads, local.leftover[trace.rank], scenario=scenario.id, prop=name,
                                     where=where, label="leftover grad",
                                     bounds=tolerances.gradient_bounds(scenario.precision, local.leftover_terms[trace.rank]),
                                     bound_text=tolerances.gradient_text(scenario.precision))
        if expectation.engine_micro_steps is not None:
            found += compare_scalar(trace.engine_micro_steps, expectation.engine_micro_steps, scenario=scenario.id,
                                    prop=name, where=rank, label="engine.micro_steps (engine.step() calls)")
    return found


P8 = register(Property(
    "P8", "hygiene",
    "hygiene: no gradient left to leak into the next window (read in full, ZeRO 1-3 included), the engine's counters "
    "as the program implies",
    lambda s, t: True, subject, _p8_judge,
    faults=lambda s, e: declared(s, e, (gradients_left, engine_micro_steps_off))))

AFTER_OVERRIDE = "after_override"


def override_left_set(scenario: Scenario) -> Scenario:
    """A run that ends with set_deepspeed_gradient_accumulation_boundary(True) still set, as user code does."""
    return Scenario(scenario.backend, "set_boundary", "forced4264", world_size=scenario.world_size)


def _leak_applies(scenario: Scenario, target: str) -> bool:
    return (scenario.api == "auto" and scenario.schedule == "uni4" and scenario.model == "mlp"
            and scenario.optimizer == "sgd" and scenario.precision == "fp32" and scenario.lr_schedule == "const"
            and scenario.micro_batch_size == 2 and scenario.clip == 1.0)


def _leak_needs(scenario: Scenario) -> list[Need]:
    return subject(scenario) + [Need(AFTER_OVERRIDE, scenario, after=override_left_set(scenario))]


def _leaving_run_decides(scenario: Scenario, evidence: Evidence) -> None:
    """The run that leaves the override set is part of the test: if it erred (the world restarted, so the follow-up ran
    in clean processes) or trained wrong, the follow-up proves nothing, and the verdict is that run's error."""
    first = evidence.needs[AFTER_OVERRIDE].after
    leaving = evidence.before(AFTER_OVERRIDE)
    if not leaving.ok:
        detail = leaving.reason or next(iter(leaving.errors.values()), "no report").strip().splitlines()[-1]
        # A target without the override API cannot leave one set: nothing to test, and not a pass either.
        outcome = "unsupported" if leaving.status == "unsupported" else "error"
        raise NotDecided(outcome, f"the run that leaves the override set ({first.id}) {leaving.status}: {detail}",
                         leaving.errors)
    wrong = oracle_deviations(first, P8_LEAK.name, leaving.traces, evidence.local_of(first, leaving.traces),
                              evidence.expectation_of(first, leaving.traces), None)
    if wrong:
        raise NotDecided("error", f"the run that leaves the override set ({first.id}) trains wrong, so what follows it "
                         f"proves nothing: {wrong[0].message()}")


def _leak_judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    after = evidence.traces(AFTER_OVERRIDE)
    first = evidence.needs[AFTER_OVERRIDE].after
    _leaving_run_decides(scenario, evidence)
    name = P8_LEAK.name
    found = same_run(scenario, name, after, evidence.traces(SUBJECT), f"its own run (this one followed {first.id})")
    return found + oracle_deviations(scenario, name, after, evidence.local(AFTER_OVERRIDE),
                                     evidence.expectation(AFTER_OVERRIDE), None)


def _leak_faults(scenario: Scenario, evidence: Evidence) -> list:
    return declared(scenario, evidence, (micro_batch_dropped, micro_batch_doubled, step_moved, leaving_run_errored),
                    role=AFTER_OVERRIDE)


P8_LEAK = register(Property(
    "P8-leak", "no override leaking",
    "no boundary override leaking into the next scenario or process group: a scenario run after one that left "
    "set_deepspeed_gradient_accumulation_boundary(True) set gives its own bytes and the oracle's numbers",
    _leak_applies, _leak_needs, _leak_judge, faults=_leak_faults))
