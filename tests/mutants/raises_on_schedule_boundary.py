"""Bug (the reference before its repair, 3642bbc): on an engine without ``set_gradient_accumulation_boundary`` a
boundary that only the *schedule* gave (a plain backward outside accumulate(), accumulate()'s DataLoader tail) is
treated as the user's and raises. Only the old-engine probe (P9) sees it."""
from reference_impl import BoundaryAwareAccelerator, BoundaryAwareDeepSpeedEngineWrapper

CLAUSES = ("C26",)


class _Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def backward(self, loss, sync_gradients=None, is_final_micro_batch=None, **kwargs):
        if is_final_micro_batch is None and sync_gradients is not None and not self._has_boundary_api:
            is_final_micro_batch = sync_gradients
        return super().backward(loss, sync_gradients, is_final_micro_batch, **kwargs)


class Accelerator(BoundaryAwareAccelerator):
    def _prepare_deepspeed(self, *args):
        result = super()._prepare_deepspeed(*args)
        self.deepspeed_engine_wrapped = _Wrapper(self.deepspeed_engine_wrapped.engine)
        return result
