"""Bug: code that uses none of the new API no longer reaches accelerate exactly as upstream's would: the loss of a
plain backward is scaled by one part in a million. Inside the oracle's fp32 tolerance, so only the bytes of the
installed upstream accelerate (P3) can see it."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C4",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        if is_final_micro_batch is None and self._boundary_override is None:
            loss = loss * (1.0 + 2.0**-20)
        return super().backward(loss, is_final_micro_batch, **kwargs)
