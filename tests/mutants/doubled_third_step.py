"""Bug: the third boundary's update is applied twice over (the step runs with twice the learning rate: what stepping
the same window's update twice amounts to under SGD, and more than AdamW's momentum would give): the weights move
by two steps where the schedule says one."""
from reference_impl import BoundaryAwareAccelerator, BoundaryAwareDeepSpeedEngineWrapper

CLAUSES = ("C6",)


class _Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    _boundaries = 0

    def _step(self, always):
        if not self._gradient_accumulation_boundary:
            return super()._step(always)
        self._boundaries += 1
        if self._boundaries != 3:
            return super()._step(always)
        groups = self.engine.optimizer.param_groups
        saved = [group["lr"] for group in groups]
        for group in groups:
            group["lr"] *= 2
        try:
            return super()._step(always)
        finally:
            for group, lr in zip(groups, saved):
                group["lr"] = lr


class Accelerator(BoundaryAwareAccelerator):
    def _prepare_deepspeed(self, *args):
        result = super()._prepare_deepspeed(*args)
        self.deepspeed_engine_wrapped = _Wrapper(self.deepspeed_engine_wrapped.engine)
        return result
