"""Bug: after a boundary's step the engine's micro-step counter is advanced once more (bookkeeping done twice):
training is right while boundaries are explicit, but any code that reads the counter (a checkpoint's micro-step,
a later loop left to DeepSpeed's counter) is off. Only the engine's counters compared with what the program implies
(P8) can see it on a run whose steps are all explicit."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C6",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        result = super().backward(loss, is_final_micro_batch, **kwargs)
        wrapped = getattr(self, "deepspeed_engine_wrapped", None)
        if wrapped is not None and wrapped.stepped_last_backward:
            wrapped.engine.micro_steps += 1
        return result
