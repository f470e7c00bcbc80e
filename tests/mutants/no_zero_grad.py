"""Bug: ``optimizer_step_and_zero_grad`` steps but never zeroes: gradients leak into the next window."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C16",)


class _KeepGrads:
    def __init__(self, optimizer):
        self._optimizer = optimizer

    def step(self):
        self._optimizer.step()

    def zero_grad(self, *args, **kwargs):
        pass


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        return super().optimizer_step_and_zero_grad(_KeepGrads(optimizer), model, max_grad_norm) \
            if model is not None else super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
