"""DESIGN §3 as executable code: what a conforming target must do on each micro-batch of a program.

Pure Python, no torch. The state (``State``) is what the stack remembers between micro-batches; ``step(state,
micro_batch)`` applies the rules of §3 to one micro-batch and says what must be seen: the resolved boundary, what
``accelerator.sync_gradients`` reports, whether the optimizer steps (and with which clipping), whether gradients are
reduced across ranks where the backend promises it, what ``optimizer_step_and_zero_grad`` returns, what a query
before the forward reads, and the engine's counters. ``expect`` runs a whole program. Each rule is one small function
headed by the clause of §3 it enforces (quoted); where §3 is silent the rule names its decision in
docs/decisions.md ("Model decisions"). Facts of the installed stack (``Facts``) are measured in the rank that ran,
never assumed.

A program the model calls invalid trains wrongly on upstream too (ranks stepping on gradients never all-reduced,
DeepSpeed stepping inside its own ``no_sync``): the strategies never generate one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .program import NO_CALL, MicroBatch, Program, lr_set_factor


class InvalidProgram(ValueError):
    """The program is wrong on upstream too; ``index`` names the micro-batch where it goes wrong."""

    def __init__(self, reason: str, index: int) -> None:
        super().__init__(f"micro-batch {index}: {reason}")
        self.reason, self.index = reason, index


class Raises(Exception):
    """The target must raise here (§3 "Fallbacks and errors"): ``name`` is the exception's class name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class Facts:
    """What the installed stack does that §3 builds on (measured per run, reported with every trace)."""

    backend: str  # "single" | "ddp" | "fsdp" | "deepspeed"
    world_size: int
    zero_stage: int | None = None
    accelerate_forwards_boundary: bool = True  # accelerate >= 1.8 passes sync_gradients to the wrapper (#3630)
    engine_boundary_api: bool = True  # DeepSpeed's set_gradient_accumulation_boundary (0.5.8+, #1588)
    engine_no_sync: bool = True  # DeepSpeed >= 0.16: engine.no_sync() exists and step() asserts inside it
    # engine.get_global_grad_norm() has a value after a step: not at ZeRO-0 with a torch optimizer (measured, 0.19.8),
    # nor with zero_optimization.compute_grad_norm false (#8331)
    engine_reports_grad_norm: bool = True

    @property
    def deepspeed(self) -> bool:
        return self.backend == "deepspeed"

    @property
    def partitions_gradients(self) -> bool:
        return self.deepspeed and (self.zero_stage or 0) >= 2


BACKEND_FACTS = {
    "single": Facts("single", 1),
    "ddp": Facts("ddp", 2),
    "fsdp": Facts("fsdp", 2),
    **{f"ds{stage}": Facts("deepspeed", 2, stage) for stage in range(4)},
}


@dataclass(frozen=True)
class MicroExpect:
    boundary: bool  # the resolved boundary of this micro-batch's backward
    sync_gradients: bool  # what accelerator.sync_gradients reports after the backward
    steps: bool  # a real optimizer step happens during this micro-batch
    clip: float | None = None  # the bound that step clips to (None: no clipping)
    reduces: bool | None = None  # gradients all-reduced across ranks during this micro-batch; None: not judged
    # optimizer_step_and_zero_grad's first call here: "norm", "none" or "-1"; None: not called
    returned: str | None = None
    scheduler_steps: int = 0  # lr-scheduler steps taken at the end of this micro-batch (after its step)
    # A query before the forward: (accelerator.sync_gradients, engine.is_gradient_accumulation_boundary()); None in
    # either place: not judged there (§3 says nothing of it); None as a whole: no query
    query: tuple[bool | None, bool | None] | None = None
    warns_clip_mismatch: bool = False  # the call's max_grad_norm differs from DeepSpeed's clipping: warned here
    # the later calls of the same micro-batch, in order (a second call for one optimizer; the next model's optimizer)
    returned_more: tuple[str, ...] = ()
    # A zero_grad() at the end of this micro-batch discards the gradients accumulated since the last step: the next
    # step's window starts after it (PyTorch's meaning; where accelerate's wrapper lets it act)
    discards: bool = False
    # An lr set by hand in this micro-batch: (when: "before_forward" | "before_step", factor of the optimizer's lr)
    lr_set: tuple[str, float] | None = None

    @property
    def oracle_plan(self) -> tuple:
        """What the float64 oracle trains along (the runner caches the free-running oracle by it)."""
        return (self.steps, self.clip, self.scheduler_steps, self.reduces, self.discards, self.lr_set)

    @property
    def calls(self) -> tuple[str, ...]:
        """What every optimizer_step_and_zero_grad call here returns, in order (empty: not called)."""
        return () if self.returned is None else (self.returned, *self.returned_more)


@dataclass(frozen=True)
class Expectation:
    micro_batches: tuple[MicroExpect, ...]
    engine_global_steps: int | None = None
    engine_micro_steps: int | None = None
    grads_left: bool = False  # gradients accumulated after the last step remain (nothing zeroed them)
    error: str | None = None  # the exception the target must raise (class name), at micro-batch ``error_at``
    error_at: int | None = None

    @property
    def step_points(self) -> list[int]:
        return [i for i, mb in enumerate(self.micro_batches) if mb.steps]

    @property
    def windows(self) -> list[range]:
        """The micro-batches whose gradients each step applies: from the previous step's next one, or from after the
        last zero_grad() that discarded what came before."""
        out, start = [], 0
        for index, mb in enumerate(self.micro_batches):
            if mb.steps:
                out.append(range(start, index + 1))
                start = index + 1
            if mb.discards:
                start = index + 1
        return out

    @property
    def leftover_start(self) -> int:
        """The first micro-batch whose gradients the program leaves behind (after its last step or discard)."""
        played = self.error_at if self.error is not None else len(self.micro_batches)
        start = 0
        for index, mb in enumerate(self.micro_batches[:played]):
            if mb.steps or mb.discards:
                start = index + 1
        return start


@dataclass
class State:
    """What the stack remembers between micro-batches, and the program's fixed settings."""

    facts: Facts
    g: int  # the configured gradient_accumulation_steps
    clip: float | None  # the scenario's clipping (DeepSpeed's gradient_clipping; the loop's max_grad_norm)
    scheduler: bool = False  # the loop steps accelerate's lr scheduler after each optimizer call
    optimizers: int = 1  # models prepared, each with its optimizer
    index: int = 0  # the next micro-batch
    schedule_sync: bool = True  # GradientState.sync_gradients as the schedule last set it (accelerate's default True)
    accumulate_step: int = 0  # Accelerator.step, accumulate()'s counter
    override: bool | None = None
    unreduced: bool = False  # some rank holds gradients no reduction has averaged since the last step
    last_boundary: bool | None = None  # resolved boundary of the most recent backward (None: none yet)
    last_reported: bool | None = None  # what sync_gradients reported after it
    stepped: set[int] = field(default_factory=set)  # optimizers stepped by optimizer_step_and_zero_grad since it
    warned_clip: bool = False
    pending: bool = False  # gradients accumulated since the last step
    micro_steps: int = 0  # DeepSpeed's engine.micro_steps (engine.step() calls)
    global_steps: int = 0
    stepped_last_backward: bool = False  # the DeepSpeed engine really stepped in the most recent backward
    # The program's accelerator options (GradientAccumulationPlugin): accumulate() reduces off its boundary too; the
    # DataLoader's end forces accumulate()'s boundary
    sync_each_batch: bool = False
    sync_with_dataloader: bool = True
    engine_flag: bool | None = None  # DeepSpeed's sticky _is_gradient_accumulation_boundary (None: its counter decides)
    fsdp_sync: bool = True  # FSDP2's module flag requires_gradient_sync (sticky; accelerate's no_sync leaves it True)
    lr_sets: int = 0  # lrs the user has set by hand so far

    def copy(self) -> "State":
        return copy.deepcopy(self)


def start(facts: Facts, gradient_accumulation_steps: int, clip: float | None, scheduler: bool = False,
          optimizers: int = 1, program: Program | None = None) -> State:
    """The state before the first micro-batch; ``program`` gives the accelerator options it was built with."""
    state = State(facts, gradient_accumulation_steps, clip, scheduler, optimizers)
    if program is not None:
        state.sync_each_batch, state.sync_with_dataloader = program.sync_each_batch, program.sync_with_dataloader
    return state


def expect(program: Program, facts: Facts, gradient_accumulation_steps: int, clip: float | None,
           scheduler: bool = False, optimizers: int = 1) -> Expectation:
    """The expectation for ``program`` on a stack with these facts (raises ``InvalidProgram``). ``optimizers``: how
    many models the loop prepared, each with its optimizer (every step and optimizer_step_and_zero_grad call of the
    program is made once per optimizer, in order)."""
    state = start(facts, gradient_accumulation_steps, clip, scheduler, optimizers, program)
    expects: list[MicroExpect] = []
    for index, mb in enumerate(program.micro_batches):
        try:
            expects.append(step(state, mb, last_of_loader=program.dataloader and index == len(program) - 1,
                                restart=index == program.restart_at))
        except Raises as raised:
            return _finish(state, expects, error=raised.name, error_at=index)
    return _finish(state, expects)


def _finish(s: State, expects: list[MicroExpect], error: str | None = None, error_at: int | None = None) -> Expectation:
    deepspeed = s.facts.deepspeed
    return Expectation(tuple(expects), engine_global_steps=s.global_steps if deepspeed else None,
                       engine_micro_steps=s.micro_steps if deepspeed else None, grads_left=s.pending,
                       error=error, error_at=error_at)


def step(s: State, mb: MicroBatch, last_of_loader: bool = False, restart: bool = False) -> MicroExpect:
    """One micro-batch under §3 (mutates ``s``; raises ``InvalidProgram`` or ``Raises``)."""
    index = s.index
    s.index += 1
    if mb.driver == "engine":
        return _raw_engine(s, mb, index)
    if restart:
        _new_accelerator(s)
    lr_set = _set_lr(s, mb, "before_forward")
    _fsdp_calls(s, mb, index)
    _set_override(s, mb)
    held = _enter_context(s, mb, last_of_loader)
    query = _query(s, mb)
    explicit, resolved = _resolve(s, mb)
    if s.facts.deepspeed:
        boundary, reduces = _deepspeed_backward(s, explicit, held, mb.context == "accumulate", index)
    else:
        boundary, reduces = resolved, _reduction(s, explicit, resolved, held)
        s.pending = True
    reported = resolved  # §3 "After an explicit boundary": reports the resolved boundary
    s.last_boundary, s.last_reported = boundary, reported
    s.stepped.clear()
    lr_set = _set_lr(s, mb, "before_step") or lr_set
    steps, clip, returned, warns = _after(s, mb, reported, boundary, index)
    return MicroExpect(boundary=bool(boundary), sync_gradients=bool(reported), steps=steps, clip=clip,
                       reduces=reduces, returned=returned[0] if returned else None,
                       scheduler_steps=_scheduler_steps(s, mb, reported), query=query, warns_clip_mismatch=warns,
                       returned_more=tuple(returned[1:]) if returned else (),
                       discards=_optimizer_zero_grad(s, mb, reported), lr_set=lr_set)


# ------------------------------------------------------------------------------------------------ the rules
def _new_accelerator(s: State) -> None:
    """§3 "A new accelerator starts without one [override]." Decision (docs/decisions.md): it starts as accelerate
    builds any accelerator — no override, accumulate()'s counter at 0, no backward yet — and the gradient state, which
    accelerate shares between accelerators of one process, keeps its last value."""
    s.override = None
    s.accumulate_step = 0
    s.last_boundary = s.last_reported = None
    s.stepped.clear()
    s.warned_clip = False


def _set_override(s: State, mb: MicroBatch) -> None:
    """§3 set_deepspeed_gradient_accumulation_boundary: "Stores the override" (``None`` clears it); it persists across
    boundaries, steps, and accumulate() / no_sync() entries and exits until None is set. (Its effects on DDP and the
    engine are read from ``s.override`` where they apply: ``_reduction``, ``_query``.)"""
    if mb.set_boundary != NO_CALL:
        s.override = mb.set_boundary


def _set_lr(s: State, mb: MicroBatch, when: str) -> tuple[str, float] | None:
    """An lr set by hand (``group["lr"] = lr * factor`` on every param group of every optimizer): PyTorch's meaning,
    which §3 leaves to the user — the next ``optimizer.step()`` uses it (a set between ``backward`` and ``step`` applies
    to that very step: accelerate#2951 is where DeepSpeed's engine, which steps inside ``backward``, uses it one step
    late). A prepared lr scheduler's next step overwrites it (LambdaLR sets base lr × factor), as torch does."""
    if mb.set_lr != when:
        return None
    factor = lr_set_factor(s.lr_sets)
    s.lr_sets += 1
    return when, factor


def _optimizer_zero_grad(s: State, mb: MicroBatch, reported: bool) -> bool:
    """``optimizer.zero_grad()`` on the prepared optimizer at the end of the micro-batch: accelerate's
    ``AcceleratedOptimizer.zero_grad`` acts only while ``sync_gradients`` is True (its accumulate() idiom calls it after
    every micro-batch and relies on that), and where it acts it means what PyTorch's does — the gradients accumulated
    since the last step are discarded (DESIGN §3 is silent; docs/decisions.md "zero_grad mid-window"). On DeepSpeed
    accelerate's optimizer wrapper does nothing (the engine zeroes at its step): sync_gradients is True there only
    where the engine has just stepped, so nothing is pending — except on accelerate <= 1.7, whose engine counter may
    not have stepped: there the call is ignored, as upstream ignores it. Returns whether gradients were discarded."""
    if mb.zero_grad != "optimizer" or not reported or s.facts.deepspeed:
        return False
    s.pending = s.unreduced = False
    return True


def _fsdp_calls(s: State, mb: MicroBatch, index: int) -> None:
    """FSDP2's own calls on the prepared module, before the forward (torch's documented meaning, untouched by §3):
    ``set_requires_gradient_sync(flag)`` is sticky — a backward reduce-scatters only while it is True (accelerate's
    ``no_sync()``, and ``accumulate()`` off its boundary, set it False and back to True on exit, whatever it was:
    accelerate 1.15's ``Accelerator.no_sync``); ``set_is_last_backward(flag)`` only decides whether the backward waits on
    pending reductions (streams: nothing to wait for on CPU), which changes no number."""
    if mb.fsdp_sync == NO_CALL and mb.fsdp_last_backward == NO_CALL:
        return
    if s.facts.backend != "fsdp":
        raise InvalidProgram("FSDP2's module calls need an FSDP2 module", index)
    if mb.fsdp_sync != NO_CALL:
        s.fsdp_sync = bool(mb.fsdp_sync)


def _enter_context(s: State, mb: MicroBatch, last_of_loader: bool) -> bool:
    """accelerate's own behaviour, which §3 leaves as it is: ``accumulate()`` counts micro-batches and syncs every G-th
    (and at the end of a prepared DataLoader, which restarts the count — §3 "accumulate()'s own boundary at the end of
    a DataLoader is the schedule's word" — unless the plugin says ``sync_with_dataloader=False``); off its boundary it
    enters ``no_sync``, unless the plugin says ``sync_each_batch`` (in a world of several ranks: accelerate's
    ``use_distributed``); the user's own ``no_sync()`` holds the reduction without touching the schedule. Returns
    whether a no_sync context is in effect."""
    if mb.context == "accumulate":
        if last_of_loader and s.sync_with_dataloader:
            s.accumulate_step, s.schedule_sync = 0, True
        else:
            s.accumulate_step += 1
            s.schedule_sync = s.accumulate_step % s.g == 0
        held = not s.schedule_sync and not (s.sync_each_batch and s.facts.world_size > 1)
    else:
        held = mb.context == "no_sync"
    if s.facts.backend == "fsdp" and held:
        s.fsdp_sync = True  # accelerate's no_sync() sets it back to True on exit
        return True
    return held or (s.facts.backend == "fsdp" and not s.fsdp_sync)


def _query(s: State, mb: MicroBatch) -> tuple[bool | None, bool | None] | None:
    """§3 "After an explicit boundary accelerator.sync_gradients reports the resolved boundary of the most recent
    backward (until the next accumulate() entry or backward)"; §3 "On DeepSpeed the override is visible to the engine
    before the forward pass". Inside accumulate() the entry has spoken (the schedule's value); outside it, the last
    report. Decision: before any backward of this accelerator, and the engine's boundary without an override, are not
    judged (§3 says nothing of them)."""
    if not mb.query:
        return None
    sync = s.schedule_sync if mb.context == "accumulate" else s.last_reported
    engine = s.override if (s.facts.deepspeed and s.facts.engine_boundary_api) else None
    return sync, engine


def _resolve(s: State, mb: MicroBatch) -> tuple[bool | None, bool]:
    """§3 Boundary resolution, first that applies: 1. the explicit ``is_final_micro_batch`` (per call, never sticky);
    2. the persistent override; 3. the schedule's ``sync_gradients`` — never a value reported for an earlier explicit
    boundary. Returns (the user's explicit boundary or None, the resolved boundary)."""
    explicit = mb.backward if mb.backward is not None else s.override
    return explicit, (explicit if explicit is not None else s.schedule_sync)


def _reduction(s: State, explicit: bool | None, boundary: bool, held: bool) -> bool | None:
    """Off DeepSpeed, whether this backward reduces gradients across ranks (None where nothing is promised: one
    process).
    - DDP: its reducer runs when sync was on at the forward: no ``no_sync()`` in effect and no override ``False`` (§3
      "with DDP, a False set before the forward pass also disables gradient all-reduce for that micro-batch [...];
      True re-enables it" — None clears the override, so it re-enables too). §3 "the reference re-syncs gradients
      only at an explicit boundary whose forward ran without sync": an explicit True reduces anyway.
    - FSDP2 decides at backward: §3 "an explicit boundary sets FSDP2's gradient sync for that backward (True reduces
      what no_sync() held back, False holds the reduction)"; otherwise no_sync() and an override False hold it."""
    facts = s.facts
    if facts.world_size < 2 or facts.backend not in ("ddp", "fsdp"):
        return None
    syncs_at_forward = not held and s.override is not False
    if facts.backend == "ddp":
        reduces = syncs_at_forward or (boundary and explicit is not None)
    else:
        reduces = explicit if explicit is not None else syncs_at_forward
    s.unreduced = not reduces
    return reduces


def _deepspeed_backward(s: State, explicit: bool | None, held: bool, in_accumulate: bool,
                        index: int) -> tuple[bool, bool | None]:
    """§3 backward on DeepSpeed: "records the boundary, forwards it to engine.set_gradient_accumulation_boundary when
    the engine has it, runs engine.backward(loss), and calls engine.step() only at a boundary. The engine's
    global_steps therefore counts boundaries." Returns (the boundary the engine steps on, whether ZeRO 0/1 reduced).

    - no_sync: accelerate enters the engine's ``no_sync()`` off its boundary at ZeRO 0/1 (DeepSpeed >= 0.16); §3
      "ZeRO-2/3 partition gradients and reduce every micro-batch by design, so no_sync() there is a no-op". Only a
      boundary the user gave lifts it (§3: code without the new API behaves as upstream, where a step inside
      ``no_sync`` asserts): such a program is invalid.
    - §3 Fallbacks: an engine without the boundary API follows its own counter; an explicit boundary that disagrees
      raises.
    - Untouched code on accelerate <= 1.7 (no schedule passed, §3 "behaves exactly as the installed upstream"):
      ``engine.step()`` after every backward and the engine's counter decides — inside accumulate() the schedule's
      boundary reaches the engine as upstream's no_sync does (where they disagree, a DataLoader's partial window,
      upstream loses the window: accelerate#3552, a known failure, never expected)."""
    facts = s.facts
    engine_no_sync = held and facts.engine_no_sync and not facts.partitions_gradients
    counter = (s.micro_steps + 1) % s.g == 0
    if not facts.engine_boundary_api:
        if explicit is not None and explicit != counter:
            raise Raises("BoundaryUnsupportedError")
        return _every_backward_steps(s, counter, engine_no_sync, index), _zero01_reduces(facts, counter, engine_no_sync)
    if explicit is None and not facts.accelerate_forwards_boundary:
        boundary = s.schedule_sync if in_accumulate else counter
        return _every_backward_steps(s, boundary, engine_no_sync, index), _zero01_reduces(facts, boundary, engine_no_sync)
    boundary = explicit if explicit is not None else s.schedule_sync
    s.engine_flag = boundary  # forwarded to engine.set_gradient_accumulation_boundary before engine.backward
    lifted = boundary and explicit is not None
    if boundary and engine_no_sync and not lifted:
        raise InvalidProgram("DeepSpeed steps inside its own no_sync() (it asserts there, upstream too)", index)
    if boundary:
        s.micro_steps += 1
        s.global_steps += 1
    elif not facts.accelerate_forwards_boundary and not engine_no_sync:
        # Decision (docs/decisions.md, "a held boundary counts on accelerate <= 1.7"): there upstream steps the
        # engine after every backward and its counter decides the next plain backward; §3 rule 1 (never sticky)
        # means a held micro-batch must count as upstream would have counted it.
        s.micro_steps += 1
    s.stepped_last_backward = boundary
    s.pending = not boundary  # the engine zeroes its gradients at every step
    return boundary, _zero01_reduces(facts, boundary, engine_no_sync and not lifted)


def _every_backward_steps(s: State, boundary: bool, engine_no_sync: bool, index: int) -> bool:
    """``engine.step()`` after every backward: the engine's counter (or flag) decides whether it really steps."""
    if engine_no_sync:
        raise InvalidProgram("engine.step() inside DeepSpeed's own no_sync() (it asserts there, upstream too)", index)
    s.micro_steps += 1
    s.global_steps += int(boundary)
    s.stepped_last_backward = boundary
    s.pending = not boundary
    return boundary


def _zero01_reduces(facts: Facts, boundary: bool, inside_no_sync: bool) -> bool | None:
    """ZeRO 0/1 reduce gradients only at the boundary (measured); ZeRO 2/3 every micro-batch into partitions by
    design, so their communication is not judged."""
    if facts.world_size < 2 or facts.partitions_gradients:
        return None
    return boundary and not inside_no_sync


def _after(s: State, mb: MicroBatch, reported: bool, boundary: bool,
           index: int) -> tuple[bool, float | None, tuple[str, ...] | None, bool]:
    """What follows the backward: (a real step happened, the bound it clipped to, what each optimizer_step_and_zero_grad
    call returned, whether a clipping mismatch was warned).
    - ``optimizer.step()`` (and clip): accelerate's optimizer wrapper steps only when ``sync_gradients`` is True (§3
      "an explicit boundary also sets GradientState.sync_gradients for this micro-batch, so an AcceleratedOptimizer.step()
      that follows steps exactly at boundaries"); on DeepSpeed it is a no-op (the engine stepped in backward) and the
      engine clips with its config's gradient_clipping at every step.
    - ``optimizer_step_and_zero_grad``: see ``_step_and_zero_grad``."""
    facts = s.facts
    if facts.deepspeed:  # the engine stepped in backward exactly at the boundary it was given
        returned, warns = _step_and_zero_grad(s, mb, index) if mb.after == "step_and_zero_grad" else (None, False)
        return bool(boundary), (s.clip if boundary else None), returned, warns
    if mb.after in ("step", "clip_step"):
        if not reported:
            return False, None, None, False
        _optimizer_step(s, index)
        return True, (s.clip if mb.after == "clip_step" else None), None, False
    if mb.after == "step_and_zero_grad":
        returned, warns = _step_and_zero_grad(s, mb, index)
        steps = bool(s.stepped)  # cleared by this micro-batch's backward: stepped by these calls
        return steps, (mb.max_grad_norm(s.clip) if steps else None), returned, warns
    return False, None, None, False


def _step_and_zero_grad(s: State, mb: MicroBatch, index: int) -> tuple[tuple[str, ...], bool]:
    """§3 optimizer_step_and_zero_grad: "At a boundary" means the resolved boundary of the most recent backward; not at
    a boundary it "does nothing, returns None" — "whatever its arguments". "Each optimizer steps once per boundary: a
    second optimizer_step_and_zero_grad for the same optimizer after the same boundary returns None and does nothing;
    a call for another optimizer steps that one." Without ``model`` it measures, clips and steps the optimizer's own
    parameters (the same numbers here: each optimizer owns one model's parameters); ``max_grad_norm=None`` clips
    nothing but still returns the norm. DeepSpeed: the engine already stepped in backward; it returns the pre-clip
    global norm, "-1.0 only when a step happened and no norm can be had" (the engine reports none and its gradients
    are partitioned, ZeRO 1-3: at ZeRO-0 the full gradients exist before the step and are measured there); "a
    max_grad_norm that differs from [DeepSpeed's gradient_clipping] warns once, naming both values" — decision: once
    per accelerator, at the first call that reaches a boundary (off a boundary the call does nothing at all)."""
    facts = s.facts
    calls = [optimizer for optimizer in range(s.optimizers) for _ in range(2 if mb.form == "twice" else 1)]
    kinds, warns = [], False
    for optimizer in calls:
        at_boundary = bool(s.last_boundary) and optimizer not in s.stepped
        if not at_boundary:
            kinds.append("none")
            continue
        s.stepped.add(optimizer)
        if facts.deepspeed:
            configured = s.clip if s.clip is not None else 0.0
            bound = mb.max_grad_norm(s.clip)
            if bound is not None and float(bound) != configured and not s.warned_clip:
                s.warned_clip = warns = True
            no_norm = not facts.engine_reports_grad_norm and (facts.zero_stage or 0) >= 1
            kinds.append(("-1" if no_norm else "norm") if s.stepped_last_backward else "none")
        else:
            if len(s.stepped) == 1:
                _optimizer_step(s, index)
            kinds.append("norm")
    return tuple(kinds), warns


def _optimizer_step(s: State, index: int) -> None:
    """Off DeepSpeed a step applies the gradients every rank holds; stepping on gradients some micro-batch never
    reduced makes the ranks diverge — on upstream too — so such a program is invalid."""
    if s.unreduced:
        raise InvalidProgram("the optimizer steps on gradients some micro-batch never all-reduced: the ranks "
                             "diverge (the user's no_sync() without a synchronising backward before the step)", index)
    s.pending = False


def _scheduler_steps(s: State, mb: MicroBatch, reported: bool) -> int:
    """§3 "The prepared lr scheduler, stepped after every micro-batch as accelerate's idiom does, advances exactly at
    resolved boundaries (accelerate's AcceleratedScheduler reads sync_gradients ...)": the loop steps it after each
    optimizer call; accelerate's wrapper then steps it num_processes times when sync_gradients is True (a torch
    scheduler never reaches DeepSpeed's engine: accelerate hands it only DeepSpeed's own schedulers)."""
    if not s.scheduler or mb.after == "none" or not reported:
        return 0
    return s.facts.world_size


def _raw_engine(s: State, mb: MicroBatch, index: int) -> MicroExpect:
    """The seed's "before" code on the raw engine (not the new API): an optional
    engine.set_gradient_accumulation_boundary(b); engine.backward(loss); engine.step() — DeepSpeed's documented idiom,
    judged as DeepSpeed documents it: the flag is sticky (never reset by step(); a call persists until the next), and
    without one ever set the engine's counter decides, (micro_steps + 1) % G == 0."""
    if not s.facts.deepspeed:
        raise InvalidProgram("the engine driver needs a DeepSpeed engine", index)
    lr_set = _set_lr(s, mb, "before_forward")
    if mb.backward is not None and not s.facts.engine_boundary_api:
        # The user's own call of a method this engine lacks (DeepSpeed < 0.5.8, a fork): no fallback can answer it.
        raise Raises("AttributeError")
    if mb.backward is not None:
        s.engine_flag = mb.backward
    boundary = s.engine_flag if s.engine_flag is not None else (s.micro_steps + 1) % s.g == 0
    lr_set = _set_lr(s, mb, "before_step") or lr_set
    steps = _every_backward_steps(s, boundary, False, index)
    return MicroExpect(boundary=boundary, sync_gradients=s.schedule_sync, steps=steps, clip=s.clip if steps else None,
                       reduces=_zero01_reduces(s.facts, boundary, False), scheduler_steps=0,
                       discards=_engine_zero_grad(s, mb), lr_set=lr_set)


def _engine_zero_grad(s: State, mb: MicroBatch) -> bool:
    """``engine.zero_grad()`` or ``engine.optimizer.zero_grad()`` after ``engine.step()``: PyTorch's meaning, the
    gradients accumulated since the last step are discarded (DESIGN §3 is silent; docs/decisions.md "zero_grad
    mid-window"). deepspeed#6554 (open) measured them to differ per stage — discarded at ZeRO-0/1, ignored at ZeRO-2,
    and at ZeRO-3 ignored by the engine's and honoured by the optimizer's: the stages that ignore it fail here, by
    name, in the catalogue. Returns whether gradients were discarded."""
    if mb.zero_grad == "none":
        return False
    s.pending = False
    return True
