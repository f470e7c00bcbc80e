"""``BoundaryAwareAccelerator``: accelerate's ``Accelerator`` with an explicit accumulation boundary.

Boundary resolution for each ``backward`` (DESIGN §3): the ``is_final_micro_batch`` argument, else the
override from ``set_deepspeed_gradient_accumulation_boundary``, else the *schedule's* ``sync_gradients`` (what
``accumulate()``, the user or accelerate's default last said, never what this class wrote to report an earlier
explicit boundary). Loss scaling stays the dependencies' own (1/configured G); this class only decides *when*
the optimizer steps. Code that uses none of the new API reaches accelerate exactly as upstream's would.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import GradientState
from accelerate.utils import DistributedType

from . import compat
from .deepspeed_wrapper import BoundaryAwareDeepSpeedEngineWrapper
from .errors import BoundaryError

# Where the schedule's own sync_gradients is kept, beside accelerate's key in GradientState's shared dict (so
# GradientState._reset_state() clears both at once).
_SCHEDULE_KEY = "_boundary_aware_schedule_sync_gradients"


class ScheduleAwareGradientState(GradientState):
    """accelerate's ``GradientState`` (the same shared state) that keeps the schedule's ``sync_gradients`` apart
    from the resolved boundary the reference reports in it.

    Every write through this object (``accumulate()``'s ``_do_sync``, ``accelerator.sync_gradients = ...``,
    transformers' Trainer calling ``gradient_state._set_sync_gradients``) is the schedule speaking; only
    ``report_boundary`` is not. Without the split, one ``backward(loss, is_final_micro_batch=False)`` outside
    ``accumulate()`` left ``False`` behind and every later plain ``backward`` read it: the model stopped training.
    """

    @property  # type: ignore[override]
    def sync_gradients(self) -> bool:
        return self.__dict__["sync_gradients"]

    @sync_gradients.setter
    def sync_gradients(self, value: bool) -> None:
        self.__dict__["sync_gradients"] = value
        self.__dict__[_SCHEDULE_KEY] = value

    @property
    def schedule_sync_gradients(self) -> bool:
        """What the schedule says for this micro-batch, whatever the reference reported since."""
        return bool(self.__dict__.get(_SCHEDULE_KEY, self.__dict__.get("sync_gradients", True)))

    def report_boundary(self, boundary: bool) -> None:
        """``sync_gradients`` reports the resolved boundary (the optimizer wrappers step on it and portable user
        code reads it) without becoming the schedule."""
        schedule = self.schedule_sync_gradients
        self.__dict__["sync_gradients"] = boundary
        self.__dict__[_SCHEDULE_KEY] = schedule


class BoundaryAwareAccelerator(Accelerator):
    """Drop-in ``Accelerator`` adding ``is_final_micro_batch``, a persistent boundary override and
    ``optimizer_step_and_zero_grad``; code that uses none of them behaves exactly as upstream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gradient_state = ScheduleAwareGradientState()
        self._boundary_override: bool | None = None
        # Resolved boundary of the most recent backward; None before the first one.
        self._last_boundary: bool | None = None
        # The optimizers optimizer_step_and_zero_grad stepped since the most recent backward (keyed by the torch
        # optimizer under accelerate's wrappers): each steps once per boundary, a second call for the same one does
        # nothing, another optimizer (two models: a GAN, an actor and a critic) still steps (DESIGN §3).
        self._stepped_since_backward: set[int] = set()
        self._warned_clip_mismatch = False
        # accelerate keeps the *unwrapped* module in _models for MULTI_CPU/MULTI_GPU, so the DDP wrappers
        # whose gradient sync the boundary controls are tracked here.
        self._ddp_wrapped: list[torch.nn.parallel.DistributedDataParallel] = []
        # FSDP2 decides at backward whether to reduce (set_requires_gradient_sync); inside how many no_sync() contexts
        # (accumulate()'s or the user's) this accelerator is, so a boundary knows what to restore after itself.
        self._no_sync_depth = 0

    # -- preparation --------------------------------------------------------------------------------------
    def _prepare_deepspeed(self, *args: Any) -> Any:
        result = super()._prepare_deepspeed(*args)
        wrapped = self.deepspeed_engine_wrapped
        if wrapped is not None and not isinstance(wrapped, BoundaryAwareDeepSpeedEngineWrapper):
            self.deepspeed_engine_wrapped = BoundaryAwareDeepSpeedEngineWrapper(wrapped.engine)
            if self._boundary_override is not None:
                self.deepspeed_engine_wrapped.set_gradient_accumulation_boundary(self._boundary_override)
        return result

    def prepare_model(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        prepared = super().prepare_model(model, *args, **kwargs)
        if isinstance(prepared, torch.nn.parallel.DistributedDataParallel) and prepared not in self._ddp_wrapped:
            self._ddp_wrapped.append(prepared)
            if self._boundary_override is False:
                prepared.require_backward_grad_sync = False
        return prepared

    def free_memory(self, *objects: Any) -> Any:
        self._ddp_wrapped = []
        self._last_boundary = None
        return super().free_memory(*objects)

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module) -> Iterator[None]:
        """accelerate 1.8.x enters the engine's ``no_sync()`` at every ZeRO stage, and DeepSpeed >= 0.16 asserts
        at ZeRO-2/3 (gradient partitioning reduces every micro-batch by design), so ``accumulate()`` failed
        there; accelerate 1.9 (#3656) made it a no-op context at those stages. Same rule on any accelerate,
        decided by what the engine says of itself, not by a version."""
        if self.distributed_type == DistributedType.DEEPSPEED and compat.engine_partitions_gradients(model):
            yield
            return
        self._no_sync_depth += 1
        try:
            with super().no_sync(model):
                yield
        finally:
            self._no_sync_depth -= 1
            self._restore_fsdp2_sync()

    # -- boundary -----------------------------------------------------------------------------------------
    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary: bool | None) -> None:
        """Persistent boundary for the following backward calls; ``None`` returns to the schedule.

        On DeepSpeed it reaches the engine at once. With DDP, ``False`` set before the forward pass skips the
        gradient all-reduce of that micro-batch (the seed's ``no_sync``); leaving ``False`` (``True`` or ``None``)
        re-enables it. An override that is not ``False`` leaves DDP's own state alone, so the user's
        ``no_sync()`` keeps holding back the all-reduce.
        """
        previous = self._boundary_override
        self._boundary_override = None if is_boundary is None else bool(is_boundary)
        if self.distributed_type == DistributedType.DEEPSPEED and self.deepspeed_engine_wrapped is not None:
            self.deepspeed_engine_wrapped.set_gradient_accumulation_boundary(self._boundary_override)
        if self._boundary_override is False or previous is False:
            for model in self._ddp_models():
                model.require_backward_grad_sync = self._boundary_override is not False
            self._restore_fsdp2_sync()

    def _schedule_sync_gradients(self) -> bool:
        state = self.gradient_state
        if isinstance(state, ScheduleAwareGradientState):
            return state.schedule_sync_gradients
        return bool(state.sync_gradients)

    def _resolve_boundary(self, is_final_micro_batch: bool | None) -> tuple[bool, bool]:
        """(boundary, explicit): first of the argument, the override, the schedule's ``sync_gradients``."""
        if is_final_micro_batch is not None:
            return bool(is_final_micro_batch), True
        if self._boundary_override is not None:
            return self._boundary_override, True
        return self._schedule_sync_gradients(), False

    def _report_boundary(self, boundary: bool) -> None:
        state = self.gradient_state
        if isinstance(state, ScheduleAwareGradientState):
            state.report_boundary(boundary)
        else:
            state._set_sync_gradients(boundary)

    def backward(self, loss: torch.Tensor, is_final_micro_batch: bool | None = None, **kwargs: Any) -> None:
        boundary, explicit = self._resolve_boundary(is_final_micro_batch)
        # The optimizer wrappers step and zero only when sync_gradients is True, and portable user code reads it:
        # it reports the resolved boundary until the next accumulate() entry or backward. Without an explicit
        # boundary this restores the schedule's value (a report of an earlier keyword must not stick).
        self._report_boundary(boundary)
        self._stepped_since_backward.clear()
        if self.distributed_type == DistributedType.DEEPSPEED:
            wrapper = self.deepspeed_engine_wrapped
            # The schedule reaches the wrapper exactly as this accelerate would pass it (>= 1.8: sync_gradients,
            # #3630; <= 1.7: nothing, and DeepSpeed's own counter decides), so untouched code gives upstream's
            # bytes on every version; a user's boundary goes as is_final_micro_batch, on every version.
            schedule = {"sync_gradients": boundary} if compat.upstream_wrapper_takes_sync_gradients() else {}
            wrapper.backward(loss, is_final_micro_batch=boundary if explicit else None,
                             **(schedule if not explicit else {}), **kwargs)
            self._last_boundary = wrapper.last_boundary
            return
        self._last_boundary = boundary
        fsdp2 = self._fsdp2_models()
        if explicit and fsdp2:
            # FSDP2 reduces (or not) during backward, so an explicit boundary sets its sync for this backward: True
            # reduces what no_sync() held back, False saves the communication; the context's setting comes back after.
            for model in fsdp2:
                model.set_requires_gradient_sync(boundary)
            try:
                super().backward(loss, **kwargs)
            finally:
                self._restore_fsdp2_sync()
            return
        if boundary and explicit:
            self._sync_held_gradients(loss)
        super().backward(loss, **kwargs)

    def _ddp_models(self) -> list[torch.nn.parallel.DistributedDataParallel]:
        return self._ddp_wrapped

    def _fsdp2_models(self) -> list[torch.nn.Module]:
        """Prepared FSDP2 (``fully_shard``) modules: they carry ``set_requires_gradient_sync``."""
        return [m for m in getattr(self, "_models", []) if callable(getattr(m, "set_requires_gradient_sync", None))]

    def _restore_fsdp2_sync(self) -> None:
        """FSDP2's gradient sync as the context and the override say: off inside no_sync() or after an override
        False, on otherwise."""
        enabled = self._no_sync_depth == 0 and self._boundary_override is not False
        for model in self._fsdp2_models():
            model.set_requires_gradient_sync(enabled)

    def _sync_held_gradients(self, loss: torch.Tensor) -> None:
        """An explicit boundary whose forward ran under ``no_sync`` (inside ``accumulate()`` off its schedule, the
        user's own ``no_sync``, or after ``set_deepspeed_gradient_accumulation_boundary(False)``) would leave each
        rank with local gradients only and the ranks would step apart. Called just before that backward: DDP's own
        reducer is armed for it, exactly as DDP's forward arms it when sync is on, so this backward reduces
        everything the window accumulated, as the upstream loop whose last micro-batch runs with sync does (the same
        bytes: DDP divides before it sums). Never for a backward without an explicit boundary: there the user's own
        ``no_sync`` means what it says upstream (hold the all-reduce back).

        Why DDP's reducer and not an all-reduce of ``.grad`` beside it: under conditional computation (a branch
        taken on some ranks only, ``find_unused_parameters=True``) the reducer agrees on the set of tensors across
        ranks (its local-used map, accumulated over the no_sync micro-batches and all-reduced), reduces its buckets
        in the same order everywhere with zeros where a rank holds no gradient, leaves a parameter no rank used with
        ``.grad`` None, and then clears that map. A re-sync beside it (one all-reduce per tensor that had a gradient,
        428deb9) paired different tensors on different ranks (gloo: "Received data size doesn't match expected
        size"), and even a collective-safe one left DDP's map set, so the next synchronised backward died
        ("Encountered gradient which is undefined, but still allreduced by DDP reducer", measured). Collectives per
        boundary: one per DDP bucket (one for small models), plus the used-map's with ``find_unused_parameters``.
        """
        for model in self._ddp_models():
            if model.require_forward_param_sync:
                continue  # its forward ran with sync: the reducer is armed already
            _arm_ddp_reduction(model, loss)

    # -- step ---------------------------------------------------------------------------------------------
    def optimizer_step_and_zero_grad(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None = None,
        max_grad_norm: float | None = None,
    ) -> float | None:
        """At a boundary: clip, step, zero and return the pre-clip global norm as a float; else ``None``.

        "At a boundary" is the resolved boundary of the most recent ``backward``. On DeepSpeed the engine
        already stepped inside ``backward`` (clipping is its ``gradient_clipping``); ``-1.0`` means it stepped
        but no norm can be had.
        """
        if self.distributed_type == DistributedType.DEEPSPEED:
            self._refuse_foreign_optimizer(optimizer)
        if not self._last_boundary:
            return None
        key = _optimizer_key(optimizer)
        if key in self._stepped_since_backward:
            return None
        self._stepped_since_backward.add(key)
        if self.distributed_type == DistributedType.DEEPSPEED:
            self._warn_on_clip_mismatch(max_grad_norm)
            return self.deepspeed_engine_wrapped.grad_norm_after_step()
        parameters = list(model.parameters()) if model is not None else _optimizer_parameters(optimizer)
        # An infinite bound measures without changing the gradients (the clip coefficient clamps to 1).
        bound = float("inf") if max_grad_norm is None else float(max_grad_norm)
        norm = self._clip_for_step(parameters, bound)
        optimizer.step()
        optimizer.zero_grad()
        return float(norm)

    def _clip_for_step(self, parameters: list[torch.nn.Parameter], bound: float) -> Any:
        """accelerate's ``clip_grad_norm_`` under FSDP finds the model the parameters belong to by comparing parameter
        lists with ``==``: an elementwise DTensor comparison, which raises for every prepared model but the first
        (two FSDP2 models: "Attempting to broadcast a dimension ...", accelerate 1.15, measured; accelerate#3789,
        closed without a fix, PR #4294 open). There the reference clips that model's parameters through accelerate's
        own DTensor-aware clipping (what ``clip_grad_norm_`` would have reached); everywhere else it is
        ``clip_grad_norm_`` itself."""
        models = getattr(self, "_models", [])
        aware = getattr(self, "_clip_grad_norm_dtensor_aware", None)
        if (self.distributed_type == DistributedType.FSDP and getattr(self, "is_fsdp2", False) and len(models) > 1
                and callable(aware) and not _same_parameters(models[0], parameters)):
            self.unscale_gradients()
            return aware(parameters, bound)
        return self.clip_grad_norm_(parameters, bound)

    def _refuse_foreign_optimizer(self, optimizer: Any) -> None:
        """DeepSpeed's engine owns its one optimizer and already stepped it in ``backward``: a call naming another
        optimizer would return a norm and zero nothing of its own, silently leaving that optimizer unstepped (DESIGN
        §3). Accepted: the optimizer ``prepare`` returned and what it wraps (the engine's optimizer, the user's torch
        optimizer the engine took over)."""
        prepared = [o for o in getattr(self, "_optimizers", [])]
        if any(optimizer is known for o in prepared for known in _wrapped_chain(o)):
            return
        names = ", ".join(type(o).__name__ for o in prepared) or "none"
        raise BoundaryError(
            f"optimizer_step_and_zero_grad({type(optimizer).__name__}): under DeepSpeed the engine owns its one "
            f"optimizer (prepared: {names}) and steps it inside backward; pass the optimizer accelerator.prepare "
            "returned, and step any other optimizer yourself outside the engine"
        )

    def _warn_on_clip_mismatch(self, max_grad_norm: float | None) -> None:
        if max_grad_norm is None or self._warned_clip_mismatch:
            return
        configured = compat.engine_gradient_clipping(self.deepspeed_engine_wrapped.engine)
        if float(max_grad_norm) != configured:
            self._warned_clip_mismatch = True
            warnings.warn(
                f"optimizer_step_and_zero_grad(max_grad_norm={max_grad_norm}) differs from DeepSpeed's "
                f"gradient_clipping={configured}; DeepSpeed clips with its config value, set both alike",
                stacklevel=3,
            )


def _same_parameters(model: torch.nn.Module, parameters: list[torch.nn.Parameter]) -> bool:
    """By identity: ``==`` on tensors compares elements."""
    own = list(model.parameters())
    return len(own) == len(parameters) and all(a is b for a, b in zip(own, parameters))


def _wrapped_chain(optimizer: Any) -> list[Any]:
    """An optimizer and everything it wraps through ``.optimizer`` (accelerate's wrappers, DeepSpeed's ZeRO
    optimizers, down to the torch optimizer)."""
    chain, seen = [], set()
    while optimizer is not None and id(optimizer) not in seen:
        chain.append(optimizer)
        seen.add(id(optimizer))
        optimizer = getattr(optimizer, "optimizer", None)
    return chain


def _optimizer_key(optimizer: Any) -> int:
    """One key per optimizer whether the user passes accelerate's wrapper or the torch optimizer inside it."""
    from accelerate.optimizer import AcceleratedOptimizer

    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return id(optimizer)


def _arm_ddp_reduction(model: torch.nn.parallel.DistributedDataParallel, loss: torch.Tensor) -> None:
    """What ``DistributedDataParallel``'s forward does when gradient sync is on (``_pre_forward``/``_post_forward``,
    torch 2.x): count the iteration and prepare the reducer for the coming backward, searching the unused parameters
    from ``loss`` where ``find_unused_parameters`` asks for it. The backward then reduces every bucket."""
    from torch.nn.parallel.distributed import _find_tensors

    reducer = model.reducer
    reducer.prepare_for_forward()
    if model.find_unused_parameters and not model.static_graph:
        reducer.prepare_for_backward(list(_find_tensors(loss)))
    else:
        reducer.prepare_for_backward([])
    model.require_forward_param_sync = True


def _optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    groups: Iterable[dict[str, Any]] = optimizer.param_groups
    return [p for group in groups for p in group["params"]]
