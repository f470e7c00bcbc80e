"""The interpreter of programs: drives the accelerator the way the user's loop would, one micro-batch at a time,
and records what the user would see. It checks nothing (the properties do) and knows no API style: every style is
a program (``programs/styles.py``).

A target that lacks an API is found by behaviour, not by signature: the call fails for lack of it (an
``AttributeError`` for a missing method, a ``TypeError`` naming the keyword), on every rank at the same call, and
the job reports ``unsupported``. A vendor's subclass whose ``backward(self, loss, *args, **kwargs)`` forwards to the
reference is therefore supported, and upstream accelerate (whose ``backward`` also takes ``**kwargs``) is not.
"""
from __future__ import annotations

import contextlib
from itertools import accumulate
from typing import Any, Callable, Iterable, Iterator

import torch

from .data import cast, micro_batch, window_tokens
from .models import forward_loss, forward_token_loss_sum
from .programs.program import NO_CALL, MicroBatch, lr_set_factor
from .scenario import Scenario
from .trace import StepRecorder, Trace

NEW_KEYWORD = "is_final_micro_batch"


class TargetLacksApi(Exception):
    """The target has no such API (the call failed for lack of it): the scenario is ``unsupported``."""


class Run:
    """What every micro-batch needs: the prepared objects, the scenario, this rank's trace. ``model`` is what the loss
    calls; ``parts`` the prepared models, each with its optimizer and lr scheduler (two for ``twomodels``)."""

    def __init__(self, prepared: Any, scenario: Scenario, rank: int, trace: Trace) -> None:
        self.accelerator, self.model = prepared.accelerator, prepared.model
        self.parts, self.optimizers, self.schedulers = prepared.parts, prepared.optimizers, prepared.schedulers
        self.scenario, self.rank, self.trace = scenario, rank, trace
        self.recorder: StepRecorder | None = None  # set by ``train``: it takes the pre-step gradients
        # Keyword arguments of every backward: they must reach the engine (transformers #35808 relies on it).
        self.backward_kwargs: dict[str, Any] = {"scale_wrt_gas": False} if scenario.loss_norm in ("tokens", "user") else {}
        self._window_of = [range(end - w, end) for end, w in zip(accumulate(scenario.windows), scenario.windows)
                           for _ in range(w)]
        self.lr_sets = 0  # lrs set by hand so far (programs.program.lr_set_factor)
        # Where each micro-batch's data comes from, as the prepared DataLoader handed it out: (rank, micro-batch)
        self.sources: dict[int, tuple[int, int]] = {}

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        s = self.scenario
        rank, stream_index = self.sources.get(index, (self.rank, index))
        batch = micro_batch(s.model, s.seed, rank, stream_index, s.micro_batch_size)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        if s.is_deepspeed and s.precision == "bf16":  # the engine casts the module, not the inputs
            batch = cast(batch, torch.bfloat16)
        return batch

    def loss(self, index: int) -> torch.Tensor:
        s = self.scenario
        batch = self.batch(index)
        if s.loss_norm == "tokens":
            tokens = window_tokens(s.model, s.seed, self.rank, self._window_of[index], s.micro_batch_size)
            loss = forward_token_loss_sum(self.model, batch) / tokens
        elif s.loss_norm == "innermodule":  # an auxiliary branch through the inner module: the same function
            loss = 0.5 * (forward_loss(self.model, batch) + forward_loss(self.model.module, batch))
        else:
            loss = forward_loss(self.model, batch)
        self.trace.losses.append(float(loss.detach().float()))
        if s.loss_norm == "user":  # the user's own 1/G, with DeepSpeed's turned off by scale_wrt_gas=False
            return loss / s.configured_g
        return loss

    # -- the new API, called so that its absence shows as absence ----------------------------------------------
    def new_api(self, name: str) -> Callable[..., Any]:
        method = getattr(self.accelerator, name, None)
        if not callable(method):
            cls = type(self.accelerator)
            raise TargetLacksApi(f"{cls.__module__}.{cls.__qualname__} has no {name}")
        return method

    def backward(self, loss: torch.Tensor, boundary: bool | None) -> None:
        if boundary is None:
            self.accelerator.backward(loss, **self.backward_kwargs)
            return
        try:
            self.accelerator.backward(loss, **{NEW_KEYWORD: boundary}, **self.backward_kwargs)
        except TypeError as exc:
            if f"keyword argument '{NEW_KEYWORD}'" in str(exc):
                cls = type(self.accelerator)
                raise TargetLacksApi(f"{cls.__module__}.{cls.__qualname__}.backward has no {NEW_KEYWORD} "
                                     f"({type(exc).__name__}: {exc})") from exc
            raise

    def after_backward(self) -> None:
        reported = bool(self.accelerator.sync_gradients)
        self.trace.sync_gradients.append(reported)
        if self.recorder is not None and not self.scenario.is_deepspeed:
            self.recorder.at_backward_end(reported)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.trace.grad_digests.append(float(sum(_local(g).double().sum() for g in grads)) if grads else None)

    def step(self, clip: bool) -> None:
        """The standard accelerate idiom, per model and its optimizer: the optimizer wrapper skips step/zero_grad
        off-boundary."""
        for part, optimizer, scheduler in zip(self.parts, self.optimizers, self.schedulers):
            if clip and self.accelerator.sync_gradients and self.scenario.clip is not None:
                self.accelerator.clip_grad_norm_(part.parameters(), self.scenario.clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad()

    def step_and_zero_grad(self, index: int, mb: MicroBatch) -> None:
        """Method 3 for each model and its optimizer, in order, in the micro-batch's call form (with or without the
        model, its max_grad_norm, once or twice); every value returned is recorded."""
        method = self.new_api("optimizer_step_and_zero_grad")
        bound = mb.max_grad_norm(self.scenario.clip)
        for part, optimizer, scheduler in zip(self.parts, self.optimizers, self.schedulers):
            for _ in range(2 if mb.form == "twice" else 1):
                if mb.form == "no_model":
                    value = method(optimizer, max_grad_norm=bound)
                else:
                    value = method(optimizer, part, max_grad_norm=bound)
                if index in self.trace.returned:
                    self.trace.returned_more.setdefault(index, []).append(value)
                else:
                    self.trace.returned[index] = value
            if scheduler is not None:
                scheduler.step()

    def set_lr(self) -> None:
        """The user sets the lr by hand on every param group of every optimizer (the next factor of LR_SET_FACTORS
        times the lr the optimizer was built with)."""
        from .backends import LEARNING_RATES

        factor = lr_set_factor(self.lr_sets)
        self.lr_sets += 1
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = LEARNING_RATES[self.scenario.optimizer] * factor

    def zero_grad(self) -> None:
        """``optimizer.zero_grad()`` on each prepared optimizer, as a user calls it outside the step idiom."""
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def query(self, index: int) -> None:
        """What user code reads between the calls, before the forward: ``accelerator.sync_gradients`` and, on
        DeepSpeed, ``engine.is_gradient_accumulation_boundary()`` (ZeRO-3 prefetch reads the same)."""
        engine = getattr(getattr(self.accelerator, "deepspeed_engine_wrapped", None), "engine", None)
        asks = getattr(engine, "is_gradient_accumulation_boundary", None)
        self.trace.queries[index] = (bool(self.accelerator.sync_gradients), bool(asks()) if callable(asks) else None)

    def second_accelerator(self) -> None:
        """The user builds a second accelerator of the same class and prepares the same model(s) and optimizer(s)
        with it (DESIGN §3 "A new accelerator starts without one"): accelerate's state stays as it is, as in a user's
        process."""
        from .backends import rebuild

        prepared = rebuild(self)
        self.accelerator, self.model = prepared.accelerator, prepared.model
        self.parts, self.optimizers, self.schedulers = prepared.parts, prepared.optimizers, prepared.schedulers
        if self.recorder is not None:
            self.recorder.wrap_clip(self.accelerator)


@contextlib.contextmanager
def _context(run: Run, name: str) -> Iterator[None]:
    if name == "accumulate":
        with run.accelerator.accumulate(*run.parts):
            yield
    elif name == "no_sync":
        with contextlib.ExitStack() as held:
            for part in run.parts:
                held.enter_context(run.accelerator.no_sync(part))
            yield
    else:
        yield


def run_micro_batch(run: Run, index: int, mb: MicroBatch, count_collectives: bool = False) -> None:
    if mb.set_lr == "before_forward":
        run.set_lr()
    if mb.driver == "engine":
        engine = run.model
        if mb.backward is not None:
            engine.set_gradient_accumulation_boundary(mb.backward)
        loss = run.loss(index)
        with _counted(run, count_collectives):
            engine.backward(loss, **run.backward_kwargs)
        run.after_backward()
        if mb.set_lr == "before_step":
            run.set_lr()
        engine.step()
        if mb.zero_grad == "engine":
            engine.zero_grad()
        elif mb.zero_grad == "engine_optimizer":
            engine.optimizer.zero_grad()
        return
    for part in run.parts:  # FSDP2's own module calls, before the forward
        if mb.fsdp_sync != NO_CALL:
            part.set_requires_gradient_sync(mb.fsdp_sync)
        if mb.fsdp_last_backward != NO_CALL:
            part.set_is_last_backward(mb.fsdp_last_backward)
    if mb.set_boundary != NO_CALL:
        run.new_api("set_deepspeed_gradient_accumulation_boundary")(mb.set_boundary)
    with _context(run, mb.context):
        if mb.query:
            run.query(index)
        loss = run.loss(index)
        with _counted(run, count_collectives):
            run.backward(loss, mb.backward)
        run.after_backward()
        if mb.set_lr == "before_step":
            run.set_lr()
        if mb.after == "step":
            run.step(clip=False)
        elif mb.after == "clip_step":
            run.step(clip=True)
        elif mb.after == "step_and_zero_grad":
            run.step_and_zero_grad(index, mb)
        if mb.zero_grad == "optimizer":
            run.zero_grad()


def _local(grad: torch.Tensor) -> torch.Tensor:
    """A rank's own gradient: an FSDP2 (DTensor) gradient's local shard. Summing the DTensor itself would run an
    all-reduce inside the micro-batch whose collectives P7 counts (it did: every FSDP2 backward after the first
    showed a reduction that was the harness's own)."""
    to_local = getattr(grad, "to_local", None)
    return to_local() if callable(to_local) else grad


@contextlib.contextmanager
def _counted(run: Run, count_collectives: bool) -> Iterator[None]:
    """Collectives of one backward, recorded in the trace. Only the backward is profiled: every backend reduces
    gradients there (DDP's reducer, FSDP2's post-backward hooks, DeepSpeed ZeRO 0/1 at a boundary in
    ``engine.backward``, the reference's own re-sync inside ``accelerator.backward``), and the profiler triples what
    it wraps."""
    if not count_collectives:
        yield
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        yield
    run.trace.collectives.append(_count_collectives(profile))


def _count_collectives(profile: Any) -> dict[str, int]:
    """Collectives as the process group ran them (``gloo:all_reduce``, ``nccl:reduce_scatter``...): seen by the
    profiler whether issued from Python (DeepSpeed) or from C++ (DDP's reducer). The names are read from the raw
    kineto events: ``profile.events()`` builds the whole Python event tree first, 15× the cost (measured: 57 ms
    against 3.7 ms for three small backwards), which made counting triple a job's time."""
    raw = getattr(getattr(getattr(profile, "profiler", None), "kineto_results", None), "events", None)
    names = [event.name() for event in raw()] if callable(raw) else [event.name for event in profile.events()]
    counts: dict[str, int] = {}
    for name in names:
        backend, _, kind = name.partition(":")
        if backend in ("gloo", "nccl") and kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def micro_batch_indices(run: Run) -> Iterable[int]:
    """Plain indices, or, where the program reads a prepared DataLoader, its batches: its last one is what makes
    ``accumulate()`` force the partial window's boundary (the #3552 situation). The DataLoader's items name the data
    each micro-batch reads (global item j: rank j % ranks, micro-batch j // ranks), so a batch the sampler completes
    from the dataset's start (``even_batches`` over a short dataset) reads what the sampler gave."""
    program = run.scenario.program
    count = len(program)
    if not program.dataloader:
        return range(count)
    from torch.utils.data import DataLoader

    # Each rank gets every num_processes-th item of the sharded loader: `count` batches of one index each.
    ranks = run.accelerator.num_processes
    loader = run.accelerator.prepare_data_loader(DataLoader(range(count * ranks - int(program.short_dataset)),
                                                            batch_size=1))

    def indices() -> Iterator[int]:
        for index, item in enumerate(loader):
            run.sources[index] = divmod(int(item[0]), ranks)[::-1]
            yield index

    return indices()


def train(run: Run, recorder: StepRecorder, count_collectives: bool = False) -> None:
    program = run.scenario.program
    run.recorder = recorder
    for index in micro_batch_indices(run):
        recorder.micro_step = index
        if index == program.restart_at:
            run.second_accelerator()
        run_micro_batch(run, index, program.micro_batches[index], count_collectives)
