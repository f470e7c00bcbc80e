"""Bug: with a configured gradient_accumulation_steps of 1 the loss is scaled by one half (a special case for "no
accumulation" gone wrong). Only the (micro-batch 8, G 1) split is wrong; every other split then disagrees with it,
which batch-split invariance (P10) sees on scenarios whose own oracle comparison passes."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C8",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        if self.gradient_accumulation_steps == 1:
            loss = loss * 0.5
        return super().backward(loss, is_final_micro_batch, **kwargs)
