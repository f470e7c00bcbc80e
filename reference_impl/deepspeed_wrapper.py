"""The boundary-aware replacement for accelerate's ``DeepSpeedEngineWrapper``.

It owns one decision per micro-batch: is this the gradient-accumulation boundary? It tells the engine
before backward, and calls ``engine.step()`` only at a boundary (on accelerate <= 1.7, after every backward, as
upstream does there, so that DeepSpeed's micro-step counter counts every micro-batch), so ``engine.global_steps``
counts boundaries. It never lets DeepSpeed's internal asserts be the error a user sees.

Two inputs decide, and they are kept apart on purpose (DESIGN §3): ``is_final_micro_batch`` is a boundary the
*user* gave (the keyword, or the persistent override); ``sync_gradients`` is what accelerate's *schedule* says
(accelerate >= 1.8 passes it; <= 1.7 passes nothing and the engine's own counter decides). Only a user's
boundary may contradict the engine, lift its ``no_sync`` or make an old engine raise.
"""
from __future__ import annotations

from typing import Any

from accelerate.utils.deepspeed import DeepSpeedEngineWrapper

from . import compat
from .errors import BoundaryUnsupportedError, PipelineEngineError, UnmanagedAccumulationError


class BoundaryAwareDeepSpeedEngineWrapper(DeepSpeedEngineWrapper):
    """Wraps a ``DeepSpeedEngine``; accepts both accelerate call signatures of ``backward``."""

    def __init__(self, engine: Any) -> None:
        if compat.is_pipeline_engine(engine):
            raise PipelineEngineError(
                "boundary-aware accumulation does not apply to DeepSpeed's PipelineEngine: it schedules its "
                "own micro-batches; call engine.train_batch(data_iter) instead of backward/step"
            )
        if not compat.engine_manages_accumulation(engine):
            raise UnmanagedAccumulationError(
                "DeepSpeed config sets 'managed_gradient_accumulation': false, where the engine rejects "
                "accumulation boundaries; remove the key (default true) to use backward(is_final_micro_batch=...), "
                "or drive engine.backward()/engine.step() yourself"
            )
        super().__init__(engine)
        self._gradient_accumulation_boundary: bool | None = None
        # The boundary forced by set_gradient_accumulation_boundary(); None: the caller decides per backward.
        self._boundary_override: bool | None = None
        self._has_boundary_api = compat.engine_has_boundary_api(engine)
        # Whether the engine's sticky boundary flag was set by this wrapper (DeepSpeed never resets it).
        self._engine_flag_set = False
        self._stepped_last_backward = False
        self._pre_step_grad_norm: float | None = None

    # -- boundary -----------------------------------------------------------------------------------------
    def set_gradient_accumulation_boundary(self, is_boundary: bool | None) -> None:
        """Record the boundary and tell the engine now, so code before backward (ZeRO-3 prefetch,
        ``engine.is_gradient_accumulation_boundary()``) already sees it. ``None`` hands the decision back."""
        self._boundary_override = None if is_boundary is None else bool(is_boundary)
        if self._has_boundary_api:
            self._set_engine_flag(self._boundary_override)

    def _set_engine_flag(self, boundary: bool | None) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self._engine_flag_set = boundary is not None

    @property
    def last_boundary(self) -> bool | None:
        """The boundary the most recent ``backward`` resolved to (None before the first)."""
        return self._gradient_accumulation_boundary

    # -- backward -----------------------------------------------------------------------------------------
    def backward(self, loss: Any, sync_gradients: bool | None = None, is_final_micro_batch: bool | None = None,
                 **kwargs: Any) -> None:
        """``is_final_micro_batch``: the user's boundary (else the override). ``sync_gradients``: the schedule's
        (accelerate >= 1.8). Neither (accelerate <= 1.7's ``backward(loss)``): the engine's own micro-step
        counter decides and ``step()`` runs after every backward, exactly as before #3630.

        A keyword is per call (DESIGN §3 rule 1): after its backward the engine's sticky flag goes back to the
        override, so that code before the next forward (ZeRO-3 prefetch, ``engine.is_gradient_accumulation_boundary()``)
        sees the override again (§3: "the override is visible to the engine before the forward pass"). Found by the
        explorer: override True, a keyword False, then a query before the next forward read False."""
        try:
            self._backward(loss, sync_gradients, is_final_micro_batch, **kwargs)
        finally:
            if (self._has_boundary_api and self._boundary_override is not None
                    and is_final_micro_batch is not None and bool(is_final_micro_batch) != self._boundary_override):
                self._set_engine_flag(self._boundary_override)

    def _backward(self, loss: Any, sync_gradients: bool | None, is_final_micro_batch: bool | None,
                  **kwargs: Any) -> None:
        explicit = is_final_micro_batch if is_final_micro_batch is not None else self._boundary_override
        explicit = None if explicit is None else bool(explicit)
        if not self._has_boundary_api:
            self._backward_following_engine_counter(loss, explicit, **kwargs)
            return
        boundary = explicit if explicit is not None else (None if sync_gradients is None else bool(sync_gradients))
        if boundary is None:
            if self._engine_flag_set:  # an earlier explicit boundary must not stick to the counter's calls
                self._set_engine_flag(None)
            self._gradient_accumulation_boundary = bool(self.engine.is_gradient_accumulation_boundary())
            self.engine.backward(loss, **kwargs)
            self._step(always=True)
            return
        self._gradient_accumulation_boundary = boundary
        self._set_engine_flag(boundary)
        if boundary and explicit:
            # Only a boundary the user gave lifts accumulate()'s engine.no_sync(): untouched code inside the user's
            # own no_sync() meets DeepSpeed's assert exactly as upstream accelerate does (DESIGN §3).
            with compat.engine_sync_allowed(self.engine):
                self.engine.backward(loss, **kwargs)
                self._step(always=False)
        elif boundary:
            self.engine.backward(loss, **kwargs)
            self._step(always=False)
        else:
            self.engine.backward(loss, **kwargs)
            if not compat.upstream_wrapper_takes_sync_gradients() and not getattr(self.engine, "inside_no_sync_ctxt",
                                                                                   False):
                # accelerate <= 1.7 steps the engine after every backward and DeepSpeed's micro-step counter decides
                # a later plain backward: a held micro-batch must count there too (a step at a False boundary only
                # moves the counter), or the counter falls out of phase with the windows and the user's False
                # sticks to the next plain call (DESIGN §3 rule 1; found by the acc170-ds0154 matrix row).
                self.engine.step()
            self._stepped_last_backward = False

    def _backward_following_engine_counter(self, loss: Any, explicit: bool | None, **kwargs: Any) -> None:
        """An engine without ``set_gradient_accumulation_boundary``: its counter decides; only a boundary the user
        gave and the counter contradicts is an error (a schedule's boundary is not the user's: DESIGN §3)."""
        counter_boundary = bool(self.engine.is_gradient_accumulation_boundary())
        if explicit is not None and explicit != counter_boundary:
            raise BoundaryUnsupportedError(
                f"explicit boundary {explicit} disagrees with the engine's micro-step counter ({counter_boundary}) "
                f"and this DeepSpeed ({compat.installed_version('deepspeed')}) has no "
                "set_gradient_accumulation_boundary (added in 0.5.8, #1588); upgrade DeepSpeed or use "
                "windows of exactly gradient_accumulation_steps"
            )
        self._gradient_accumulation_boundary = counter_boundary
        self.engine.backward(loss, **kwargs)
        self._step(always=True)

    def _step(self, always: bool) -> None:
        """``always``: the engine's own counter decides inside ``step()`` (legacy and fallback paths)."""
        at_boundary = bool(self._gradient_accumulation_boundary)
        self._pre_step_grad_norm = self._own_pre_clip_norm() if at_boundary else None
        steps_before = getattr(self.engine, "global_steps", None)
        if at_boundary or always:
            self.engine.step()
        steps_after = getattr(self.engine, "global_steps", None)
        self._stepped_last_backward = at_boundary if steps_before is None else steps_after != steps_before

    # -- grad norm ----------------------------------------------------------------------------------------
    def _own_pre_clip_norm(self) -> float | None:
        """Where the engine reports no norm (a plain torch optimizer at ZeRO-0, deepspeed 0.19.8) the full,
        already all-reduced gradients sit on the parameters just before ``step()``: measure them there."""
        if compat.engine_computes_grad_norm(self.engine) or compat.engine_zero_stage(self.engine) != 0:
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return None
        import torch

        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def get_global_grad_norm(self) -> float | None:
        """Pre-clip global norm of the most recent step; None when the engine has none and none was measured."""
        norm = compat.engine_global_grad_norm(self.engine)
        if norm is None:
            norm = self._pre_step_grad_norm
        return norm

    def grad_norm_after_step(self) -> float | None:
        """None when the last backward did not step; -1.0 when it stepped but no norm can be had."""
        if not self._stepped_last_backward:
            return None
        norm = self.get_global_grad_norm()
        return -1.0 if norm is None else norm

    @property
    def stepped_last_backward(self) -> bool:
        return self._stepped_last_backward
