"""Bug: the DeepSpeed wrapper calls ``engine.step()`` after every backward (as accelerate <= 1.7 did) although it set
the boundary itself: the engine steps at the right places, but its micro-step counter counts every call, so
anything keyed to it (DeepSpeed's own bookkeeping and logging) drifts. Only the counters (P8) see it."""
from reference_impl import BoundaryAwareAccelerator, BoundaryAwareDeepSpeedEngineWrapper

CLAUSES = ("C6",)


class _Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def backward(self, loss, sync_gradients=None, is_final_micro_batch=None, **kwargs):
        super().backward(loss, sync_gradients, is_final_micro_batch, **kwargs)
        if not self._stepped_last_backward:
            self.engine.step()  # the flag says "no boundary": nothing is applied, micro_steps advances


class Accelerator(BoundaryAwareAccelerator):
    def _prepare_deepspeed(self, *args):
        result = super()._prepare_deepspeed(*args)
        self.deepspeed_engine_wrapped = _Wrapper(self.deepspeed_engine_wrapped.engine)
        return result
