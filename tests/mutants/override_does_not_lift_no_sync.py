"""Bug (written against programs): on DeepSpeed a boundary forced by the override (``set_deepspeed_gradient_
accumulation_boundary(True)``) reaches the engine as if the schedule had said it: it does not lift ``accumulate()``'s
``engine.no_sync()``, and DeepSpeed's assert is what the user sees. Only the keyword is treated as the user's."""
from reference_impl import BoundaryAwareAccelerator, BoundaryAwareDeepSpeedEngineWrapper

CLAUSES = ("C24",)


class _Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def backward(self, loss, sync_gradients=None, is_final_micro_batch=None, **kwargs):
        if is_final_micro_batch is None and self._boundary_override is not None:
            override, self._boundary_override = self._boundary_override, None
            try:
                return super().backward(loss, sync_gradients=override, **kwargs)
            finally:
                self._boundary_override = override
        return super().backward(loss, sync_gradients, is_final_micro_batch, **kwargs)


class Accelerator(BoundaryAwareAccelerator):
    def _resolve_boundary(self, is_final_micro_batch):
        if is_final_micro_batch is None and self._boundary_override is not None:
            return self._boundary_override, False
        return super()._resolve_boundary(is_final_micro_batch)

    def _prepare_deepspeed(self, *args):
        result = super()._prepare_deepspeed(*args)
        self.deepspeed_engine_wrapped = _Wrapper(self.deepspeed_engine_wrapped.engine)
        return result
