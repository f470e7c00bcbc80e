"""P10 batch-split invariance: the same samples cut as (micro-batch size, G) = (8, 1), (4, 2), (2, 4), (1, 8) train
the same: window losses, pre-clip gradients, every norm the user sees and the parameters after each step, within
the precision's tolerance of the one-micro-batch-per-window run.

The test that found most real accumulation bugs upstream (transformers #34191, #35808; open-instruct #1498). With a
token-level loss on padded, variable-length sequences a per-micro-batch mean is *not* split-invariant: there the
drift is measured (a metric), and the user's own normalisation by the window's tokens with
``backward(loss, scale_wrt_gas=False)`` must restore invariance (the keyword reaching the engine is what makes it).
"""
from __future__ import annotations

from typing import Sequence

from .. import tolerances
from ..compare import Deviation, compare_scalar, compare_tensors
from ..scenario import Scenario
from ..trace import Trace
from .base import SUBJECT, Evidence, Need, Property, register, subject
from .checks import STEP_TOLERANCE, lengths, not_recorded, step_label
from .faults import declared, micro_batch_doubled, micro_batch_dropped, step_moved

SPLIT_REFERENCE = "split_reference"


def split_compared(scenario: Scenario) -> bool:
    """A split other than the first, SGD in fp32 (AdamW divides each element by its own history, so a reduction
    order's round-off can grow past fp32 tolerance between splits without any bug), on a style whose windows are the
    schedule's (legacy follows the installed accelerate's instead)."""
    return (scenario.split_reference is not None and scenario.optimizer == "sgd" and scenario.precision == "fp32"
            and scenario.api != "legacy")


def invariant_by_construction(scenario: Scenario) -> bool:
    """A per-sample mean loss over equal micro-batches (the MLP), or the user's own normalisation by the window's
    token count: the mathematics promises the same training for every split. A per-micro-batch *token* mean
    (GPT-2, ``mean``) does not (#34191): its drift is a metric."""
    return scenario.model == "mlp" or scenario.loss_norm == "tokens"


def window_losses(scenario: Scenario, losses: Sequence[float]) -> list[float]:
    """Each window's loss as the user defined it: the mean of its micro-batch means, or, normalised by the window's
    tokens, their sum (each micro-batch already carries its share)."""
    out, start = [], 0
    for window in scenario.windows:
        chunk = losses[start:start + window]
        out.append(sum(chunk) if scenario.loss_norm == "tokens" else sum(chunk) / max(len(chunk), 1))
        start += window
    return out


def split_loss_drift(scenario: Scenario, traces: Sequence[Trace], reference: Scenario,
                     reference_traces: Sequence[Trace]) -> float:
    """Largest |window loss − the one-micro-batch split's window loss| over ranks and windows."""
    worst = 0.0
    for trace, base in zip(traces, reference_traces):
        for got, want in zip(window_losses(scenario, trace.losses), window_losses(reference, base.losses)):
            worst = max(worst, abs(got - want))
    return worst


def _applies(scenario: Scenario, target: str) -> bool:
    return split_compared(scenario) and invariant_by_construction(scenario)


def _needs(scenario: Scenario) -> list[Need]:
    return subject(scenario) + [Need(SPLIT_REFERENCE, scenario.split_reference)]


def _judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    """Both splits are fp32 runs of the same mathematics, each within the error analysis's bound of the truth: their
    gradients, window losses and norms may be apart by the sum of the two bounds (from the terms the oracle measured
    for each); their parameters by the step's own fp32 tolerance (SGD moves them by lr × gradients that close)."""
    traces, reference_traces = evidence.traces(SUBJECT), evidence.traces(SPLIT_REFERENCE)
    reference = evidence.needs[SPLIT_REFERENCE].scenario
    mine_oracle, their_oracle = evidence.local(SUBJECT), evidence.local(SPLIT_REFERENCE)
    p = scenario.precision
    rtol, atol = STEP_TOLERANCE
    name, sid = P10.name, scenario.id
    engine = _engine_norm_absent(scenario, traces)
    found = lengths(scenario, name, "ranks", "ranks", len(traces), len(reference_traces))
    for trace, base in zip(traces, reference_traces):
        where = f"rank {trace.rank} vs {reference.id}"
        found += lengths(scenario, name, where, "optimizer steps", len(trace.steps), len(base.steps))
        mine, theirs = window_losses(scenario, trace.losses), window_losses(reference, base.losses)
        found += lengths(scenario, name, where, "window losses", len(mine), len(theirs))
        for k, (got, want) in enumerate(zip(mine, theirs)):
            found += compare_scalar(got, want, scenario=sid, prop=name, label="window loss",
                                    where=f"{where} · window {k + 1}",
                                    bound=tolerances.loss_bound(p, got) + tolerances.loss_bound(p, want),
                                    bound_text=tolerances.loss_text(p, runs=2))
        norms = [trace.returned[i] for i in sorted(trace.returned) if trace.returned[i] is not None]
        base_norms = [base.returned[i] for i in sorted(base.returned) if base.returned[i] is not None]
        if trace.returned or base.returned:
            found += lengths(scenario, name, where, "returned norms", len(norms), len(base_norms))
        for k, (step, base_step) in enumerate(zip(trace.steps, base.steps)):
            at = f"{where} · {step_label(k, len(base.steps))}"
            terms = _terms(mine_oracle, k), _terms(their_oracle, k)
            if step.grads is None or base_step.grads is None:
                found.append(not_recorded(scenario, name, at, "pre-clip gradients"))
            elif None in terms:
                found.append(not_recorded(scenario, name, at, "the oracle's terms of this step"))
            else:
                found += compare_tensors(step.grads, base_step.grads, scenario=sid, prop=name, where=at, label="grad",
                                         bounds=tolerances.combined(*(tolerances.gradient_bounds(p, t) for t in terms)),
                                         bound_text=tolerances.gradient_text(p, runs=2))
            found += compare_tensors(step.params, base_step.params, scenario=sid, prop=name, where=at,
                                     label="param", rtol=rtol, atol=atol)
            norm_bound = sum(tolerances.norm_bound(p, t) for t in terms if t is not None)
            found += compare_scalar(step.engine_grad_norm, base_step.engine_grad_norm, scenario=sid, prop=name,
                                    where=at, label="engine.get_global_grad_norm()", bound=norm_bound,
                                    bound_text=tolerances.norm_text(p, runs=2), missing_ok=engine)
            if k < len(norms) and k < len(base_norms):
                found += compare_scalar(norms[k], base_norms[k], scenario=sid, prop=name, where=at,
                                        label="optimizer_step_and_zero_grad()", bound=norm_bound,
                                        bound_text=tolerances.norm_text(p, runs=2))
    return found


def _terms(local, k: int):
    return local.steps[k].terms if k < len(local.steps) else None


def _engine_norm_absent(scenario: Scenario, traces: list[Trace]) -> str | None:
    """Why no engine norm can exist here (a named fact), or None where one must."""
    if not scenario.is_deepspeed:
        return f"no DeepSpeed engine on {scenario.backend}"
    if traces and not traces[0].facts.get("engine_reports_grad_norm", True):
        return "the engine built here computes no norm"
    return None


P10 = register(Property(
    "P10", "batch-split invariance",
    "batch-split invariance: the same global data as (micro-batch, G) = (8,1), (4,2), (2,4), (1,8) gives the same "
    "window losses, parameters and grad norms (fp32 tolerance) on every backend and API style",
    _applies, _needs, _judge,
    faults=lambda s, e: declared(s, e, (micro_batch_dropped, micro_batch_doubled, step_moved))))
