"""Bug (public API, §3 C19): ``optimizer_step_and_zero_grad(..., max_grad_norm=None)`` clips to 1.0 anyway (a default
filled in where §3 says "clips nothing but still returns the norm")."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C19",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        return super().optimizer_step_and_zero_grad(optimizer, model, 1.0 if max_grad_norm is None else max_grad_norm)
