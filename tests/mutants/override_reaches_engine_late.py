"""Bug (public API, §3 C23): ``set_deepspeed_gradient_accumulation_boundary`` keeps the flag and tells the engine only
at the next ``backward``; code before the forward (``engine.is_gradient_accumulation_boundary()``, ZeRO-3 prefetch)
sees the old boundary. Training is right; the engine's view before the forward is not."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C23", "C10")
_UNSET = object()


class Accelerator(BoundaryAwareAccelerator):
    _pending = _UNSET

    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary):
        self._pending = is_boundary

    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        if self._pending is not _UNSET:
            super().set_deepspeed_gradient_accumulation_boundary(self._pending)
            self._pending = _UNSET
        return super().backward(loss, is_final_micro_batch, **kwargs)
