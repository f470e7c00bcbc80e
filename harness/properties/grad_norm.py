"""P6 grad norm: what optimizer_step_and_zero_grad returns and what the engine reports are the oracle's pre-clip
norm; None / -1.0 exactly as DESIGN §3 says; clipping applied once (the step itself is P2/P5's)."""
from __future__ import annotations

from ..compare import Deviation, compare_scalar
from ..scenario import Scenario
from .base import Evidence, Property, register, subject
from .checks import gradient_tolerance, lengths, not_recorded, step_label

RETURNED = "optimizer_step_and_zero_grad()"


def _applies(scenario: Scenario, target: str) -> bool:
    return scenario.is_deepspeed or any(mb.after == "step_and_zero_grad" for mb in scenario.program.micro_batches)


def _judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    traces = evidence.traces()
    expectation = evidence.expectation()
    local = evidence.local()
    rtol, atol, _ = gradient_tolerance(scenario, max((len(w) for w in expectation.windows), default=1))
    name = P6.name
    # What optimizer_step_and_zero_grad(optimizer_k, model_k) returns at step k's micro-batch: that part's norm.
    norm_at = {step.micro_step: step.part_norms or [step.pre_clip_norm] for step in local.steps}
    zero_stage = scenario.zero_stage
    found: list[Deviation] = []
    for trace in traces:
        rank = f"rank {trace.rank}"
        called = {i for i, mb in enumerate(expectation.micro_batches) if mb.returned is not None}
        for index in sorted(set(trace.returned) - called):
            found.append(Deviation(scenario.id, name, f"{rank} · micro-batch {index}", RETURNED,
                                   "returned a value where the program never called it"))
        for index in sorted(called):
            where = f"{rank} · micro-batch {index}"
            kinds = expectation.micro_batches[index].returned
            got_all = trace.returned.get(index)
            if got_all is None:
                found.append(not_recorded(scenario, name, where, f"what {RETURNED} returned"))
                continue
            found += lengths(scenario, name, where, f"{RETURNED} calls", len(got_all), len(kinds))
            for call, (got, kind) in enumerate(zip(got_all, kinds)):
                at = where if len(kinds) == 1 else f"{where} · call {call + 1} (optimizer {call + 1} of {len(kinds)})"
                found += _returned(scenario, at, got, kind, index, call, norm_at, rtol, atol)
        found += _clip_warning(scenario, rank, trace, expectation)
        if zero_stage is None:
            continue
        for k, (step, want) in enumerate(zip(trace.steps, local.steps)):
            where = f"{rank} · {step_label(k, len(local.steps))}"
            # ZeRO 1-3 compute a global norm at every step; ZeRO-0 with a plain torch optimizer reports none (measured).
            if step.engine_grad_norm is None and zero_stage >= 1:
                found.append(not_recorded(scenario, name, where, "engine.get_global_grad_norm() (None at ZeRO "
                                          f"{zero_stage}, which computes one)"))
            elif step.engine_grad_norm is not None:
                found += compare_scalar(step.engine_grad_norm, want.pre_clip_norm, scenario=scenario.id, prop=name,
                                        where=where, label="engine.get_global_grad_norm()", rtol=rtol, atol=atol)
    return found


def _returned(scenario: Scenario, where: str, got: float | None, kind: str, index: int, call: int,
              norm_at: dict[int, list[float]], rtol: float, atol: float) -> list[Deviation]:
    """One call's return value against what §3 says: None off a boundary (or for a second call of the same optimizer),
    -1.0 where a step happened and no norm can be had, else the pre-clip norm of that optimizer's model as a float."""
    name = P6.name
    if kind == "none":
        return compare_scalar(got, None, scenario=scenario.id, prop=name, where=f"{where} (not a boundary)",
                              label=RETURNED, rtol=rtol, atol=atol)
    if kind == "-1":
        return compare_scalar(got, -1.0, scenario=scenario.id, prop=name, where=where, label=RETURNED, rtol=0.0, atol=0.0)
    if index not in norm_at or call >= len(norm_at[index]):
        return [not_recorded(scenario, name, where, "the step whose norm was returned")]
    found = []
    if got is not None and not isinstance(got, float):
        found.append(Deviation(scenario.id, name, where, RETURNED, f"returned {type(got).__name__}, want a Python float"))
    return found + compare_scalar(got, norm_at[index][call], scenario=scenario.id, prop=name, where=where,
                                  label=f"{RETURNED} (pre-clip norm)", rtol=rtol, atol=atol)


CLIP_WARNING = "differs from DeepSpeed's gradient_clipping"


def _clip_warning(scenario: Scenario, rank: str, trace, expectation) -> list[Deviation]:
    """§3: a max_grad_norm that differs from DeepSpeed's gradient_clipping warns once, naming both values; none where
    they agree."""
    expected = sum(mb.warns_clip_mismatch for mb in expectation.micro_batches)
    said = [w for w in trace.warnings if CLIP_WARNING in w]
    name = P6.name
    if expected and not said:
        return [Deviation(scenario.id, name, rank, "warning", "no warning that max_grad_norm differs from DeepSpeed's "
                          "gradient_clipping (§3: warn once, naming both values)")]
    if not expected and said:
        return [Deviation(scenario.id, name, rank, "warning", f"warned {said[0]!r} where max_grad_norm agrees with "
                          "DeepSpeed's gradient_clipping or was not given")]
    if said and not all(("max_grad_norm=" in w and "gradient_clipping=" in w) for w in said):
        return [Deviation(scenario.id, name, rank, "warning", f"{said[0]!r} does not name both values")]
    return []


P6 = register(Property(
    "P6", "grad norm",
    "grad norm: the returned value equals the oracle's pre-clip norm; None/-1.0 exactly as §3; clipping applied once",
    _applies, subject, _judge))
