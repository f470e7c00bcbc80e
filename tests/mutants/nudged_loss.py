"""Bug: the keyword path perturbs the loss by one part in a million: inside the oracle's fp32 tolerance,
so only the bit-identity of manual vs automatic accumulation (P1) can see it."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C1",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        if is_final_micro_batch is not None:
            loss = loss * (1.0 + 2.0**-20)
        return super().backward(loss, is_final_micro_batch, **kwargs)
