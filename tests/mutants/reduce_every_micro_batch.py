"""Bug: the engine is told "boundary" on every micro-batch, though it steps only at real boundaries. The
averages still add up (mean of sums = sum of means), so the numbers are right; only the communication is
wrong: a gradient all-reduce on every micro-batch, which P7's collective count sees."""
from reference_impl import BoundaryAwareAccelerator, BoundaryAwareDeepSpeedEngineWrapper

CLAUSES = ("C6",)


class _Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def backward(self, loss, sync_gradients=None, is_final_micro_batch=None, **kwargs):
        boundary = is_final_micro_batch if is_final_micro_batch is not None else sync_gradients
        if boundary:
            return super().backward(loss, sync_gradients, is_final_micro_batch, **kwargs)
        self._gradient_accumulation_boundary = False
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.backward(loss, **kwargs)
        self._stepped_last_backward = False


class Accelerator(BoundaryAwareAccelerator):
    def _prepare_deepspeed(self, *args):
        result = super()._prepare_deepspeed(*args)
        self.deepspeed_engine_wrapped = _Wrapper(self.deepspeed_engine_wrapped.engine)
        return result
