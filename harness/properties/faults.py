"""Synthetic faults: small wrong runs made from a recorded one by editing what it reported, never by running anything
(DESIGN §4 "Every pass proves something"). After a pass the runner re-judges the property against the faults of the
kind it exists for; the names of those it catches are the verdict's ``proven``, and a pass that catches none is not
a pass.

Each fault is the size of the bug it stands for: one tensor's gradient zeroed, one micro-batch's contribution dropped
or doubled, a step moved by one micro-batch (the gradients of that micro-batch move with it), the lr one scheduler
step late (the step's update scaled with it), one rank's gradients off by one micro-batch's worth, a norm returned
after clipping. The sizes come from the float64 teacher-forced oracle the verdict already computed
(``OracleStep.micro_grads``): a fault costs one more judgement, no job and no oracle. Norms the run recorded for a
faulted step move with its gradients (scaled by the ratio of the faulted norm to the recorded one).

A builder returns no fault where its kind cannot show (a constant lr cannot be late; one process has no other rank),
so what a verdict declares is what it can be asked to catch.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..backends import LEARNING_RATES, warmup
from ..oracle import OracleTrace
from ..scenario import Scenario
from ..tolerances import norm_bound
from ..trace import Tensors, Trace
from ..world import JobResult
from .base import SUBJECT, Evidence, NotDecided


@dataclass(frozen=True)
class Fault:
    name: str
    evidence: Callable[[], Evidence]  # the recorded evidence with the fault in it (built only when re-judged)


FaultBuilder = Callable[[Scenario, Evidence, str], list[Fault]]


# -------------------------------------------------------------------------------------------------- helpers
def _recorded(evidence: Evidence, role: str) -> tuple[list[Trace], OracleTrace] | None:
    """The role's traces and teacher-forced oracle, or None where there is nothing recorded to fault."""
    try:
        traces = evidence.traces(role)
        if not traces or traces[0].client_failure is not None:
            return None
        return traces, evidence.local(role)
    except NotDecided:
        return None


def _replaced(evidence: Evidence, role: str, traces: list[Trace]) -> Evidence:
    return evidence.with_result(role, dataclasses.replace(evidence.result(role), traces=traces))


def _mean(per_rank: Sequence[Tensors]) -> Tensors:
    return {name: sum(g[name] for g in per_rank) / len(per_rank) for name in per_rank[0]}


def _norm(grads: Tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads.values()])))


def _step_edited(trace: Trace, k: int, grads: Tensors | None = None, **changes: object) -> Trace:
    """``trace`` with step ``k``'s gradients replaced; the norms recorded for that step (the engine's, what
    optimizer_step_and_zero_grad and clip_grad_norm_ returned there) scaled with them."""
    step = trace.steps[k]
    steps = list(trace.steps)
    returned, clip_returned = dict(trace.returned), dict(trace.clip_returned)
    edited: dict[str, object] = dict(changes)
    if grads is not None and step.grads is not None:
        before = _norm(step.grads)
        ratio = _norm(grads) / before if before > 0 else 1.0
        edited["grads"] = grads
        if step.engine_grad_norm is not None and step.engine_grad_norm >= 0:
            edited["engine_grad_norm"] = step.engine_grad_norm * ratio
        for book in (returned, clip_returned):
            value = book.get(step.micro_step)
            if value is not None and value >= 0:
                book[step.micro_step] = value * ratio
    steps[k] = dataclasses.replace(step, **edited)
    return dataclasses.replace(trace, steps=steps, returned=returned, clip_returned=clip_returned)


def _plus(grads: Tensors, delta: Tensors, factor: float) -> Tensors:
    return {name: (g.double() + factor * delta[name].double()).to(g.dtype) for name, g in grads.items()}


def _contribution(local: OracleTrace, k: int, micro_batch: int) -> Tensors | None:
    """Micro-batch ``micro_batch``'s share of step ``k``'s rank-averaged gradient."""
    per_rank = local.steps[k].micro_grads.get(micro_batch) if k < len(local.steps) else None
    return _mean([{n: g.double() for n, g in grads.items()} for grads in per_rank]) if per_rank else None


def _faulted_step(traces: list[Trace], local: OracleTrace) -> int | None:
    """The step a gradient fault goes into: the first (a re-judging stops at the first deviation it meets, so a fault
    there costs the least; every step is compared alike)."""
    if not local.steps or any(not t.steps or t.steps[0].grads is None for t in traces):
        return None
    return 0


def _total(local: OracleTrace) -> int:
    return len(local.steps)


def _at_faulted_step(evidence: Evidence, role: str) -> tuple[list[Trace], OracleTrace, int] | None:
    """The role's traces, its oracle and the step a gradient fault goes into; None where there is nothing to fault."""
    found = _recorded(evidence, role)
    if found is None:
        return None
    traces, local = found
    k = _faulted_step(traces, local)
    return None if k is None else (traces, local, k)


# ---------------------------------------------------------------------------------------- gradient faults
def tensor_zeroed(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """Each tensor's gradient zeroed (one fault per tensor the oracle says has a gradient) at the first step."""
    found = _at_faulted_step(evidence, role)
    if found is None:
        return []
    traces, local, k = found
    faults = []
    for name, want in sorted(local.steps[k].grads.items()):
        if not bool((want != 0).any()):
            continue

        def faulted(name: str = name) -> Evidence:
            edited = [_step_edited(t, k, {n: (torch.zeros_like(g) if n == name else g)
                                          for n, g in t.steps[k].grads.items()}) for t in traces]
            return _replaced(evidence, role, edited)

        faults.append(Fault(f"grad[{name}] zeroed at step {k + 1} of {_total(local)}", faulted))
    return faults


def _micro_batch_scaled(scenario: Scenario, evidence: Evidence, role: str, factor: float, verb: str) -> list[Fault]:
    found = _at_faulted_step(evidence, role)
    if found is None:
        return []
    traces, local, k = found
    m = local.steps[k].micro_step
    delta = _contribution(local, k, m)
    if delta is None:
        return []

    def faulted() -> Evidence:
        return _replaced(evidence, role, [_step_edited(t, k, _plus(t.steps[k].grads, delta, factor)) for t in traces])

    return [Fault(f"micro-batch {m}'s contribution {verb} (step {k + 1} of {_total(local)})", faulted)]


def micro_batch_dropped(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    return _micro_batch_scaled(scenario, evidence, role, -1.0, "dropped")


def micro_batch_doubled(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    return _micro_batch_scaled(scenario, evidence, role, 1.0, "doubled")


def window_scaled(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """The first step's gradients scaled by G/(G−1): a window divided by one micro-batch fewer than configured (the
    1/len instead of 1/G of DESIGN §3's loss-scaling rule, on a full window)."""
    g = scenario.configured_g
    found = _recorded(evidence, role)
    if found is None or g < 2:
        return []
    traces, local = found
    k = _faulted_step(traces, local)
    if k is None:
        return []
    factor = g / (g - 1)

    def faulted() -> Evidence:
        return _replaced(evidence, role, [_step_edited(t, k, {n: (x.double() * factor).to(x.dtype)
                                                             for n, x in t.steps[k].grads.items()}) for t in traces])

    return [Fault(f"step {k + 1}'s window scaled by G/(G-1) = {factor:.3g}", faulted)]


def step_moved(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """The first step one micro-batch late: the next window's first micro-batch moves into it. With one step only, it
    comes one micro-batch early and its window's last micro-batch is left behind instead."""
    found = _recorded(evidence, role)
    if found is None:
        return []
    traces, local = found
    if not local.steps or any(len(t.steps) < len(local.steps) or t.steps[0].grads is None for t in traces):
        return []
    m = local.steps[0].micro_step
    if len(local.steps) >= 2:
        delta = _contribution(local, 1, m + 1)
        if delta is None or any(t.steps[1].grads is None for t in traces):
            return []

        def later() -> Evidence:
            edited = []
            for t in traces:
                t = _step_edited(t, 0, _plus(t.steps[0].grads, delta, 1.0), micro_step=m + 1)
                edited.append(_step_edited(t, 1, _plus(t.steps[1].grads, delta, -1.0)))
            return _replaced(evidence, role, edited)

        return [Fault(f"step 1 moved from micro-batch {m} to {m + 1}", later)]
    delta = _contribution(local, 0, m)
    if delta is None or len(local.steps[0].micro_grads) < 2:
        return []

    def earlier() -> Evidence:
        edited = []
        for t in traces:
            t = _step_edited(t, 0, _plus(t.steps[0].grads, delta, -1.0), micro_step=m - 1)
            if t.leftover_grads is not None:
                t = dataclasses.replace(t, leftover_grads=_plus(t.leftover_grads, delta, 1.0))
            edited.append(t)
        return _replaced(evidence, role, edited)

    return [Fault(f"step 1 moved from micro-batch {m} to {m - 1}", earlier)]


def rank_perturbed(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """Rank 1's gradients off by its own share of one micro-batch at the first step (a reduction it missed)."""
    found = _recorded(evidence, role)
    if found is None or len(found[0]) < 2:
        return []
    traces, local = found
    k = _faulted_step(traces, local)
    if k is None:
        return []
    m = local.steps[k].micro_step
    per_rank = local.steps[k].micro_grads.get(m)
    if not per_rank or len(per_rank) < 2:
        return []
    delta = {name: g.double() / len(per_rank) for name, g in per_rank[1].items()}

    def faulted() -> Evidence:
        edited = [(_step_edited(t, k, _plus(t.steps[k].grads, delta, 1.0)) if t.rank == 1 else t) for t in traces]
        return _replaced(evidence, role, edited)

    return [Fault(f"rank 1's gradients off by its micro-batch {m} (step {k + 1} of {_total(local)})", faulted)]


def rounded_differently(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """One element of one gradient one float32 ulp away (what a bit-for-bit property exists to see)."""
    found = _at_faulted_step(evidence, role)
    if found is None:
        return []
    traces, local, k = found
    name = max(traces[0].steps[k].grads, key=lambda n: traces[0].steps[k].grads[n].numel())

    def faulted() -> Evidence:
        edited = []
        for t in traces:
            grads = dict(t.steps[k].grads)
            flat = grads[name].flatten().clone()
            flat[0] = torch.nextafter(flat[0], torch.tensor(math.inf, dtype=flat.dtype))
            grads[name] = flat.reshape(grads[name].shape)
            edited.append(_step_edited(t, k, grads))
        return _replaced(evidence, role, edited)

    return [Fault(f"grad[{name}] one ulp off at step {k + 1} of {_total(local)}", faulted)]


# ------------------------------------------------------------------------------------------ schedule faults
def lr_late(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """The lr one scheduler step late at the first step after the first where that changes it: the step uses the lr
    of the scheduler step before, and its update scales with it (SGD's and AdamW's updates are linear in lr)."""
    if scenario.lr_schedule != "warmup":
        return []
    found = _recorded(evidence, role)
    if found is None:
        return []
    traces, local = found
    expectation = evidence.expectation(role)
    base = LEARNING_RATES[scenario.optimizer]
    for k in range(1, len(local.steps)):
        if any(len(t.steps) <= k or t.steps[k].lr is None for t in traces):
            return []
        at = local.steps[k].micro_step
        taken = sum(mb.scheduler_steps for mb in expectation.micro_batches[:at])
        lr, late = local.steps[k].lr, base * warmup(taken - 1)
        if taken < 1 or abs(lr - base * warmup(taken)) > 1e-12 * base or abs(late - lr) <= 1e-9 * base:
            continue

        def faulted(k: int = k, lr: float = lr, late: float = late) -> Evidence:
            edited = []
            for t in traces:
                before, after = t.steps[k - 1].params, t.steps[k].params
                params = {n: before[n] + (late / lr) * (after[n] - before[n]) for n in after}
                edited.append(_step_edited(t, k, lr=late, params=params))
            return _replaced(evidence, role, edited)

        return [Fault(f"lr one scheduler step late at step {k + 1} ({late:g} for {lr:g})", faulted)]
    return []


def sync_report_flipped(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """What accelerator.sync_gradients reports after the first boundary's backward, flipped."""
    found = _recorded(evidence, role)
    if found is None or not found[1].steps:
        return []
    traces, local = found
    m = local.steps[0].micro_step
    if any(len(t.sync_gradients) <= m for t in traces):
        return []

    def faulted() -> Evidence:
        edited = []
        for t in traces:
            reports = list(t.sync_gradients)
            reports[m] = not reports[m]
            edited.append(dataclasses.replace(t, sync_gradients=reports))
        return _replaced(evidence, role, edited)

    return [Fault(f"sync_gradients reported wrong after micro-batch {m}", faulted)]


def _counter_off(counter: str, label: str) -> FaultBuilder:
    def build(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
        found = _recorded(evidence, role)
        if found is None or getattr(evidence.expectation(role), counter) is None:
            return []
        traces = found[0]
        if any(getattr(t, counter) is None for t in traces):
            return []

        def faulted() -> Evidence:
            return _replaced(evidence, role, [dataclasses.replace(t, **{counter: getattr(t, counter) + 1}) for t in traces])

        return [Fault(f"{label} one too many", faulted)]
    return build


engine_global_steps_off = _counter_off("engine_global_steps", "engine.global_steps")
engine_micro_steps_off = _counter_off("engine_micro_steps", "engine.micro_steps")


# --------------------------------------------------------------------------------------------- norm faults
def norm_post_clip(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """Every norm reported for a step whose pre-clip norm exceeds the bound replaced by the bound (the norm after
    clipping); no fault where no step's norm exceeds it by more than P6's own tolerance there (post- and pre-clip are
    then the same, or closer than the precision can tell: a bf16 GPT-2 norm of 1.01 against a bound of 1 — found by
    a 2,000-program exploration, where the fault was declared and P6 answered "vacuous")."""
    if scenario.clip is None:
        return []
    found = _recorded(evidence, role)
    if found is None:
        return []
    traces, local = found
    clipped = [k for k, s in enumerate(local.steps)
               if s.pre_clip_norm - scenario.clip > max(scenario.clip * 1e-3, norm_bound(scenario.precision, s.terms))
               and any(k < len(t.steps) and norms_recorded(t, t.steps[k]) for t in traces)]
    if not clipped:
        return []
    bound = float(scenario.clip)

    def faulted() -> Evidence:
        edited = []
        for t in traces:
            returned, clip_returned, steps = dict(t.returned), dict(t.clip_returned), list(t.steps)
            for k in clipped:
                if k >= len(steps):
                    continue
                at = steps[k].micro_step
                for book in (returned, clip_returned):
                    if book.get(at) is not None and book[at] >= 0:
                        book[at] = min(book[at], bound)
                if steps[k].engine_grad_norm is not None and steps[k].engine_grad_norm >= 0:
                    steps[k] = dataclasses.replace(steps[k], engine_grad_norm=min(steps[k].engine_grad_norm, bound))
            edited.append(dataclasses.replace(t, returned=returned, clip_returned=clip_returned, steps=steps))
        return _replaced(evidence, role, edited)

    return [Fault("norms returned after clipping", faulted)]


def norms_recorded(trace: Trace, step) -> bool:
    """Whether the run reported a norm for this step (the engine's, or what a call returned there)."""
    values = (step.engine_grad_norm, trace.returned.get(step.micro_step), trace.clip_returned.get(step.micro_step))
    return any(v is not None and v >= 0 for v in values)


def engine_norm_invented(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """The engine reports a norm at the first step where it computes none (None is what P6 must insist on)."""
    found = _recorded(evidence, role)
    if not scenario.is_deepspeed or found is None or not found[1].steps:
        return []
    traces, local = found
    if traces[0].facts.get("engine_reports_grad_norm", True):
        return []
    if any(not t.steps or t.steps[0].engine_grad_norm is not None for t in traces):
        return []

    def faulted() -> Evidence:
        return _replaced(evidence, role, [_step_edited(t, 0, engine_grad_norm=local.steps[0].pre_clip_norm)
                                          for t in traces])

    return [Fault("engine.get_global_grad_norm() reports a norm where the engine computes none", faulted)]


def returned_off_boundary(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """optimizer_step_and_zero_grad returns a number at the first call the model says must return None."""
    found = _recorded(evidence, role)
    if found is None:
        return []
    traces = found[0]
    expectation = evidence.expectation(role)
    off = [i for i, mb in enumerate(expectation.micro_batches) if mb.returned == "none"]
    if not off or any(off[0] not in t.returned for t in traces):
        return []

    def faulted() -> Evidence:
        return _replaced(evidence, role, [dataclasses.replace(t, returned={**t.returned, off[0]: 1.0}) for t in traces])

    return [Fault(f"optimizer_step_and_zero_grad() returns a norm off a boundary (micro-batch {off[0]})", faulted)]


def no_norm_faults(scenario: Scenario, evidence: Evidence, role: str) -> list[Fault]:
    """On an engine that reports no norm: -1.0 returned as None (a step that looks like none)."""
    try:
        traces = evidence.traces(role)
    except NotDecided:
        return []
    stepped = [i for i, v in traces[0].returned.items() if v == -1.0]
    if not stepped or traces[0].facts.get("engine_reports_grad_norm", True):
        return []

    def faulted() -> Evidence:
        return _replaced(evidence, role, [dataclasses.replace(t, returned={**t.returned, stepped[0]: None})
                                          for t in traces])

    return [Fault(f"{role}: None returned for -1.0 after a step (micro-batch {stepped[0]})", faulted)]


def warning_faults(scenario: Scenario, evidence: Evidence, role: str) -> list[Fault]:
    """The warning a probe provokes never said, and said twice."""
    try:
        traces, usual = evidence.traces(role), {w for t in evidence.traces() for w in t.warnings}
    except NotDecided:
        return []
    new = [w for w in traces[0].warnings if w not in usual]
    if len(new) != 1:
        return []

    def silent() -> Evidence:
        return _replaced(evidence, role, [dataclasses.replace(t, warnings=[w for w in t.warnings if w != new[0]])
                                          for t in traces])

    def twice() -> Evidence:
        return _replaced(evidence, role, [dataclasses.replace(t, warning_counts={**t.warning_counts, new[0]: 2})
                                          for t in traces])

    return [Fault(f"{role}: the warning never said", silent), Fault(f"{role}: the warning said twice", twice)]


# ------------------------------------------------------------------------------------- communication faults
def _reduction_faults(scenario: Scenario, evidence: Evidence, role: str, promised: bool) -> list[Fault]:
    found = _recorded(evidence, role)
    if found is None:
        return []
    traces = found[0]
    want = [mb.reduces for mb in evidence.expectation(role).micro_batches]
    where = [i for i, r in enumerate(want) if r is promised]
    if not where or any(len(t.collectives) <= where[0] for t in traces):
        return []
    m = where[0]

    def faulted() -> Evidence:
        edited = []
        for t in traces:
            collectives = list(t.collectives)
            collectives[m] = {"all_reduce": 1} if not promised else {}
            digests = list(t.grad_digests)
            if len(digests) > m and digests[m] is not None and len(traces) > 1:
                first = traces[0].grad_digests[m]
                digests[m] = first if not promised else (first or 0.0) + 1.0 + t.rank
            edited.append(dataclasses.replace(t, collectives=collectives, grad_digests=digests))
        return _replaced(evidence, role, edited)

    what = "a gradient reduction where none may run" if not promised else "no gradient reduction where one must run"
    return [Fault(f"{what} (micro-batch {m})", faulted)]


def extra_reduction(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    return _reduction_faults(scenario, evidence, role, False)


def missing_reduction(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    return _reduction_faults(scenario, evidence, role, True)


# ------------------------------------------------------------------------------------------ hygiene faults
def gradients_left(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """One micro-batch's gradient left behind after the program (the last step's last micro-batch, never zeroed)."""
    found = _recorded(evidence, role)
    if found is None:
        return []
    traces, local = found
    delta = None
    if local.steps:
        delta = _contribution(local, len(local.steps) - 1, local.steps[-1].micro_step)
    elif local.leftover_micro_grads:
        delta = _mean([{n: g.double() for n, g in grads.items()} for grads in next(iter(local.leftover_micro_grads.values()))])
    if delta is None or any(t.leftover_grads is None for t in traces):
        return []

    def faulted() -> Evidence:
        return _replaced(evidence, role, [dataclasses.replace(t, leftover_grads=_plus(t.leftover_grads, delta, 1.0))
                                          for t in traces])

    return [Fault("one micro-batch's gradient left behind after the program", faulted)]


# ------------------------------------------------------------------------------------------ outcome faults
def client_assertion(scenario: Scenario, evidence: Evidence, role: str = SUBJECT) -> list[Fault]:
    """A client program (accelerate's test_sync.py) stops on an assertion on rank 0."""
    try:
        traces = evidence.traces(role)
    except NotDecided:
        return []
    if not traces or traces[0].client_failure is not None:
        return []

    def faulted() -> Evidence:
        return _replaced(evidence, role, [dataclasses.replace(traces[0], client_failure="AssertionError: synthetic")]
                         + list(traces[1:]))

    return [Fault(f"{scenario.api} stops on an assertion", faulted)]


def _errored(text: str) -> JobResult:
    return JobResult(status="error", errors={0: text}, reason=text.strip().splitlines()[-1])


DEPENDENCY_ASSERT = ('Traceback (most recent call last):\n  File "deepspeed/runtime/engine.py", line 1, in '
                     'set_gradient_accumulation_boundary\nAssertionError: synthetic: a dependency\'s assert')


def refusal_faults(scenario: Scenario, evidence: Evidence, role: str) -> list[Fault]:
    """Where the target refused by name: the refusal as a dependency's assert, and training instead of refusing."""
    result = evidence.result(role)
    subject = evidence.result(SUBJECT)
    faults = [Fault(f"{role}: a dependency's assert passed through",
                    lambda: evidence.with_result(role, _errored(DEPENDENCY_ASSERT)))]
    if subject.ok:
        faults.append(Fault(f"{role}: trains on instead of refusing", lambda: evidence.with_result(role, subject)))
    return faults if result.status == "error" else []


def training_faults(scenario: Scenario, evidence: Evidence, role: str) -> list[Fault]:
    """Where the target trained on: a user's boundary silently ignored (the step moved), and a refusal instead."""
    if not evidence.result(role).ok:
        return []
    faults = [Fault(f"{role}: {f.name} (a user's boundary silently ignored)", f.evidence)
              for f in step_moved(scenario, evidence, role)]
    text = "Traceback (most recent call last):\nRuntimeError: synthetic: refuses where it can train"
    faults.append(Fault(f"{role}: refuses where it can train", lambda: evidence.with_result(role, _errored(text))))
    return faults


def leaving_run_errored(scenario: Scenario, evidence: Evidence, role: str) -> list[Fault]:
    """The run before a follow-up crashed (the world restarted, so the follow-up ran clean and proves nothing)."""
    text = "Traceback (most recent call last):\nRuntimeError: synthetic: the leaving run crashed"
    return [Fault("the run that leaves the override set errors",
                  lambda: evidence.with_result(role, evidence.result(role), before=_errored(text)))]


def declared(scenario: Scenario, evidence: Evidence, builders: Sequence[FaultBuilder], role: str = SUBJECT
             ) -> list[Fault]:
    """Every fault of these kinds that can show on this recorded run."""
    return [fault for build in builders for fault in build(scenario, evidence, role)]

