"""Bug (public API, §3 C15): a ``max_grad_norm`` that differs from DeepSpeed's ``gradient_clipping`` is silently
ignored (no warning): the user believes the gradients were clipped to the value they passed."""
import warnings

from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C15",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
