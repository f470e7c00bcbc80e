"""DESIGN §3 as executable code: what a conforming target must do for each micro-batch of a program.

Pure Python, no torch: given a program and the facts of the installed stack that §3 depends on, it gives per
micro-batch the resolved boundary, what ``accelerator.sync_gradients`` reports, whether the optimizer steps (and
with which clipping), whether gradients are reduced across ranks where the backend promises it, what
``optimizer_step_and_zero_grad`` returns, and the engine's counters. Each rule of §3 is one commented place
(``# §3 …``). The float64 oracle trains along the steps it gives; programs it calls invalid are ones that train
wrongly on upstream too (ranks stepping on unreduced gradients, DeepSpeed's step inside its own ``no_sync``),
which the strategies never generate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .program import NO_CALL, MicroBatch, Program


class InvalidProgram(ValueError):
    """The program is wrong on upstream too; ``index`` names the micro-batch where it goes wrong."""

    def __init__(self, reason: str, index: int) -> None:
        super().__init__(f"micro-batch {index}: {reason}")
        self.reason, self.index = reason, index


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
    returned: str | None = None  # optimizer_step_and_zero_grad: "norm", "none" or "-1"; None: not called
    scheduler_steps: int = 0  # lr-scheduler steps taken at the end of this micro-batch (after its step)


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
        """The micro-batches whose gradients each step applies (from the previous step's next one)."""
        out, start = [], 0
        for end in self.step_points:
            out.append(range(start, end + 1))
            start = end + 1
        return out


@dataclass
class _State:
    """What the stack remembers between micro-batches."""

    schedule_sync: bool = True  # GradientState.sync_gradients as the schedule last set it (accelerate's default True)
    accumulate_step: int = 0  # Accelerator.step, accumulate()'s counter
    override: bool | None = None
    ddp_sync_enabled: bool = True  # DDP's require_backward_grad_sync outside any no_sync context
    unreduced: bool = False  # DDP: some gradient was accumulated without an all-reduce since the last one
    last_boundary: bool | None = None
    consumed: bool = False
    stepped_last_backward: bool = False
    pending: bool = False  # gradients accumulated since the last step
    engine_flag: bool | None = None  # DeepSpeed's sticky boundary flag
    wrapper_set_flag: bool = False
    micro_steps: int = 0
    global_steps: int = 0
    expects: list[MicroExpect] = field(default_factory=list)


def expect(program: Program, facts: Facts, gradient_accumulation_steps: int, clip: float | None,
           scheduler: bool = False) -> Expectation:
    """The expectation for ``program`` on a stack with these facts (raises ``InvalidProgram``)."""
    state = _State()
    g = gradient_accumulation_steps
    for index, mb in enumerate(program.micro_batches):
        last_of_loader = program.dataloader and index == len(program) - 1
        try:
            state.expects.append(_micro_batch(state, mb, facts, g, clip, scheduler, index, last_of_loader))
        except _Raises as raised:
            return _finish(state, facts, error=raised.name, error_at=index)
    return _finish(state, facts)


class _Raises(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _finish(state: _State, facts: Facts, error: str | None = None, error_at: int | None = None) -> Expectation:
    return Expectation(tuple(state.expects),
                       engine_global_steps=state.global_steps if facts.deepspeed else None,
                       engine_micro_steps=state.micro_steps if facts.deepspeed else None,
                       grads_left=state.pending, error=error, error_at=error_at)


def _micro_batch(s: _State, mb: MicroBatch, facts: Facts, g: int, clip: float | None, scheduler: bool,
                 index: int, last_of_loader: bool) -> MicroExpect:
    if mb.driver == "engine":
        return _engine_micro_batch(s, mb, facts, g, clip, scheduler, index)
    # §3 set_deepspeed_gradient_accumulation_boundary: persistent; None clears it; on DeepSpeed it reaches the
    # engine at once; with DDP, False skips the all-reduce from the next forward on, leaving False re-enables it.
    if mb.set_boundary != NO_CALL:
        previous, s.override = s.override, mb.set_boundary
        if facts.deepspeed and facts.engine_boundary_api:
            s.engine_flag, s.wrapper_set_flag = s.override, s.override is not None
        if s.override is False or previous is False:
            s.ddp_sync_enabled = s.override is not False
    # accumulate(): accelerate's schedule (the DataLoader's end forces a boundary and restarts the count), and
    # no_sync() off its boundary; the user's own no_sync() the same without touching the schedule.
    no_sync = mb.context == "no_sync"
    if mb.context == "accumulate":
        if last_of_loader:
            s.accumulate_step, s.schedule_sync = 0, True
        else:
            s.accumulate_step += 1
            s.schedule_sync = s.accumulate_step % g == 0
        no_sync = not s.schedule_sync
    # What no_sync() does: DDP holds back its all-reduce; DeepSpeed >= 0.16 enters engine.no_sync() at ZeRO 0/1
    # (a no-op context where the engine partitions gradients: accelerate #3656, and the reference on every version).
    engine_no_sync = no_sync and facts.deepspeed and facts.engine_no_sync and not facts.partitions_gradients
    ddp_forward_syncs = facts.backend == "ddp" and s.ddp_sync_enabled and not no_sync

    # §3 boundary resolution, first that applies: 1. the keyword (per call, never sticky); 2. the override;
    # 3. the schedule's sync_gradients, never a value reported for an earlier explicit boundary.
    explicit = mb.backward if mb.backward is not None else s.override
    resolved = explicit if explicit is not None else s.schedule_sync
    # §3 after an explicit boundary sync_gradients reports the resolved boundary (and, without one, the schedule's).
    reported = resolved
    if facts.deepspeed:
        boundary, reduces = _deepspeed_backward(s, facts, g, explicit, engine_no_sync, index,
                                                in_accumulate=mb.context == "accumulate")
        steps = boundary
    else:
        boundary = resolved
        reduces = None
        if facts.backend == "ddp" and facts.world_size > 1:
            # §3 the reference re-syncs only at an explicit boundary whose forward ran without sync.
            reduces = ddp_forward_syncs or (boundary and explicit is not None)
            s.unreduced = False if reduces else True
        elif facts.backend == "fsdp" and facts.world_size > 1:
            # FSDP2 decides at backward: an explicit boundary sets the sync for its backward (True reduces what was
            # held back, False holds this one back too); otherwise no_sync() and an override False hold it back.
            reduces = explicit if explicit is not None else (s.ddp_sync_enabled and not no_sync)
            s.unreduced = False if reduces else True
        s.pending = True
        steps = False
    s.last_boundary, s.consumed = boundary, False
    if facts.deepspeed:
        s.pending = not steps  # the engine zeroes its gradients at every step
    returned, step_clip, sched = None, None, 0
    if mb.after in ("step", "clip_step"):
        # accelerate's optimizer wrapper steps and zeroes only when sync_gradients is True; DeepSpeed's is a no-op.
        if not facts.deepspeed and reported:
            steps = _optimizer_step(s, index)
            step_clip = clip if mb.after == "clip_step" else None
    elif mb.after == "step_and_zero_grad":
        # §3 "at a boundary": the resolved boundary of the most recent backward; a second call does nothing.
        at_boundary = bool(s.last_boundary) and not s.consumed
        s.consumed = s.consumed or at_boundary
        if facts.deepspeed:
            # §3 -1.0 only when a step happened and no norm can be had: the engine reports none and its gradients
            # are partitioned (ZeRO 1-3); at ZeRO-0 the full gradients exist before the step and are measured there.
            no_norm = not facts.engine_reports_grad_norm and (facts.zero_stage or 0) >= 1
            returned = ("-1" if no_norm else "norm") if (at_boundary and s.stepped_last_backward) else "none"
        elif at_boundary:
            steps = _optimizer_step(s, index)
            step_clip, returned = clip, "norm"
        else:
            returned = "none"
    if facts.deepspeed and steps:
        step_clip = clip  # DeepSpeed clips with its config's gradient_clipping at every step
    if scheduler and mb.after != "none" and reported:
        # The user steps accelerate's scheduler after each optimizer call; its wrapper steps it num_processes times
        # whenever sync_gradients is True (a torch scheduler never reaches DeepSpeed's engine: accelerate hands it
        # only DeepSpeed's own schedulers), whether or not the engine really stepped.
        sched = facts.world_size
    return MicroExpect(boundary=bool(boundary), sync_gradients=bool(reported), steps=steps, clip=step_clip,
                       reduces=reduces, returned=returned, scheduler_steps=sched)


def _optimizer_step(s: _State, index: int) -> bool:
    if s.unreduced:
        raise InvalidProgram("the optimizer steps on gradients some micro-batch never all-reduced: the ranks "
                             "diverge (the user's no_sync() without a synchronising backward before the step)", index)
    s.pending = False
    return True


def _deepspeed_backward(s: _State, facts: Facts, g: int, explicit: bool | None, engine_no_sync: bool,
                        index: int, in_accumulate: bool) -> tuple[bool, bool | None]:
    """The DeepSpeed wrapper's backward: (the boundary the engine must step on, whether ZeRO 0/1 all-reduced)."""
    counter = (s.micro_steps + 1) % g == 0
    if not facts.engine_boundary_api:
        # §3 fallback: an engine without the boundary API follows its own counter; only a boundary the *user*
        # gave that the counter contradicts is an error (never silent wrong training).
        if explicit is not None and explicit != counter:
            raise _Raises("BoundaryUnsupportedError")
        return _engine_step_always(s, counter, engine_no_sync, index), _zero01_reduces(facts, counter, engine_no_sync)
    if explicit is None and not facts.accelerate_forwards_boundary:
        # §3 untouched code behaves as the installed upstream: accelerate <= 1.7 passes no boundary and steps every
        # micro-batch, DeepSpeed's counter decides (the reference first clears a flag an explicit boundary left).
        # Inside accumulate() the boundary is accumulate()'s own schedule, whatever the counter says: where the two
        # disagree (a DataLoader's partial last window) upstream loses the window (accelerate#3552, fixed in 1.8),
        # and the reference with it, since untouched code gives upstream's bytes: a known failure, never expected.
        if s.wrapper_set_flag:
            s.engine_flag, s.wrapper_set_flag = None, False
        boundary = counter if s.engine_flag is None else s.engine_flag
        if in_accumulate:
            boundary = s.schedule_sync
        return _engine_step_always(s, boundary, engine_no_sync, index), _zero01_reduces(facts, boundary, engine_no_sync)
    # accelerate >= 1.8 passes the schedule's boundary; a user's boundary goes as is_final_micro_batch.
    boundary = explicit if explicit is not None else s.schedule_sync
    s.engine_flag, s.wrapper_set_flag = boundary, True
    lifted = boundary and explicit is not None  # §3 only a user's boundary lifts accumulate()'s engine.no_sync()
    if boundary and engine_no_sync and not lifted:
        raise InvalidProgram("DeepSpeed steps inside its own no_sync() (it asserts there, upstream too)", index)
    inside = engine_no_sync and not lifted
    if boundary:
        s.micro_steps += 1
        s.global_steps += 1
    elif not facts.accelerate_forwards_boundary and not engine_no_sync:
        # §3 rule 1 on accelerate <= 1.7: the engine steps after every backward there and its counter decides a
        # later plain backward, so a held boundary counts too (the step only moves the counter): a user's False
        # never sticks to a plain call by leaving the counter out of phase with the windows.
        s.micro_steps += 1
    s.stepped_last_backward = boundary
    return boundary, _zero01_reduces(facts, boundary, inside)


def _engine_step_always(s: _State, boundary: bool, engine_no_sync: bool, index: int) -> bool:
    """``engine.step()`` after every backward: its counter (or flag) decides whether it really steps."""
    if engine_no_sync:
        raise InvalidProgram("engine.step() inside DeepSpeed's own no_sync() (it asserts there, upstream too)", index)
    s.micro_steps += 1
    s.global_steps += int(boundary)
    s.stepped_last_backward = boundary
    return boundary


def _zero01_reduces(facts: Facts, boundary: bool, inside_no_sync: bool) -> bool | None:
    """ZeRO 0/1 reduce gradients only at the boundary (measured); ZeRO 2/3 every micro-batch into partitions by
    design, so their communication is not judged."""
    if facts.world_size < 2 or facts.partitions_gradients:
        return None
    return boundary and not inside_no_sync


def _engine_micro_batch(s: _State, mb: MicroBatch, facts: Facts, g: int, clip: float | None, scheduler: bool,
                        index: int) -> MicroExpect:
    """The seed's "before" code: engine.set_gradient_accumulation_boundary(b); engine.backward(loss); engine.step()."""
    if not facts.deepspeed:
        raise InvalidProgram("the engine driver needs a DeepSpeed engine", index)
    s.engine_flag, s.wrapper_set_flag = mb.backward, False
    boundary = bool(mb.backward)
    steps = _engine_step_always(s, boundary, False, index)
    s.pending = not steps
    return MicroExpect(boundary=boundary, sync_gradients=s.schedule_sync, steps=steps,
                       clip=clip if steps else None, reduces=_zero01_reduces(facts, boundary, False),
                       scheduler_steps=0)  # the raw engine loop never steps accelerate's scheduler
