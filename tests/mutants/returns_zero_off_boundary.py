"""Bug (public API, §3 C13): off a boundary ``optimizer_step_and_zero_grad`` returns 0.0 instead of None (a vendor that
"always returns a float"), so ``if norm is not None: log(norm)`` logs a zero norm on every held micro-batch."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C13",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        norm = super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
        return 0.0 if norm is None else norm
