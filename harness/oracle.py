"""The oracle: what a scenario must produce, computed in one process with pure PyTorch in float64.

No accelerate, no DeepSpeed. It trains along the steps the model of DESIGN §3 gives (``programs/model.py``) with
the loss scaling rule of §3: every micro-batch loss is divided by the *configured* G whatever the window length
(with the user's own token normalisation, ``scale_wrt_gas=False``, nothing divides by G); gradients are averaged
over ranks at the step; the pre-clip global norm is measured, gradients clipped once, the optimizer and its lr
schedule step, gradients are zeroed. Where the model says a ``zero_grad()`` discarded the window so far, its
micro-batches are dropped; an lr the user set by hand is set on the float64 optimizer at the same point of the loop.

Two expectations come out of it:
- ``expected``: free-running from the initial weights (the trajectory a perfect float64 run takes). Shared by every
  API style with the same steps, so it is computed once per (data, steps) and cached by the runner.
- ``teacher_forced``: each step judged from where the *run* stood: the float64 gradients of the step's window at
  the run's own parameters before it, and the step itself applied to the run's own parameters and recorded
  gradients. Round-off of low precision (bf16) or of AdamW's per-element division cannot accumulate across steps
  there, so the tolerance can be tight enough to see a missed, doubled or late step at any step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backends import LEARNING_RATES, LR_LAMBDAS, build_optimizer, steps_parameters_no_rank_used
from .data import cast, global_window_tokens, micro_batch, window_tokens
from .models import build_model, forward_loss, forward_token_loss_sum, parts_of
from .programs.model import Expectation, MicroExpect
from .scenario import TRAINER_NORMS, TRAINER_WINDOW_NORM, Scenario
from .trace import Tensors, Trace


@dataclass
class OracleStep:
    micro_step: int
    pre_clip_norm: float
    grads: Tensors  # pre-clip, averaged over ranks
    params: Tensors | None  # after the step (None: the run recorded no gradients to step with)
    lr: float
    # Per tensor, the sum over the window's micro-batches of max|micro-batch gradient| (mean over ranks): the scale
    # of the round-off a low-precision run accumulates over the window, even where the gradients cancel in the sum.
    window_scale: dict[str, float] | None = None
    # Per element, the sum of the magnitudes of the terms that make the averaged gradient: Σ over the window's
    # micro-batches and the ranks of |micro-batch gradient| / world size (the error analysis of the tolerances).
    terms: Tensors | None = None
    # The terms themselves: micro-batch index -> each rank's gradient of it (loss scaled as the step's, not averaged;
    # float32 copies): what synthetic faults add or take away (properties/faults.py), never recomputed.
    micro_grads: dict[int, list[Tensors]] = field(default_factory=dict)
    # Pre-clip norm of each part's gradients, in the order of its optimizers (one part: the global norm): what
    # optimizer_step_and_zero_grad(optimizer_k, model_k) returns.
    part_norms: list[float] = field(default_factory=list)


@dataclass
class OracleTrace:
    losses: list[list[float]] = field(default_factory=list)  # [rank][micro-batch]
    steps: list[OracleStep] = field(default_factory=list)
    leftover: list[Tensors] = field(default_factory=list)  # [rank]: the gradients the program leaves behind
    # Per tensor, the sum over the leftover's micro-batches of max|micro-batch gradient| (largest over ranks): the
    # scale of the round-off a low-precision run accumulates there (see OracleStep.window_scale).
    leftover_scale: dict[str, float] = field(default_factory=dict)
    # [rank], per element: the sum of the magnitudes of the terms that make each rank's leftover (OracleStep.terms).
    leftover_terms: list[Tensors] = field(default_factory=list)
    # micro-batch index -> each rank's gradient of it (float32), for the micro-batches the leftover holds (as
    # OracleStep.micro_grads)
    leftover_micro_grads: dict[int, list[Tensors]] = field(default_factory=dict)

    @property
    def final_params(self) -> Tensors:
        return self.steps[-1].params if self.steps and self.steps[-1].params is not None else {}


class _Float64Run:
    """The scenario's model, optimizer and lr schedule in float64, and its per-micro-batch losses."""

    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.program = scenario.program  # built once: losses() asks it where each micro-batch's data comes from
        self.model = build_model(scenario.model, scenario.seed).double()
        self.named = list(self.model.named_parameters())
        self.params = [p for _, p in self.named]
        # One optimizer per part the user prepares (two models: two optimizers, each clipped and measured apart).
        prefixes = [f"{part}." if part else "" for part in parts_of(scenario.model)]
        self.parts = [[p for name, p in self.named if name.startswith(prefix)] for prefix in prefixes]
        self.part_names = [[name for name, _ in self.named if name.startswith(prefix)] for prefix in prefixes]
        self.optimizers = [build_optimizer(scenario.optimizer, part) for part in self.parts]
        self.optimizer = self.optimizers[0]
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.optimizer, LR_LAMBDAS[scenario.lr_schedule])
                          if scenario.lr_schedule in LR_LAMBDAS else None)
        # Per (rank, micro-batch), the parameters its forward never reached (conditional computation): see ``unused``.
        self._unused: dict[tuple[int, int], frozenset[str]] = {}
        windows = scenario.windows
        self._window_of = [range(start, start + w) for start, w in zip(_starts(windows), windows) for _ in range(w)]

    def load(self, tensors: Tensors) -> None:
        with torch.no_grad():
            for name, p in self.named:
                p.copy_(tensors[name].double())

    def snapshot(self) -> Tensors:
        return {name: p.detach().clone() for name, p in self.named}

    def losses(self, rank: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss the user sees, what backpropagates: loss / configured G, or the user's token normalisation).
        Beyond the program (the P8 probe micro-batch) the plain mean loss scaled by the engine."""
        s = self.s
        source = self.program.source(rank, index, s.world_size) if index < len(self.program) else (rank, index)
        batch = cast(micro_batch(s.model, s.seed, *source, s.micro_batch_size), torch.float64)
        if (s.loss_norm == TRAINER_WINDOW_NORM or (s.api == "trainer" and s.loss_norm == "mean")) and index < len(
                self._window_of):
            # A head that normalises nothing itself: the Trainer divides its mean loss by the window's length (its rule
            # since #39659; G on uniform windows) before backward, and that is the loss the user's backward receives.
            loss = forward_loss(self.model, batch) / len(self._window_of[index])
            return loss, loss
        if s.loss_norm in TRAINER_NORMS and index < len(self._window_of):
            loss = s.world_size * forward_token_loss_sum(self.model, batch) / global_window_tokens(
                s.model, s.seed, s.world_size, self._window_of[index], s.micro_batch_size)
            return loss, loss
        if s.loss_norm == "tokens" and index < len(self._window_of):
            loss = forward_token_loss_sum(self.model, batch) / window_tokens(
                s.model, s.seed, rank, self._window_of[index], s.micro_batch_size)
            return loss, loss
        loss = forward_loss(self.model, batch)
        return loss, loss / s.configured_g

    def gradient(self, rank: int, index: int) -> tuple[float, Tensors]:
        loss, scaled = self.losses(rank, index)
        grads = torch.autograd.grad(scaled, self.params, allow_unused=True)
        self._unused[(rank, index)] = frozenset(name for (name, _), g in zip(self.named, grads) if g is None)
        return float(loss.detach()), {name: (torch.zeros_like(p) if g is None else g.detach())
                                      for (name, p), g in zip(self.named, grads)}

    def unused(self, window: range | list[int]) -> frozenset[str]:
        """Parameters no rank's forward reached in any micro-batch of ``window`` (after ``gradient`` ran for them): with
        DDP and in one process they keep ``.grad`` None and the torch optimizer skips them (no AdamW decay, no moment
        update); DeepSpeed and FSDP2 (opted in to reduce unused parameters) reduce zeros for them and step them, so
        there none is skipped (``backends.steps_parameters_no_rank_used``)."""
        if steps_parameters_no_rank_used(self.s):
            return frozenset()
        sets = [self._unused.get((rank, m), frozenset()) for rank in range(self.s.world_size) for m in window]
        return frozenset.intersection(*sets) if sets else frozenset()

    def part_norms(self, grads: Tensors) -> list[float]:
        return [_norm([grads[name] for name in names]) for names in self.part_names]

    def step(self, grads: Tensors, clip: float | None, skip: frozenset[str] = frozenset()) -> tuple[float, float]:
        """Clip each part's ``grads`` once and step its optimizer: (pre-clip global norm, lr used). ``skip``: parameters
        without a gradient (``unused``)."""
        for name, p in self.named:
            p.grad = None if name in skip else grads[name].double().clone()
        norm = _norm([grads[name].double() for name, _ in self.named])
        for part in self.parts:
            torch.nn.utils.clip_grad_norm_(part, float("inf") if clip is None else clip)
        lr = float(self.optimizer.param_groups[0]["lr"])
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad()
        return norm, lr

    def set_lr(self, mb: MicroExpect, when: str) -> None:
        """An lr the user set by hand at this point of the micro-batch: every param group of every optimizer."""
        if mb.lr_set is not None and mb.lr_set[0] == when:
            for optimizer in self.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = LEARNING_RATES[self.s.optimizer] * mb.lr_set[1]

    def advance(self, scheduler_steps: int) -> None:
        """The lr schedule's steps at the end of a micro-batch (accelerate's wrapper may step it without a step)."""
        for _ in range(scheduler_steps if self.scheduler is not None else 0):
            self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


def _starts(windows: tuple[int, ...]) -> list[int]:
    out, start = [], 0
    for w in windows:
        out.append(start)
        start += w
    return out


def _add(total: Tensors | None, more: Tensors) -> Tensors:
    return dict(more) if total is None else {k: total[k] + more[k] for k in total}


def _mean(per_rank: list[Tensors]) -> Tensors:
    return {k: sum(t[k] for t in per_rank) / len(per_rank) for k in per_rank[0]}


def _leftover(run: _Float64Run, expectation: Expectation, start: int, count: int, world: int,
              probe: int | None) -> tuple[list[Tensors], dict[str, float], list[Tensors], dict[int, list[Tensors]]]:
    """What each rank reads after the program: the gradients of the micro-batches after the last step, each rank's
    own until a micro-batch reduces them (DDP all-reduces everything accumulated so far), averaged at a ZeRO 1-3
    probe micro-batch, which adds its own gradient at a boundary. Also, per rank and element, the sum of the
    magnitudes of those terms (reduced the same way), and each micro-batch's gradients."""
    local: list[Tensors] = [{name: torch.zeros_like(p) for name, p in run.named} for _ in range(world)]
    terms: list[Tensors] = [{name: torch.zeros_like(p) for name, p in run.named} for _ in range(world)]
    scale: dict[str, float] = {name: 0.0 for name, _ in run.named}
    micro: dict[int, list[Tensors]] = {}

    def added(m: int) -> None:
        nonlocal local, terms
        grads = [run.gradient(r, m)[1] for r in range(world)]
        micro[m] = [{name: g.float() for name, g in rank.items()} for rank in grads]
        for name in scale:
            scale[name] += max((float(g[name].abs().max()) if g[name].numel() else 0.0) for g in grads)
        local = [_add(local[r], grads[r]) for r in range(world)]
        terms = [_add(terms[r], _magnitude(grads[r])) for r in range(world)]

    def reduced() -> None:
        nonlocal local, terms
        local, terms = [_mean(local)] * world, [_mean(terms)] * world

    for m in range(start, count):
        added(m)
        if expectation.micro_batches[m].reduces:
            reduced()
    if probe is not None:
        added(probe)
        reduced()
    return local, scale, terms, micro


def _magnitude(grads: Tensors) -> Tensors:
    return {name: g.abs() for name, g in grads.items()}


def _played(expectation: Expectation) -> int:
    return expectation.error_at if expectation.error is not None else len(expectation.micro_batches)


def expected(scenario: Scenario, expectation: Expectation, probe: int | None = None) -> OracleTrace:
    """Free-running from the initial weights along the model's steps."""
    run = _Float64Run(scenario)
    world = scenario.world_size
    trace = OracleTrace(losses=[[] for _ in range(world)])
    accumulated: list[Tensors | None] = [None] * world
    window_start = 0
    for m in range(_played(expectation)):
        mb = expectation.micro_batches[m]
        run.set_lr(mb, "before_forward")
        for r in range(world):
            loss, grads = run.gradient(r, m)
            trace.losses[r].append(loss)
            accumulated[r] = _add(accumulated[r], grads)
        run.set_lr(mb, "before_step")
        if mb.steps:
            averaged = _mean(accumulated)  # type: ignore[arg-type]
            norm, lr = run.step(averaged, mb.clip, run.unused(range(window_start, m + 1)))
            trace.steps.append(OracleStep(m, norm, averaged, run.snapshot(), lr, part_norms=run.part_norms(averaged)))
            accumulated, window_start = [None] * world, m + 1
        run.advance(mb.scheduler_steps)
        if mb.discards:  # a zero_grad() at the end of the micro-batch: what accumulated so far is gone
            accumulated, window_start = [None] * world, m + 1
    trace.leftover, trace.leftover_scale, trace.leftover_terms, trace.leftover_micro_grads = _leftover(
        run, expectation, expectation.leftover_start, _played(expectation), world, probe)
    return trace


def teacher_forced(scenario: Scenario, expectation: Expectation, trace: Trace, probe: int | None = None) -> OracleTrace:
    """Every step from where the run stood (``trace``: rank 0's, every rank holds the same weights): the float64
    gradients of the step's window at the run's parameters before it, the losses there, and the step applied to the
    run's own parameters with the run's own gradients (None where it recorded none). Steps past what the run took are
    not invented: the comparison of counts says that."""
    run = _Float64Run(scenario)
    world = scenario.world_size
    out = OracleTrace(losses=[[] for _ in range(world)])
    windows = expectation.windows
    steps = expectation.step_points
    micro = expectation.micro_batches
    before = trace.initial_params or run.snapshot()  # the seeded model's weights, as the oracle built them
    previous_end = 0
    for k, window in enumerate(windows):
        if k >= len(trace.steps) or not before:
            break
        run.load(before)
        per_rank: list[Tensors | None] = [None] * world
        magnitude: dict[str, float] = {}
        terms: Tensors | None = None
        micro_grads: dict[int, list[Tensors]] = {}
        # Every micro-batch since the last step: those a zero_grad() discarded give their losses (at the same weights)
        # and their lr sets and scheduler steps, but no gradient to the window.
        for m in range(previous_end, steps[k] + 1):
            run.set_lr(micro[m], "before_forward")
            if m in window:
                micro_grads[m] = []
            for r in range(world):
                loss, grads = run.gradient(r, m)
                out.losses[r].append(loss)
                if m not in window:
                    continue
                micro_grads[m].append({name: g.float() for name, g in grads.items()})
                per_rank[r] = _add(per_rank[r], grads)
                terms = _add(terms, {name: g.abs() / world for name, g in grads.items()})
                for name, g in grads.items():
                    magnitude[name] = magnitude.get(name, 0.0) + (float(g.abs().max()) / world if g.numel() else 0.0)
            if m != steps[k]:
                run.set_lr(micro[m], "before_step")
                run.advance(micro[m].scheduler_steps)
        previous_end = steps[k] + 1
        averaged = _mean(per_rank)  # type: ignore[arg-type]
        norm = _norm(list(averaged.values()))
        recorded = trace.steps[k].grads
        mb = micro[steps[k]]
        run.set_lr(mb, "before_step")
        params, lr = None, run.lr
        if recorded is not None and set(recorded) == set(averaged):
            _, lr = run.step(recorded, mb.clip, run.unused(window))
            params = run.snapshot()
        run.advance(mb.scheduler_steps)
        out.steps.append(OracleStep(steps[k], norm, averaged, params, lr, magnitude, terms, micro_grads,
                                    run.part_norms(averaged)))
        before = trace.steps[k].params
    end = steps[len(out.steps) - 1] + 1 if out.steps else 0
    if len(out.steps) == len(windows) and trace.final_params:
        run.load(trace.final_params)
        for m in range(end, _played(expectation)):
            for r in range(world):
                out.losses[r].append(float(run.losses(r, m)[0].detach()))
        out.leftover, out.leftover_scale, out.leftover_terms, out.leftover_micro_grads = _leftover(
            run, expectation, max(end, expectation.leftover_start), _played(expectation), world, probe)
    return out
