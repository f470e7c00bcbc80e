"""``BoundaryAwareAccelerator``: accelerate's ``Accelerator`` with an explicit accumulation boundary.

Boundary resolution for each ``backward`` (DESIGN §3): the ``is_final_micro_batch`` argument, else the
override from ``set_deepspeed_gradient_accumulation_boundary``, else ``sync_gradients``. Loss scaling stays
the dependencies' own (1/configured G); this class only decides *when* the optimizer steps.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from .compat import engine_partitions_gradients
from .deepspeed_wrapper import BoundaryAwareDeepSpeedEngineWrapper


class BoundaryAwareAccelerator(Accelerator):
    """Drop-in ``Accelerator`` adding ``is_final_micro_batch``, a persistent boundary override and
    ``optimizer_step_and_zero_grad``; code that uses none of them behaves exactly as upstream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._boundary_override: bool | None = None
        # Resolved boundary of the most recent backward; None before the first one.
        self._last_boundary: bool | None = None
        # optimizer_step_and_zero_grad consumed the last boundary: a second call must not step again.
        self._boundary_consumed = False
        self._warned_clip_mismatch = False
        # accelerate keeps the *unwrapped* module in _models for MULTI_CPU/MULTI_GPU, so the DDP wrappers
        # whose gradient sync the boundary controls are tracked here.
        self._ddp_wrapped: list[torch.nn.parallel.DistributedDataParallel] = []

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
            if self._boundary_override is not None:
                prepared.require_backward_grad_sync = self._boundary_override
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
        if self.distributed_type == DistributedType.DEEPSPEED and engine_partitions_gradients(model):
            yield
            return
        with super().no_sync(model):
            yield

    # -- boundary -----------------------------------------------------------------------------------------
    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary: bool | None) -> None:
        """Persistent boundary for the following backward calls; ``None`` returns to ``sync_gradients``.

        On DeepSpeed it reaches the engine at once. With DDP, ``False`` set before the forward pass skips the
        gradient all-reduce of that micro-batch (the seed's ``no_sync``); ``True`` or ``None`` re-enables it.
        """
        self._boundary_override = None if is_boundary is None else bool(is_boundary)
        if self.distributed_type == DistributedType.DEEPSPEED and self.deepspeed_engine_wrapped is not None:
            self.deepspeed_engine_wrapped.set_gradient_accumulation_boundary(self._boundary_override)
        for model in self._ddp_models():
            model.require_backward_grad_sync = self._boundary_override is not False

    def _resolve_boundary(self, is_final_micro_batch: bool | None) -> tuple[bool, bool]:
        """(boundary, explicit): first of the argument, the override, ``sync_gradients``."""
        if is_final_micro_batch is not None:
            return bool(is_final_micro_batch), True
        if self._boundary_override is not None:
            return self._boundary_override, True
        return bool(self.sync_gradients), False

    def backward(self, loss: torch.Tensor, is_final_micro_batch: bool | None = None, **kwargs: Any) -> None:
        boundary, explicit = self._resolve_boundary(is_final_micro_batch)
        if explicit:
            # The optimizer wrappers step and zero only when sync_gradients is True, and portable user code
            # reads it: it reports the resolved boundary until the next accumulate() entry or backward.
            self.gradient_state._set_sync_gradients(boundary)
        self._last_boundary = boundary
        self._boundary_consumed = False
        if self.distributed_type == DistributedType.DEEPSPEED:
            # Called directly, not through super(), so the boundary reaches the engine whatever this
            # accelerate version passes (<= 1.7 passes none, #3630).
            self.deepspeed_engine_wrapped.backward(loss, sync_gradients=boundary, **kwargs)
            return
        super().backward(loss, **kwargs)
        if boundary:
            self._all_reduce_unsynchronised_gradients()

    def _ddp_models(self) -> list[torch.nn.parallel.DistributedDataParallel]:
        return self._ddp_wrapped

    def _all_reduce_unsynchronised_gradients(self) -> None:
        """A boundary whose forward ran under ``no_sync`` (inside ``accumulate()`` off its schedule, or after
        ``set_deepspeed_gradient_accumulation_boundary(False)``) left each rank with local gradients only:
        average them now, as DDP would have, or the ranks would step on different gradients and diverge."""
        for model in self._ddp_models():
            if model.require_forward_param_sync:
                continue
            world = torch.distributed.get_world_size()
            for param in model.parameters():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad.div_(world)

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
        if not self._last_boundary or self._boundary_consumed:
            return None
        self._boundary_consumed = True
        if self.distributed_type == DistributedType.DEEPSPEED:
            self._warn_on_clip_mismatch(max_grad_norm)
            return self.deepspeed_engine_wrapped.grad_norm_after_step()
        parameters = list(model.parameters()) if model is not None else _optimizer_parameters(optimizer)
        # An infinite bound measures without changing the gradients (the clip coefficient clamps to 1).
        bound = float("inf") if max_grad_norm is None else float(max_grad_norm)
        norm = self.clip_grad_norm_(parameters, bound)
        optimizer.step()
        optimizer.zero_grad()
        return float(norm)

    def _warn_on_clip_mismatch(self, max_grad_norm: float | None) -> None:
        if max_grad_norm is None or self._warned_clip_mismatch:
            return
        from . import compat

        configured = compat.engine_gradient_clipping(self.deepspeed_engine_wrapped.engine)
        if float(max_grad_norm) != configured:
            self._warned_clip_mismatch = True
            warnings.warn(
                f"optimizer_step_and_zero_grad(max_grad_norm={max_grad_norm}) differs from DeepSpeed's "
                f"gradient_clipping={configured}; DeepSpeed clips with its config value, set both alike",
                stacklevel=3,
            )


def _optimizer_parameters(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    groups: Iterable[dict[str, Any]] = optimizer.param_groups
    return [p for group in groups for p in group["params"]]
