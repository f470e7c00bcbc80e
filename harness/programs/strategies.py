"""Hypothesis strategies that build only valid programs and shrink toward the plainest code: fewer micro-batches, no
override, no context, a plain backward, nothing after it, no query, the ordinary call form.

A program is drawn micro-batch by micro-batch against the model's current state (``model.step``, Hypothesis's
stateful habit: a rule's precondition is checked on the state, never by replaying the prefix): the core choices
(override call, context, keyword, what follows) are every combination the model accepts from this state, ordered
plainest first (Hypothesis shrinks ``sampled_from`` toward the front); the call form and a query before the forward
change nothing of validity and are drawn after. A program the model calls invalid (a step on gradients some rank
never all-reduced, DeepSpeed stepping inside its own ``no_sync()``) trains wrongly on upstream too and is never
generated.

The program space reaches every clause of DESIGN §3 the explorer can see on one stack (docs/contract.md): the tiny
GPT-2 and bf16 beside the MLP, an lr schedule that changes at every step (stepped after every optimizer call, as
accelerate's idiom does), every call form of ``optimizer_step_and_zero_grad``, queries between the calls, an override
left in force across boundaries, steps and context entries, DataLoader ends inside and outside ``accumulate()``,
``scale_wrt_gas=False`` passed through, and a second accelerator after the first in one process.

``untouched=True`` explores upstream as it is (``accumgate explore --untouched``; ``--target native`` implies it): only
code without the new API, widened to what users write around ``accumulate()`` today — GradientAccumulationPlugin
options (``sync_each_batch``, ``sync_with_dataloader=False``, ``adjust_scheduler=False``), DataLoaders of any length
(G need not divide it) with and without ``even_batches`` and a dataset one item short (even_batches wraps it around),
an lr set by hand before a forward or between ``backward`` and the step, ``optimizer.zero_grad()`` anywhere, and on
DeepSpeed the raw engine's own loop: ``set_gradient_accumulation_boundary`` called or not (its flag is sticky, its
counter decides until one is set), ``engine.zero_grad()`` / ``engine.optimizer.zero_grad()`` after any step. The model
encodes what upstream documents there; where it disagrees with upstream, that is a candidate upstream bug.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Callable, Sequence

from hypothesis import strategies as st

from ..scenario import PROGRAM, Scenario
from .model import BACKEND_FACTS, Facts, InvalidProgram, Raises, State, start, step
from .program import AFTERS, CONTEXTS, ENGINE_ZERO_GRADS, FORMS, LR_SETS, NO_CALL, MicroBatch, Program

EXPLORED_BACKENDS = tuple(BACKEND_FACTS)
MAX_MICRO_BATCHES = 8
# Where a second accelerator can be built in one process (accelerate refuses a second DeepSpeed plugin; FSDP2 would
# shard a sharded module again).
RESTART_BACKENDS = ("single", "ddp")

# Plainest first: Hypothesis shrinks a sampled_from toward its first element.
CANDIDATES = [MicroBatch(set_boundary=b, context=c, backward=k, after=a)
              for b, c, k, a in itertools.product((NO_CALL, None, True, False), CONTEXTS, (None, True, False), AFTERS)]
# Code that uses none of the new API (``--untouched``: upstream explored as it is, judged by the model and oracle).
UNTOUCHED_CANDIDATES = [c for c in CANDIDATES if not c.uses_new_api]
# The raw engine's loop (DeepSpeed only, untouched): no boundary call first (the sticky flag or the counter decides).
ENGINE_CANDIDATES = [MicroBatch(driver="engine", backward=b) for b in (None, True, False)]
# FSDP2's own set_requires_gradient_sync before the forward (it decides validity: a step on gradients it held back
# diverges the ranks), no call first.
FSDP_UNTOUCHED_CANDIDATES = [replace(c, fsdp_sync=sync) for sync in (NO_CALL, True, False) for c in UNTOUCHED_CANDIDATES]
# An lr set by hand and a zero_grad() at the end, drawn after the core, plainest first and 1 in 4 of the time.
LR_SET_CHOICES = ("none",) * 4 + tuple(LR_SETS[1:])
ZERO_GRAD_CHOICES = ("none",) * 3 + ("optimizer",)
ENGINE_ZERO_GRAD_CHOICES = ("none",) * 4 + tuple(ENGINE_ZERO_GRADS[1:])


def _facts(backend: str, accelerate_forwards_boundary: bool) -> Facts:
    return replace(BACKEND_FACTS[backend], accelerate_forwards_boundary=accelerate_forwards_boundary)


def _copy(state: State) -> State:
    """A cheap copy: every field is immutable but the set of stepped optimizers."""
    return replace(state, stepped=set(state.stepped))


def accepts(state: State, candidate: MicroBatch, last_of_loader: bool = False, restart: bool = False) -> bool:
    """The rule's precondition, asked of the current state: the model accepts ``candidate`` next."""
    try:
        step(_copy(state), candidate, last_of_loader, restart)
    except InvalidProgram:
        return False
    except Raises:
        return True  # a §3 error the target must raise: a valid program, it ends there
    return True


Choose = Callable[[str, Sequence], object]  # (label, options, plainest first) -> one of them


def draw_program(choose: Choose, backend: str, accelerate_forwards_boundary: bool = True,
                 max_micro_batches: int = MAX_MICRO_BATCHES, untouched: bool = False) -> Scenario:
    """One program on ``backend`` (api ``program``, schedule ``g<G>``), every choice asked of ``choose``: Hypothesis
    (``programs``, which shrinks each choice toward its first option) or a seeded random source (``sample``, the quick
    profile's fixed draw, which must not depend on what else the process imported); ``untouched``: only code without
    the new API (explores upstream as it is)."""
    facts = _facts(backend, accelerate_forwards_boundary)
    g = choose("configured G", (1, 2, 3, 4))
    clip = choose("clip", (1.0, None))
    optimizer = choose("optimizer", ("sgd", "adamw"))
    precision = choose("precision", ("fp32", "bf16"))
    model = choose("model", ("mlp", "gpt2"))
    lr_schedule = choose("lr schedule", ("const", "decay", "warmup"))
    user_scaled = facts.deepspeed and choose("the user divides by G (scale_wrt_gas=False)", (False, True))
    total = choose("micro-batches", tuple(range(1, max_micro_batches + 1)))
    dataloader = choose("from a prepared DataLoader", (False, True))
    restart_wanted = (backend in RESTART_BACKENDS and not dataloader and total > 1
                      and choose("a second accelerator", (False, True)))
    restart_wanted_at = choose("second accelerator before", tuple(range(1, total))) if restart_wanted else None
    options = _untouched_options(choose, facts, dataloader, restart_wanted) if untouched else {}
    engine_loop = untouched and facts.deepspeed and choose("the raw engine's own loop", (False, True))
    program_options = Program((), dataloader=dataloader, **options)
    state = start(facts, g, clip, scheduler=lr_schedule != "const", program=program_options)
    pool = (ENGINE_CANDIDATES if engine_loop else CANDIDATES if not untouched
            else FSDP_UNTOUCHED_CANDIDATES if facts.backend == "fsdp" else UNTOUCHED_CANDIDATES)
    micro: list[MicroBatch] = []
    restart_at = None
    for index in range(total):
        last = dataloader and index == total - 1
        # A second accelerator where nothing is pending (after a step, no gradient held), as a script's next phase.
        restart = index == restart_wanted_at and not state.pending and not state.unreduced
        valid = [c for c in pool if accepts(state, c, last, restart)]
        core = choose(f"micro-batch {index}", valid)
        form = choose(f"micro-batch {index}: call form", FORMS) if core.after == "step_and_zero_grad" else "model"
        query = not engine_loop and choose(f"micro-batch {index}: query before the forward", (False, True))
        chosen = replace(core, form=form, query=query)
        if untouched:  # an lr set by hand, a zero_grad() at the end, FSDP2's set_is_last_backward: no validity changes
            set_lr = choose(f"micro-batch {index}: an lr set by hand", LR_SET_CHOICES)
            zero_grad = choose(f"micro-batch {index}: zero_grad() at its end",
                               ENGINE_ZERO_GRAD_CHOICES if engine_loop else ZERO_GRAD_CHOICES)
            chosen = replace(chosen, set_lr=set_lr, zero_grad=zero_grad)
            if facts.backend == "fsdp":
                last_backward = choose(f"micro-batch {index}: set_is_last_backward", (NO_CALL, NO_CALL, True, False))
                chosen = replace(chosen, fsdp_last_backward=last_backward)
        micro.append(chosen)
        restart_at = index if restart else restart_at
        try:
            step(state, chosen, last, restart)
        except Raises:
            pass  # the target must raise here (an engine without the boundary API): the expectation ends there
    return Scenario(backend, PROGRAM, f"g{g}", optimizer=optimizer, precision=precision, clip=clip, model=model,
                    lr_schedule=lr_schedule, world_size=facts.world_size,
                    loss_norm="user" if user_scaled else "mean",
                    generated=Program(tuple(micro), dataloader=dataloader, restart_at=restart_at, **options))


def _untouched_options(choose: Choose, facts: Facts, dataloader: bool, restart: bool) -> dict[str, bool]:
    """The accelerator's options a program of untouched code is built with, those that differ from accelerate's
    defaults only (each drawn as "changed?", so that it shrinks to the default). A second accelerator is built with
    the same arguments, so the options hold for both."""
    options: dict[str, bool] = {}
    for name, default in Program.OPTIONS:
        if name == "short_dataset":
            continue
        if choose(f"{name} other than accelerate's default", (False, True)):
            options[name] = not default
    if (dataloader and facts.world_size > 1 and options.get("even_batches", True) and not restart
            and choose("a dataset one item short (even_batches wraps it around)", (False, True))):
        options["short_dataset"] = True
    return options


@st.composite
def programs(draw: st.DrawFn, backend: str, accelerate_forwards_boundary: bool = True,
             max_micro_batches: int = MAX_MICRO_BATCHES, untouched: bool = False) -> Scenario:
    """Hypothesis's strategy: every choice a ``sampled_from`` (shrinks toward the plainest option)."""
    return draw_program(lambda label, options: draw(st.sampled_from(list(options)), label=label), backend,
                        accelerate_forwards_boundary, max_micro_batches, untouched)


def sample(backend: str, count: int, seed: int = 0, accelerate_forwards_boundary: bool = True) -> list[Scenario]:
    """``count`` distinct programs from a seeded source: the same on every run of a version, whatever else the process
    has imported (Hypothesis's own generation is not: it mines the loaded modules for constants)."""
    rng = random.Random(f"{backend}:{seed}")
    out: list[Scenario] = []
    for _ in range(count * 4):
        scenario = draw_program(lambda label, options: rng.choice(list(options)), backend, accelerate_forwards_boundary)
        if scenario not in out:
            out.append(scenario)
        if len(out) == count:
            break
    return out
