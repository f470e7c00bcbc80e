"""Bug: the loss is divided by G once more on top of the dependencies' own 1/G."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C8",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        return super().backward(loss / self.gradient_accumulation_steps, is_final_micro_batch, **kwargs)
