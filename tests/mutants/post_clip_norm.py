"""Bug: ``optimizer_step_and_zero_grad`` returns the norm after clipping instead of before."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C16", "C14")


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        norm = super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
        if norm is None or max_grad_norm is None or norm < 0:
            return norm
        return min(norm, float(max_grad_norm))
