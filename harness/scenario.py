"""``Scenario``: one training run to check, as plain frozen data with a stable, readable id.

Scenarios are generated, never hand-written per test: a new axis value is one entry here. This module
imports neither torch nor accelerate, so listing and selecting scenarios costs nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .programs.program import Program
from .programs.styles import STYLES, program_of

# Axis values. ``*off`` backends offload the optimizer state to CPU (ZeRO-Offload).
BACKENDS = ("single", "ddp", "fsdp", "ds0", "ds1", "ds2", "ds3", "ds1off", "ds2off", "ds3off")
API_STYLES = tuple(STYLES)
MANUAL_API_STYLES = ("kwarg", "set_boundary", "step_and_zero_grad")
# Styles whose code uses none of the new API: they must give the installed upstream's bytes (P3).
UNTOUCHED_API_STYLES = ("auto", "legacy", "ddp_native")
# A generated program (``Scenario.program`` holds it; the schedule names only the configured G, ``g<N>``).
PROGRAM = "program"
# Client programs the suite did not write (harness/clients.py), run as they are: their schedule is "client".
CLIENT_STYLES = ("test_sync",)
CLIENT = "client"
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16")
CLIPS = (1.0, None)
WORLD_SIZES = (1, 2)
MODELS = ("mlp", "gpt2", "twomodels", "twoheads", "gpt2cls", "lastbranch")
# The models the profiles combine; "gpt2cls" (a sequence-classification head: transformers#47688) and "lastbranch" (a
# branch only a window's last micro-batch takes: pytorch#196996) are the live scenarios' (``live``).
PROFILE_MODELS = ("mlp", "gpt2", "twomodels", "twoheads")
# How the user turns a micro-batch into the loss it backpropagates: ``mean`` = the model's own mean loss (the
# engine / accelerate divide it by G); ``tokens`` = the token-level sum divided by the rank's token count of the
# whole window, passed with ``backward(loss, scale_wrt_gas=False)`` (DeepSpeed; transformers #34191, #35808).
# ``user`` = the model's mean loss divided by G by the user, passed with ``scale_wrt_gas=False`` (the same mathematics
# as ``mean``; what a mutant that drops backward keywords breaks). ``trainer`` = the transformers Trainer's own: each
# micro-batch's token-loss sum over the window's tokens of every rank (``num_items_in_batch``), times the world size.
# ``innermodule`` = half the mean loss through the engine's forward, half through ``engine.module``'s (an
# auxiliary loss through the inner module: deepspeed #8224 scaled only the engine's half by 1/G).
LOSS_NORMS = ("mean", "tokens", "user", "trainer", "trainermask0", "innermodule", "trainerdefault", "trainerwindow")
# The Trainer's own normalisation (api 'trainer'); 'trainermask0': the same on labels whose position 0 is -100. That
# position is never a target after the causal shift, so the loss and gradients are the same; only a Trainer that counts
# the tokens before the shift (transformers before #46204) counts differently, so the variant isolates the G-scaling
# threads (#35808, #45305) from the token-count one on the versions that have both. 'trainerdefault': trainermask0's
# labels with the Trainer's own default for average_tokens_across_devices (the client sets it True otherwise): the
# global token mean is right, a per-rank one is transformers#34242 (the default before 4.54).
TRAINER_NORMS = ("trainer", "trainermask0", "trainerdefault")
# 'trainerwindow': the Trainer with the classification head told it normalises nothing itself (accepts_loss_kwargs =
# False, the attribute the Trainer reads first): the Trainer divides each micro-batch's mean loss by its window's real
# length (transformers >= 4.55, #39659); dividing a partial last window by G instead is transformers#38837.
TRAINER_WINDOW_NORM = "trainerwindow"
# The learning rate: constant, or a linear warm-up over 4 scheduler steps (LambdaLR), prepared by accelerate, so that
# "step counts and lr schedule follow" (P4) is measured: accelerate's scheduler wrapper steps num_processes times per
# optimizer step, DeepSpeed's engine once per boundary.
LR_SCHEDULES = ("const", "warmup", "decay")
# The profiles combine these; "decay" (an lr that changes at every scheduler step) is drawn by generated programs.
PROFILE_LR_SCHEDULES = ("const", "warmup")
WARMUP_STEPS = 4
# A call the user's loop makes beside its style's own (issue 24's live threads; ``live`` combines them):
# ``zerograd2``: a zero_grad() after micro-batch 2 of the first window — the prepared optimizer's ``optimizer.zero_grad()``
#   (accelerate acts on it only while sync_gradients is True) or, on the raw engine, ``engine.zero_grad()``;
# ``optzerograd2``: the same with ``engine.optimizer.zero_grad()`` on the raw engine (deepspeed#6554: they differ);
# ``lrbeforestep``: the lr set by hand between backward and the step on every window's last micro-batch (accelerate#2951);
# ``lrbetween``: the lr set by hand before the first forward of every window after the first (an lr change between
#   steps: the control of lrbeforestep).
USER_CALLS = ("none", "zerograd2", "optzerograd2", "lrbeforestep", "lrbetween")
# Where gradients are reduced in another dtype than the parameters': "param" (accelerate's mixed_precision policy: bf16
# parameters reduce in bf16) or "fp32": FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), the policy
# users choose for exact sums (pytorch#196996). Judged with the bf16 tolerances, which the fp32 sum only tightens.
REDUCE_DTYPES = ("param", "fp32")

# Schedule name -> (configured gradient_accumulation_steps G, window lengths).
SCHEDULES: dict[str, tuple[int, tuple[int, ...]]] = {
    "uni4": (4, (4, 4, 4)),
    "dyn3142": (4, (3, 1, 4, 2)),
    # Forced early boundary after micro-batch 6 (accumulate() says 8), forced late one: 8 held to 12.
    "forced4264": (4, (4, 2, 6, 4)),
    "every1": (4, (1, 1, 1, 1)),
    # Configured G = 1 with windows of 4 (open-instruct #1498): each micro-batch loss is divided by 1.
    "g1win4": (1, (4, 4, 4)),
    # accumulate() over a prepared DataLoader of 10 micro-batches: its end forces the partial last window
    # (accelerate #3552). No explicit boundary is passed: accelerate finds all three itself.
    "tail442": (4, (4, 4, 2)),
    # Batch-split invariance (P10): 3 windows of 8 samples per rank, as (micro-batch size, G) = (8, 1), (4, 2),
    # (2, 4) [uni4 above] and (1, 8).
    "uni1": (1, (1, 1, 1)),
    "uni2": (2, (2, 2, 2)),
    "uni8": (8, (8, 8, 8)),
}
# The schedules the profiles combine; the split schedules are generated per P10 group (``batch_splits``).
PROFILE_SCHEDULES = ("uni4", "dyn3142", "forced4264", "every1", "g1win4", "tail442")
# (schedule, micro-batch size) of each split of the same 8 samples per rank and window; the first is the reference.
SPLITS = (("uni1", 8), ("uni2", 4), ("uni4", 2), ("uni8", 1))
DEFAULT_MICRO_BATCH = 2

# "live": issue 24's live upstream bugs and their controls (``live``), on demand: not in the default envs.
PROFILES = ("quick", "ci", "full", "live")


@dataclass(frozen=True)
class Scenario:
    """What to train and how; ``id`` names it everywhere (pytest ids, reports, xfails patterns)."""

    backend: str
    api: str
    schedule: str
    optimizer: str = "sgd"
    precision: str = "fp32"
    clip: float | None = 1.0
    world_size: int = 2
    model: str = "mlp"
    seed: int = 0
    micro_batch_size: int = DEFAULT_MICRO_BATCH
    loss_norm: str = "mean"
    lr_schedule: str = "const"
    generated: Program | None = None  # the micro-batches of a generated program (api "program")
    user_call: str = "none"  # a call beside the style's own (USER_CALLS)
    reduce_dtype: str = "param"  # FSDP2's reduce dtype (REDUCE_DTYPES)

    def __post_init__(self) -> None:
        problem = invalid_reason(self)
        if problem:
            raise ValueError(f"invalid scenario {self.id}: {problem}")

    @property
    def is_client(self) -> bool:
        return self.api in CLIENT_STYLES

    @property
    def configured_g(self) -> int:
        if self.is_client:
            return 1
        if self.api == PROGRAM:
            return int(self.schedule[1:])
        return SCHEDULES[self.schedule][0]

    @property
    def windows(self) -> tuple[int, ...]:
        """The windows the user means (a generated program's are whatever the model says: one per micro-batch)."""
        if self.api == PROGRAM:
            return tuple(1 for _ in self.generated.micro_batches)
        if self.is_client:
            return ()
        return SCHEDULES[self.schedule][1]

    @property
    def program(self) -> Program:
        """What the user's loop does per micro-batch: the style's program over the schedule, or the generated one."""
        if self.api == PROGRAM:
            return self.generated
        if self.is_client:
            return Program(())
        return with_user_call(program_of(self.api, self.windows, self.accumulate_finds_boundaries,
                                         self.ends_with_dataloader), self.user_call, self.windows)

    @property
    def untouched(self) -> bool:
        """Code that uses none of the new API (P3: the installed upstream's bytes)."""
        return not self.program.uses_new_api

    @property
    def micro_batches(self) -> int:
        return sum(self.windows)

    @property
    def boundaries(self) -> list[int]:
        """0-based indices of the micro-batches that end a window."""
        return [end - 1 for end in itertools.accumulate(self.windows)]

    @property
    def is_uniform(self) -> bool:
        """Every window is the configured G: ``accumulate()`` alone produces these windows."""
        return all(window == self.configured_g for window in self.windows)

    @property
    def ends_with_dataloader(self) -> bool:
        """Full windows then a shorter last one: what ``accumulate()`` over a prepared DataLoader produces when
        the data runs out mid-window (it forces the boundary at the DataLoader's end)."""
        *full, last = self.windows
        return not self.is_uniform and all(w == self.configured_g for w in full) and last < self.configured_g

    @property
    def accumulate_finds_boundaries(self) -> bool:
        """accelerate's own schedule gives every boundary, so no explicit boundary is passed."""
        return self.is_uniform or self.ends_with_dataloader

    @property
    def not_runnable(self) -> str | None:
        return not_runnable_reason(self)

    @property
    def is_deepspeed(self) -> bool:
        return self.backend.startswith("ds")

    @property
    def zero_stage(self) -> int | None:
        return int(self.backend[2]) if self.is_deepspeed else None

    @property
    def offload(self) -> bool:
        return self.backend.endswith("off")

    @property
    def id(self) -> str:
        if self.is_client:
            return f"{self.backend}-{self.api.replace('_', '')}-w{self.world_size}"
        clip = "noclip" if self.clip is None else f"clip{self.clip:g}"
        api = self.api.replace("_", "")
        if self.api == PROGRAM and self.generated.micro_batches and all(
                mb.driver == "engine" for mb in self.generated.micro_batches):
            api = "engineprogram"  # the raw engine's own loop: no accelerate call (xfail globs tell them apart)
        parts = [self.backend, api, self.schedule, self.optimizer, self.precision, clip]
        if self.lr_schedule != "const":
            parts.append(self.lr_schedule)
        if self.micro_batch_size != DEFAULT_MICRO_BATCH:
            parts.append(f"mb{self.micro_batch_size}")
        if self.model != "mlp":
            parts.append(self.model)
        if self.loss_norm != "mean":
            parts.append(f"{self.loss_norm}norm")
        if self.user_call != "none":
            parts.append(self.user_call)
        if self.reduce_dtype != "param":
            parts.append(f"red{self.reduce_dtype}")
        parts.append(f"w{self.world_size}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        if self.api == PROGRAM:
            parts.append(self.generated.digest)
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id

    def to_json(self) -> dict:
        """Plain data (a corpus entry, a report): every axis, and a generated program's micro-batches."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "generated"}
        if self.generated is not None:
            data["generated"] = self.generated.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Scenario":
        axes = dict(data)
        if axes.get("generated") is not None:
            axes["generated"] = Program.from_json(axes["generated"])
        return cls(**axes)

    def untouched_twin(self) -> "Scenario":
        """A generated program's twin without the new API (``Program.untouched_twin``)."""
        return dataclasses.replace(self, generated=self.generated.untouched_twin())

    def with_api(self, api: str) -> "Scenario":
        return dataclasses.replace(self, api=api)

    def with_split(self, schedule: str, micro_batch_size: int) -> "Scenario":
        return dataclasses.replace(self, schedule=schedule, micro_batch_size=micro_batch_size)

    @property
    def split_reference(self) -> "Scenario | None":
        """For a batch split other than the first, the same data as one micro-batch per window (P10)."""
        split = (self.schedule, self.micro_batch_size)
        if split not in SPLITS or split == SPLITS[0] or self.user_call != "none":
            return None  # a call placed by micro-batch (a zero_grad, an lr set) does not cut into splits
        return self.with_split(*SPLITS[0])


def invalid_reason(s: Scenario) -> str | None:
    """Why an axis combination means nothing (None when it is a real scenario)."""
    if s.is_client:
        defaults = Scenario.__dataclass_fields__
        if s.backend not in ("single", "ddp") or s.schedule != CLIENT or any(
                getattr(s, name) != defaults[name].default for name in ("optimizer", "precision", "clip", "model")):
            return f"client {s.api!r} runs as it is, on single or ddp, with schedule {CLIENT!r}"
        return None if (s.backend == "single") == (s.world_size == 1) else "single is one process, ddp two"
    if s.api == PROGRAM:
        if s.generated is None or not s.schedule.startswith("g") or not s.schedule[1:].isdigit():
            return "a generated program needs its micro-batches and a schedule 'g<configured G>'"
    elif s.generated is not None:
        return f"api {s.api!r} is a named style; only api 'program' carries generated micro-batches"
    checks = [
        (s.backend in BACKENDS, f"backend {s.backend!r}: expected one of {', '.join(BACKENDS)}"),
        (s.api in API_STYLES or s.api == PROGRAM, f"api {s.api!r}: expected one of {', '.join(API_STYLES)}"),
        (s.api == PROGRAM or s.schedule in SCHEDULES,
         f"schedule {s.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
        (s.lr_schedule in LR_SCHEDULES, f"lr_schedule {s.lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}"),
        (s.optimizer in OPTIMIZERS, f"optimizer {s.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"),
        (s.precision in PRECISIONS, f"precision {s.precision!r}: expected one of {', '.join(PRECISIONS)}"),
        (s.world_size in WORLD_SIZES, f"world size {s.world_size}: expected 1 or 2"),
        (s.model in MODELS, f"model {s.model!r}: expected one of {', '.join(MODELS)}"),
        (s.loss_norm in LOSS_NORMS, f"loss_norm {s.loss_norm!r}: expected one of {', '.join(LOSS_NORMS)}"),
        (s.micro_batch_size >= 1, f"micro_batch_size {s.micro_batch_size}: expected >= 1"),
        (s.user_call in USER_CALLS, f"user_call {s.user_call!r}: expected one of {', '.join(USER_CALLS)}"),
        (s.reduce_dtype in REDUCE_DTYPES, f"reduce_dtype {s.reduce_dtype!r}: expected one of {', '.join(REDUCE_DTYPES)}"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    if s.backend == "single" and s.world_size != 1:
        return "backend 'single' is one process (world size 1)"
    if s.backend in ("ddp", "fsdp") and s.world_size != 2:
        return f"backend {s.backend!r} needs world size 2"
    if s.model == "twomodels" and (s.is_deepspeed or s.api in ("trainer",) or s.lr_schedule != "const"):
        return ("model 'twomodels' prepares two models with an optimizer each, off DeepSpeed (whose engine owns one "
                "optimizer: a second one is refused by DESIGN §3), with a constant lr")
    if s.reduce_dtype != "param" and (s.backend != "fsdp" or s.precision != "bf16"):
        return "reduce_dtype 'fp32' is FSDP2's MixedPrecisionPolicy for bf16 parameters (backend fsdp, precision bf16)"
    if s.model == "lastbranch" and (s.is_deepspeed or s.api in ("trainer",)):
        return ("model 'lastbranch' (a branch only a window's last micro-batch takes) runs off DeepSpeed, whose ZeRO "
                "stages handle parameters some micro-batches do not use apart (twoheads)")
    if s.loss_norm == "user" and not s.is_deepspeed:
        return "loss_norm 'user' passes DeepSpeed's scale_wrt_gas=False"
    if s.loss_norm == "innermodule" and (not s.is_deepspeed or s.model != "mlp" or s.api in ("trainer",)):
        return "loss_norm 'innermodule' runs half the forward through the DeepSpeed engine's inner module (MLP)"
    if s.api == PROGRAM:
        if s.user_call != "none":
            return "a generated program makes its calls itself (user_call is for the named styles)"
        if s.generated.short_dataset and s.world_size < 2:
            return "a short dataset (even_batches wrapping around) needs ranks to share it"
        return None
    problem = _user_call_problem(s)
    if problem:
        return problem
    if s.api in ("ds_native", "legacy") and not s.backend.startswith("ds"):
        return f"api {s.api!r} drives a DeepSpeed engine"
    if s.api == "ddp_native" and s.backend.startswith("ds"):
        return "api 'ddp_native' is the seed's no_sync() code off DeepSpeed (ds_native is its DeepSpeed twin)"
    if s.api == "legacy" and not s.is_uniform:
        return "api 'legacy' (the engine's own counter) can only produce uniform windows"
    if s.model == "gpt2cls" and s.api == "trainer":
        if s.loss_norm not in ("mean", TRAINER_WINDOW_NORM):
            return ("the Trainer with a sequence-classification head (model 'gpt2cls') is judged against the head's own "
                    "mean loss, divided by G (loss_norm 'mean': the head never reads num_items_in_batch) or by the "
                    "window's length (loss_norm 'trainerwindow': the head says it normalises nothing)")
    elif (s.api == "trainer") != (s.loss_norm in TRAINER_NORMS):
        return "the transformers Trainer (api 'trainer') normalises the loss its own way (loss_norm 'trainer')"
    if s.loss_norm == TRAINER_WINDOW_NORM and (s.api != "trainer" or s.model != "gpt2cls"):
        return "loss_norm 'trainerwindow' is the Trainer's own with the classification head (api 'trainer', model 'gpt2cls')"
    windows_ok = s.is_uniform or (s.loss_norm == TRAINER_WINDOW_NORM and s.ends_with_dataloader)
    if s.api == "trainer" and (s.model not in ("gpt2", "gpt2cls") or s.backend == "fsdp" or s.optimizer != "sgd"
                               or not windows_ok or s.lr_schedule != "const"):
        return ("api 'trainer' runs the tiny GPT-2 (or its sequence-classification head) with SGD (the Trainer exempts "
                "biases and norms from AdamW's decay) on uniform windows (a DataLoader's partial last window with "
                "loss_norm 'trainerwindow'), off FSDP (the Trainer builds its own accelerator: the CPU arrangement cannot "
                "reach it)")
    if s.loss_norm == "tokens" and (s.model != "gpt2" or not s.is_deepspeed):
        return "loss_norm 'tokens' is a token-level loss (gpt2) passed with DeepSpeed's scale_wrt_gas=False"
    return None


def _user_call_problem(s: Scenario) -> str | None:
    """Where a user call means what its name says."""
    call = s.user_call
    if call == "none":
        return None
    if s.api in ("trainer", *CLIENT_STYLES) or s.model == "twomodels":
        return f"user_call {call!r} is made by a named style's loop over one model"
    if call in ("zerograd2", "optzerograd2") and (not s.windows or s.windows[0] < 3):
        return f"user_call {call!r} needs a first window of 3 or more micro-batches (the zero_grad falls inside it)"
    if call == "optzerograd2" and s.api != "ds_native":
        return "user_call 'optzerograd2' is engine.optimizer.zero_grad() on the raw engine (api 'ds_native')"
    if s.api != "auto" and s.accumulate_finds_boundaries:
        return (f"user_call {call!r} on a style other than accumulate() needs windows accumulate() cannot find by itself "
                "(P1 would compare the style with accumulate()'s loop, which ignores a zero_grad off its boundary and, on "
                "DeepSpeed, steps before an lr set after backward: another loop); use a dynamic schedule")
    if call in ("lrbeforestep", "lrbetween") and s.lr_schedule != "const":
        return f"user_call {call!r} sets the lr by hand: with a constant lr schedule (a scheduler would overwrite it)"
    return None


def with_user_call(program: Program, call: str, windows: tuple[int, ...]) -> Program:
    """The style's program with the scenario's user call made where it says (USER_CALLS)."""
    if call == "none":
        return program
    micro = list(program.micro_batches)
    firsts = list(itertools.accumulate((0, *windows[:-1])))
    lasts = [end - 1 for end in itertools.accumulate(windows)]
    if call in ("zerograd2", "optzerograd2"):
        engine = micro[1].driver == "engine"
        kind = {"zerograd2": "engine" if engine else "optimizer", "optzerograd2": "engine_optimizer"}[call]
        micro[1] = dataclasses.replace(micro[1], zero_grad=kind)
    elif call == "lrbeforestep":
        for last in lasts:
            micro[last] = dataclasses.replace(micro[last], set_lr="before_step")
    elif call == "lrbetween":
        for first in firsts[1:]:
            micro[first] = dataclasses.replace(micro[first], set_lr="before_forward")
    return dataclasses.replace(program, micro_batches=tuple(micro))


def not_runnable_reason(s: Scenario) -> str | None:
    """Why a meaningful scenario cannot train on the installed stacks at all (measured, with the thread): profiles never
    include it, a run asking for it by id gets this as an ``error`` verdict without spending a job, and the known-bug
    replay runs it anyway to show the bug is still there (harness/replay.py)."""
    if s.model == "twoheads" and s.zero_stage in (1, 2):
        return ("not runnable: model 'twoheads' on ZeRO-1/2: ranks that use different parameters have their gradients "
                "summed by bucket position, one head's into the other's (measured on deepspeed 0.19.8 and 0.15.4: "
                "head_b steps by (g_a(rank 0) + g_b(rank 1)) / 2, head_a by 0; deepspeed#2343 and #1186: 'not supported'"
                "; docs/repros/deepspeed-2343.py); ZeRO-0, DDP and FSDP2 train it")
    if s.model == "twoheads" and s.zero_stage == 3:
        return ("not runnable: model 'twoheads' on ZeRO-3: DeepSpeed gathers each module's parameters as the forward "
                "reaches it, and ranks routed to different heads ask for different gathers (measured on deepspeed "
                "0.19.8 with upstream accelerate 1.15: 'Detected a disagreement on list contents between rank0 and "
                "rank1')")
    if (s.model == "twomodels" and s.backend == "fsdp" and s.clip is not None
            and any(mb.after == "clip_step" for mb in s.program.micro_batches)):
        return ("not runnable: accelerate's clip_grad_norm_ raises for the second of two FSDP2 models (it finds the "
                "model by comparing parameter lists with ==, elementwise on DTensors: 'Attempting to broadcast a "
                "dimension', measured on accelerate 1.15.0, upstream alike; accelerate#3789, PR #4294 open; "
                "docs/repros/accelerate-3789.py); optimizer_step_and_zero_grad and unclipped loops run")
    return None


def is_valid(s: Scenario) -> bool:
    try:
        return invalid_reason(s) is None
    except KeyError:
        return False


# ------------------------------------------------------------------------------------------------- profiles
AXES: dict[str, tuple] = {
    "backend": BACKENDS, "api": API_STYLES, "schedule": PROFILE_SCHEDULES, "optimizer": OPTIMIZERS,
    "precision": PRECISIONS, "clip": CLIPS, "world_size": WORLD_SIZES, "model": PROFILE_MODELS,
    "lr_schedule": PROFILE_LR_SCHEDULES,
}


def _build(values: dict) -> Scenario | None:
    """A scenario the profiles can run: valid and runnable here."""
    try:
        scenario = Scenario(**values)
    except ValueError:
        return None
    return None if not_runnable_reason(scenario) else scenario


def full_product(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    keep = set(backends)
    out = []
    for combo in itertools.product(*AXES.values()):
        values = dict(zip(AXES, combo))
        if values["backend"] in keep:
            scenario = _build(values)
            if scenario is not None:
                out.append(scenario)
    return out


def _pairs(s: Scenario) -> frozenset[tuple]:
    values = [(axis, getattr(s, axis)) for axis in AXES]
    return frozenset(itertools.combinations(values, 2))


def pairwise(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """Every pair of axis values that any valid scenario contains appears in at least one chosen scenario.

    Greedy set cover over the valid product: complete by construction, deterministic (ties by id). A
    constrained pairwise library (allpairspy with a partial-row filter) was tried first and missed 17 valid
    pairs, such as (ds0, kwarg): constraints between axes are what it cannot see ahead.
    """
    return list(_pairwise(tuple(sorted(set(backends)))))


@functools.lru_cache(maxsize=None)
def _pairwise(backends: tuple[str, ...]) -> tuple[Scenario, ...]:
    """The cover is pure in the backends and costs seconds (23,585 candidates): computed once per process."""
    candidates = sorted(full_product(backends), key=lambda s: s.id)
    pairs = {s: _pairs(s) for s in candidates}
    uncovered = set().union(*pairs.values()) if pairs else set()
    chosen: list[Scenario] = []
    while uncovered:
        best = max(candidates, key=lambda s: len(pairs[s] & uncovered))
        chosen.append(best)
        uncovered -= pairs[best]
    return tuple(sorted(chosen, key=lambda s: s.id))


QUICK_STYLES = ("auto", "kwarg", "set_boundary", "step_and_zero_grad", "kwarg_hold", "set_boundary_hold")


def quick(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """Every backend available here × the accelerate API styles (the hold styles catch a boundary that sticks) ×
    uniform and dynamic windows: MLP, fp32."""
    keep = set(backends)
    return [
        Scenario(backend, api, schedule, world_size=1 if backend == "single" else 2)
        for backend in ("single", "ddp", "fsdp", "ds0", "ds1", "ds2", "ds3") if backend in keep
        for schedule in ("uni4", "dyn3142")
        for api in QUICK_STYLES
    ]


def batch_splits(base: Scenario) -> list[Scenario]:
    """The P10 group of ``base``: the same 24 samples per rank cut as every (micro-batch size, G) of ``SPLITS``."""
    return [base.with_split(schedule, size) for schedule, size in SPLITS]


# The API styles whose windows are the schedule's on every stack (legacy's follow the installed accelerate) and that
# split groups cut: the accelerate styles and the raw engine.
SPLIT_STYLES = ("auto", "kwarg", "set_boundary", "step_and_zero_grad", "ds_native", "ddp_native")
# GPT-2 token normalisation with scale_wrt_gas=False: through accelerate, the manual keyword and the raw engine.
TOKEN_STYLES = ("auto", "kwarg", "ds_native")


def split_groups(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """P10 on every backend × every style whose windows are its schedule's: MLP, fp32, SGD with clipping (so the norm
    matters), each split; on DeepSpeed also GPT-2 with the user's token normalisation (invariant) and with the
    model's own per-micro-batch token mean (not invariant: its drift is measured, #34191)."""
    keep = [b for b in BACKENDS if b in set(backends)]
    out = []
    for backend in keep:
        for api in SPLIT_STYLES:
            base = _build({"backend": backend, "api": api, "schedule": "uni4",
                           "world_size": 1 if backend == "single" else 2})
            if base is not None:
                out += batch_splits(base)
        if backend.startswith("ds"):
            for api in TOKEN_STYLES:
                out += batch_splits(Scenario(backend, api, "uni4", model="gpt2", loss_norm="tokens"))
            out += batch_splits(Scenario(backend, "auto", "uni4", model="gpt2"))
    return out


def shapes(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """The model shapes of issues 27 and 28 on every backend that takes them, with every style that can force a
    boundary (dynamic windows: boundaries forced inside accumulate()'s and the user's no_sync) and the untouched styles
    on uniform windows (P3: upstream's bytes; P1's baseline): two models with an optimizer each (a GAN, an actor and a
    critic), and a trunk with two heads routed per rank and micro-batch (conditional computation)."""
    keep = set(backends)
    out: list[Scenario] = []
    # Forced inside accumulate()'s no_sync (auto on dynamic windows: issue 28's loop) and by each method alone.
    forcing = {"twomodels": ("kwarg", "set_boundary", "step_and_zero_grad"),
               "twoheads": ("auto", "kwarg", "step_and_zero_grad")}
    for model in ("twomodels", "twoheads"):
        for backend in BACKENDS:
            if backend not in keep:
                continue
            world = 1 if backend == "single" else 2
            untouched = ("auto", "ds_native") if backend.startswith("ds") else ("auto", "ddp_native")
            uniform = untouched if model == "twomodels" else (untouched[1], "set_boundary")
            candidates = [*({"api": api, "schedule": "dyn3142"} for api in forcing[model]),
                          *({"api": api, "schedule": "uni4"} for api in uniform)]
            for axes in candidates:
                # AdamW for the heads: a head no rank used in a window is skipped off DeepSpeed (no weight decay, no
                # moment update) and stepped on zeros by DeepSpeed; SGD could not tell the two apart.
                optimizer = "adamw" if model == "twoheads" else "sgd"
                scenario = _build({"backend": backend, "model": model, "world_size": world, "optimizer": optimizer,
                                   **axes})
                if scenario is None:  # two FSDP2 models cannot be clipped through clip_grad_norm_: the same unclipped
                    scenario = _build({"backend": backend, "model": model, "world_size": world,
                                       "optimizer": optimizer, "clip": None, **axes})
                if scenario is not None:
                    out.append(scenario)
    return out


def live(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """Issue 24's threads that are live on the default stack, each beside the controls that show the suite sees it for
    the reason the thread gives (the oracle, the model and the loop are right where the bug cannot act):

    - transformers#47688: the Trainer with a sequence-classification head (``gpt2cls``) — and the same head through
      ``accumulate()`` (control: the oracle's classification loss), every backend but FSDP2; beside it the fixed
      Trainer threads the catalogue replays on their versions: transformers#38837 (the head told to normalise nothing,
      a DataLoader's partial last window: ``trainerwindow``) and transformers#34242 (the Trainer's default token
      averaging across ranks: ``trainerdefault``), right on the default stack;
    - deepspeed#6554: the raw engine's loop with ``engine.zero_grad()`` / ``engine.optimizer.zero_grad()`` inside a
      window, every DeepSpeed backend — and ``optimizer.zero_grad()`` through accelerate inside ``accumulate()`` (ignored
      off its boundary) and after the user's own ``no_sync()`` (discarded), every backend;
    - accelerate#2951: an lr set between ``backward`` and the step through ``accumulate()``, every backend — and set
      before the window instead (control), and on the raw engine before ``engine.step()`` (control);
    - pytorch#196996: FSDP2 with MixedPrecisionPolicy(bf16, reduce fp32) and a branch only a window's last micro-batch
      takes — and each ingredient alone (controls).
    Not in the ci profile (the default envs): the live ones fail until their xfails lines land; ``--profile live``."""
    keep = [b for b in BACKENDS if b in set(backends)]
    out: list[Scenario] = []

    def add(backend: str, api: str, schedule: str, **axes: object) -> None:
        scenario = _build({"backend": backend, "api": api, "schedule": schedule,
                           "world_size": 1 if backend == "single" else 2, **axes})
        if scenario is not None and scenario not in out:
            out.append(scenario)

    for backend in keep:
        add(backend, "trainer", "uni4", model="gpt2cls")
        add(backend, "auto", "uni4", model="gpt2cls")
        add(backend, "trainer", "tail442", model="gpt2cls", loss_norm=TRAINER_WINDOW_NORM)
        add(backend, "trainer", "uni4", model="gpt2", loss_norm="trainerdefault")
        add(backend, "ds_native", "dyn3142", user_call="zerograd2")
        add(backend, "ds_native", "dyn3142", user_call="optzerograd2")
        add(backend, "auto", "uni4", user_call="zerograd2")
        add(backend, "ddp_native", "dyn3142", user_call="zerograd2")
        add(backend, "auto", "uni4", user_call="lrbeforestep")
        add(backend, "auto", "uni4", user_call="lrbetween")
        add(backend, "ds_native", "dyn3142", user_call="lrbeforestep")
        add(backend, "auto", "uni4", precision="bf16", reduce_dtype="fp32", model="lastbranch")
        add(backend, "auto", "uni4", precision="bf16", reduce_dtype="fp32")
        add(backend, "auto", "uni4", precision="bf16", model="lastbranch")
    return out


PROFILE_BUILDERS: dict[str, Callable[..., list[Scenario]]] = {"quick": quick, "ci": pairwise, "full": full_product,
                                                              "live": live}


def clients(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """Every client program on every backend it runs on: accelerate's test_sync.py (one process and 2 ranks) and the
    transformers Trainer (every backend but FSDP, with and without clipping)."""
    keep = set(backends)
    out = [Scenario(backend, api, CLIENT, world_size=1 if backend == "single" else 2)
           for api in CLIENT_STYLES for backend in ("single", "ddp") if backend in keep]
    out += [Scenario(backend, "trainer", "uni4", model="gpt2", loss_norm="trainer", clip=clip,
                     world_size=1 if backend == "single" else 2)
            for backend in BACKENDS if backend in keep and backend != "fsdp" for clip in (1.0, None)]
    # A loss with a branch through the engine's inner module (deepspeed #8224), on every DeepSpeed backend.
    out += [Scenario(backend, api, "uni4", loss_norm="innermodule")
            for backend in BACKENDS if backend in keep and backend.startswith("ds") for api in ("auto", "kwarg")]
    return out


SENTINELS = Path(__file__).resolve().parent / "programs" / "sentinels.json"


def sentinels(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """The shrunk programs that caught each mutant of tests/mutants when the explorer last ran them
    (benchmarks/explore_mutants.py writes them, package data): the quick profile (the CLI's bare default) runs them,
    and every exploration replays them first (with the corpus), so a bug the explorer once found on a backend is
    looked for by every run on it."""
    if not SENTINELS.exists():
        return []
    keep = set(backends)
    out = []
    for entry in json.loads(SENTINELS.read_text())["programs"]:
        scenario = Scenario.from_json(entry["scenario"])
        if scenario.backend in keep and scenario not in out:
            out.append(scenario)
    return out


def leaving_runs(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """The runs P8-leak's follow-ups come after (``set_boundary`` over ``forced4264`` ends with the override True
    set), judged as scenarios of their own: a follow-up after a run that trains wrong or crashes proves nothing."""
    keep = set(backends)
    return [Scenario(b, "set_boundary", "forced4264", world_size=1 if b == "single" else 2) for b in BACKENDS if b in keep]


def profile(name: str, backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """The scenarios of a profile: quick as it is; ci and full add the batch-split groups P10 compares, the client
    programs and the runs P8-leak's follow-ups come after, so that every property has its scenarios in the one list
    both faces run; full also the live scenarios; live is those alone."""
    if name not in PROFILE_BUILDERS:
        raise ValueError(f"--profile {name!r}: expected one of {', '.join(PROFILES)}")
    chosen = PROFILE_BUILDERS[name](backends)
    if name == "live":
        return chosen
    if name == "quick":  # the other profiles' explorer runs replay the sentinels first (explore.load_corpus)
        seen = set(chosen)
        chosen += [s for s in sentinels(backends) if s not in seen and not seen.add(s)]
    if name != "quick":
        seen = set(chosen)
        extra = (split_groups(backends) + clients(backends) + leaving_runs(backends) + shapes(backends)
                 + (live(backends) if name == "full" else []))
        chosen += [s for s in extra if s not in seen and not seen.add(s)]
    return chosen


def select(scenarios: Iterable[Scenario], expression: str | None) -> list[Scenario]:
    """``-k`` with pytest's expression syntax (``ds3 and not kwarg``): a name matches as a substring of the id,
    case-insensitively, as ``pytest -k`` matches test ids (harness/keywords.py)."""
    scenarios = list(scenarios)
    if not expression:
        return scenarios
    from .keywords import compile_expression

    matches = compile_expression(expression)
    return [s for s in scenarios if matches(s.id)]
