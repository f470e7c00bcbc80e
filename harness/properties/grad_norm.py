"""P6 grad norm: every norm the user is handed is the oracle's pre-clip norm of the step it belongs to: what
``optimizer_step_and_zero_grad`` returns, what ``accelerator.clip_grad_norm_`` returns (on DeepSpeed, accelerate asks
the engine wrapper), what the engine reports; None / -1.0 exactly as DESIGN §3 says (-1.0 tested on an engine that
reports no norm: the ``no_grad_norm`` probe); a ``max_grad_norm`` that differs from DeepSpeed's clipping warned about
once, naming both. Clipping itself is P2/P5's (the step applied to the run's own gradients)."""
from __future__ import annotations

from .. import tolerances
from ..compare import Deviation, compare_scalar, expect_none, note
from ..models import parts_of
from ..scenario import Scenario
from .base import SUBJECT, Evidence, Need, Property, register, subject
from .checks import lengths, not_recorded, step_label
from .faults import (
    declared,
    engine_norm_invented,
    micro_batch_doubled,
    micro_batch_dropped,
    no_norm_faults,
    norm_post_clip,
    norms_recorded,
    returned_off_boundary,
    warning_faults,
)

RETURNED = "optimizer_step_and_zero_grad()"
CLIPPED = "accelerator.clip_grad_norm_()"
NO_NORM = "no_grad_norm"  # probe: DeepSpeed's zero_optimization.compute_grad_norm false (#8331, ZeRO 1/2)
CLIP_MISMATCH = "clip_mismatch"  # probe: DeepSpeed's gradient_clipping twice the max_grad_norm the program passes


def _calls_norm(scenario: Scenario) -> bool:
    """The program is handed a norm: optimizer_step_and_zero_grad, or clip_grad_norm_ with a bound to clip to."""
    return any(mb.after == "step_and_zero_grad" or (mb.after == "clip_step" and scenario.clip is not None)
               for mb in scenario.program.micro_batches)


def _applies(scenario: Scenario, target: str) -> bool:
    return scenario.is_deepspeed or _calls_norm(scenario)


CLIP_WARNING = "differs from DeepSpeed's gradient_clipping"


def _clip_warning(scenario: Scenario, rank: str, trace, expectation) -> list[Deviation]:
    """A program's own call with a max_grad_norm other than DeepSpeed's gradient_clipping (call form other_clip): the
    warning is said, once, naming both values (DESIGN §3); none where they agree."""
    expected = sum(mb.warns_clip_mismatch for mb in expectation.micro_batches)
    said = [w for w in trace.warnings if CLIP_WARNING in w]
    name = P6.name
    if expected and not said:
        return [Deviation(scenario.id, name, rank, "warning", "no warning that max_grad_norm differs from DeepSpeed's "
                          "gradient_clipping (§3: warn once, naming both values)")]
    if not expected and said:
        return [Deviation(scenario.id, name, rank, "warning", f"warned {said[0]!r} where max_grad_norm agrees with "
                          "DeepSpeed's gradient_clipping or was not given")]
    for text in said:
        if trace.warning_counts.get(text, 1) != 1 or "max_grad_norm=" not in text or "gradient_clipping=" not in text:
            return [Deviation(scenario.id, name, rank, "warning", f"said {trace.warning_counts.get(text, 1)} time(s): "
                              f"{text!r}; want once, naming both values")]
    return []


def _probed(scenario: Scenario) -> bool:
    """An engine that reports no norm after a step, where DeepSpeed can build one (ZeRO 1/2 without offload): the
    named API style that is handed what the engine reports."""
    return scenario.backend in ("ds1", "ds2") and scenario.api == "step_and_zero_grad"


def _mismatched(scenario: Scenario) -> bool:
    """Where the clipping warning is judged: optimizer_step_and_zero_grad with a bound on DeepSpeed (one MLP fp32 run
    per schedule kind: the warning does not depend on the numbers)."""
    return (scenario.is_deepspeed and scenario.api == "step_and_zero_grad" and scenario.clip is not None
            and scenario.model == "mlp" and scenario.precision == "fp32" and scenario.schedule in ("uni4", "dyn3142"))


def _needs(scenario: Scenario) -> list[Need]:
    return (subject(scenario) + ([Need(NO_NORM, scenario, probe=NO_NORM)] if _probed(scenario) else [])
            + ([Need(CLIP_MISMATCH, scenario, probe=CLIP_MISMATCH)] if _mismatched(scenario) else []))


def _expected_clip_calls(scenario: Scenario, evidence: Evidence, role: str) -> set[int]:
    """Where the harness's loop calls clip_grad_norm_: a clip_step micro-batch that reports sync_gradients True, with a
    bound. The Trainer (a client with its own loop) is judged where its call was recorded: on DeepSpeed the client
    records none (harness/clients.py does not wrap clip_grad_norm_ there)."""
    if scenario.clip is None or scenario.api == "trainer":
        return set()
    return {i for i, (mb, want) in enumerate(zip(scenario.program.micro_batches, evidence.expectation(role).micro_batches))
            if mb.after == "clip_step" and want.sync_gradients}


def _judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    found = _judge_run(scenario, evidence, SUBJECT)
    if NO_NORM in evidence.needs:
        found += _judge_no_norm(scenario, evidence)
    if CLIP_MISMATCH in evidence.needs:
        found += _judge_clip_mismatch(scenario, evidence)
    return found


def _judge_run(scenario: Scenario, evidence: Evidence, role: str) -> list[Deviation]:
    traces = evidence.traces(role)
    expectation = evidence.expectation(role)
    local = evidence.local(role)
    name = P6.name
    norm_at = {step.micro_step: step for step in local.steps}
    facts = traces[0].facts
    clip_calls = _expected_clip_calls(scenario, evidence, role)
    found: list[Deviation] = []
    for trace in traces:
        rank = f"rank {trace.rank}"
        called = {i for i, mb in enumerate(expectation.micro_batches) if mb.returned is not None}
        for index in sorted(set(trace.returned) - called):
            found.append(Deviation(scenario.id, name, f"{rank} · micro-batch {index}", RETURNED,
                                   "returned a value where the program never called it"))
        for index in sorted(called):
            where = f"{rank} · micro-batch {index}"
            if index not in trace.returned:
                found.append(not_recorded(scenario, name, where, f"what {RETURNED} returned"))
                continue
            kinds = expectation.micro_batches[index].calls
            calls = [trace.returned[index], *trace.returned_more.get(index, [])]
            found += lengths(scenario, name, where, f"{RETURNED} calls", len(calls), len(kinds))
            per_optimizer = max(1, len(kinds) // len(parts_of(scenario.model)))
            for call, (got, kind) in enumerate(zip(calls, kinds)):
                at = where if len(kinds) == 1 else f"{where} · call {call + 1} of {len(kinds)}"
                found += _returned(scenario, name, at, got, kind, norm_at.get(index), call // per_optimizer)
        found += _clip_warning(scenario, rank, trace, expectation)
        for index in sorted(set(trace.clip_returned) | clip_calls):
            where = f"{rank} · micro-batch {index}"
            if index not in trace.clip_returned:
                found.append(not_recorded(scenario, name, where, f"what {CLIPPED} returned"))
            elif trace.clip_returned[index] is None and scenario.is_deepspeed and not facts.get(
                    "engine_reports_grad_norm", True):
                # accelerate's clip_grad_norm_ on DeepSpeed hands over the engine wrapper's norm, which upstream takes
                # from the engine: None where the engine computes none (the reference measures one there).
                note(f"{CLIPPED}: None, as the engine built here computes no norm (accelerate returns the engine's)")
            elif index in norm_at:
                found += _norm(scenario, name, where, CLIPPED, trace.clip_returned[index], norm_at[index])
            else:
                note(f"{CLIPPED} at micro-batch {index}: no step there, so no norm of its own to compare (DESIGN §3 "
                     "names none)")
        if scenario.is_deepspeed:
            found += _engine_norms(scenario, trace, local, facts)
    return found


def _returned(scenario: Scenario, name: str, where: str, got: float | None, kind: str, step,
              optimizer: int) -> list[Deviation]:
    """One call's return against §3: None off a boundary (or for a second call of the same optimizer), -1.0 where a
    step happened and no norm can be had, else the pre-clip norm of that optimizer's model as a float."""
    if kind == "none":
        return expect_none(got, scenario=scenario.id, prop=name, where=f"{where} (not a boundary)", label=RETURNED,
                           why="not a boundary of this optimizer")
    if kind == "-1":
        return compare_scalar(got, -1.0, scenario=scenario.id, prop=name, where=where, label=RETURNED)
    return _norm(scenario, name, where, RETURNED, got, step, optimizer)


def _norm(scenario: Scenario, name: str, where: str, label: str, got: float | None, step,
          optimizer: int = 0) -> list[Deviation]:
    """``optimizer``: with two models, each optimizer's call returns its own model's norm (the step's part norms)."""
    if step is None:
        return [not_recorded(scenario, name, where, f"the step whose norm {label} returned")]
    found = []
    if got is not None and not isinstance(got, float):
        found.append(Deviation(scenario.id, name, where, label, f"returned {type(got).__name__}, want a Python float"))
    want = step.part_norms[optimizer] if len(step.part_norms) > 1 else step.pre_clip_norm
    return found + compare_scalar(got, want, scenario=scenario.id, prop=name, where=where,
                                  label=f"{label} (pre-clip norm)",
                                  bound=tolerances.norm_bound(scenario.precision, step.terms),
                                  bound_text=tolerances.norm_text(scenario.precision))


def _engine_norms(scenario: Scenario, trace, local, facts: dict) -> list[Deviation]:
    """Where the engine reports a norm (the fact, read from the engine built), it is the oracle's; where it reports
    none it must stay None (and the verdict says why)."""
    name, rank = P6.name, f"rank {trace.rank}"
    reports = facts.get("engine_reports_grad_norm", True)
    found: list[Deviation] = []
    for k, (step, want) in enumerate(zip(trace.steps, local.steps)):
        where = f"{rank} · {step_label(k, len(local.steps))}"
        label = "engine.get_global_grad_norm()"
        if reports:
            found += _norm(scenario, name, where, label, step.engine_grad_norm, want)
        else:
            found += expect_none(step.engine_grad_norm, scenario=scenario.id, prop=name, where=where, label=label,
                                 why="this engine computes no norm")
            note(f"{label}: None, as the engine built here computes none (ZeRO {scenario.zero_stage}"
                 + (", compute_grad_norm false" if scenario.zero_stage else ", a torch optimizer") + ")")
    return found


def _judge_no_norm(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    """The probe: the same run on an engine that reports no norm after a step (gradient clipping off, which that
    mode requires): optimizer_step_and_zero_grad returns -1.0 after every step and None elsewhere, exactly."""
    traces = evidence.traces(NO_NORM)
    if traces[0].facts.get("engine_reports_grad_norm", True):
        note(f"{NO_NORM} probe: this DeepSpeed ignores zero_optimization.compute_grad_norm (added by #8331), so no "
             "engine without a norm could be built to test -1.0 with")
        return []
    expectation = evidence.expectation(NO_NORM)
    found: list[Deviation] = []
    for trace in traces:
        for index, mb in enumerate(expectation.micro_batches):
            if mb.returned is None:
                continue
            where = f"probe {NO_NORM} · rank {trace.rank} · micro-batch {index}"
            got = trace.returned.get(index)
            if index not in trace.returned:
                found.append(not_recorded(scenario, P6.name, where, f"what {RETURNED} returned"))
            elif mb.returned == "none":
                found += expect_none(got, scenario=scenario.id, prop=P6.name, where=where, label=RETURNED,
                                     why="not a boundary")
            else:
                want = -1.0 if mb.returned == "-1" else None
                if want is None or got != want:
                    found.append(Deviation(scenario.id, P6.name, where, RETURNED,
                                           f"got {got!r}, want -1.0 (a step happened and the engine reports no norm)"))
    return found


def _judge_clip_mismatch(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    """DESIGN §3: a max_grad_norm that differs from DeepSpeed's gradient_clipping warns once, naming both values. The
    probe sets gradient_clipping to twice the bound the program passes: each rank says exactly one warning more than
    the run without the mismatch, once, and it names both numbers."""
    configured, passed = 2.0 * scenario.clip, float(scenario.clip)
    usual = {w for trace in evidence.traces() for w in trace.warnings}
    found: list[Deviation] = []
    for trace in evidence.traces(CLIP_MISMATCH):
        where = f"probe {CLIP_MISMATCH} · rank {trace.rank}"
        new = [w for w in trace.warnings if w not in usual]
        if len(new) != 1:
            found.append(Deviation(scenario.id, P6.name, where, "warnings",
                                   f"{len(new)} new warnings where max_grad_norm={passed} differs from DeepSpeed's "
                                   f"gradient_clipping={configured}: want exactly one ({new})"))
            continue
        said = trace.warning_counts.get(new[0], 1)
        if said != 1 or not (_names(new[0], passed) and _names(new[0], configured)):
            found.append(Deviation(scenario.id, P6.name, where, "warnings",
                                   f"said {said} time(s): {new[0]!r}; want once, naming {passed:g} and {configured:g}"))
    return found


def _names(text: str, value: float) -> bool:
    return any(f"{form}" in text for form in (repr(value), f"{value:g}"))


def _faults(scenario: Scenario, evidence: Evidence) -> list:
    traces = evidence.traces()
    # Gradient faults show in P6 through the norms reported for their step (the first): only where there are some.
    gradients = (micro_batch_dropped, micro_batch_doubled) if any(
        t.steps and norms_recorded(t, t.steps[0]) for t in traces) else ()
    faults = declared(scenario, evidence, (norm_post_clip, *gradients, engine_norm_invented, returned_off_boundary))
    if NO_NORM in evidence.needs:
        faults += no_norm_faults(scenario, evidence, NO_NORM)
    if CLIP_MISMATCH in evidence.needs:
        faults += warning_faults(scenario, evidence, CLIP_MISMATCH)
    return faults


P6 = register(Property(
    "P6", "grad norm",
    "grad norm: the returned value equals the oracle's pre-clip norm; None/-1.0 exactly as §3; clipping applied once",
    _applies, _needs, _judge, faults=_faults))
