"""Bug (public API, §3 C19): off a boundary, ``optimizer_step_and_zero_grad`` called with ``max_grad_norm=None`` drops the
gradients (a "tidy" vendor setting ``.grad`` to None); §3: off a boundary it does nothing at all, whatever its
arguments — the window's held gradients are lost. (Through accelerate's optimizer wrapper, whose ``zero_grad`` does
nothing off a boundary, the same intent would be harmless: the vendor reaches past it.)"""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C19",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        norm = super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
        if norm is None and max_grad_norm is None and not self.sync_gradients:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
        return norm
