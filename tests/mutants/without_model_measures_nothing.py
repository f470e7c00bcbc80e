"""Bug (public API, §3 C19): called without ``model``, ``optimizer_step_and_zero_grad`` measures and clips no parameters
(returns a norm of 0, clips nothing) where §3 says it "measures, clips and steps the optimizer's own parameters"."""
import torch

from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C19",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        return super().optimizer_step_and_zero_grad(optimizer, torch.nn.Module() if model is None else model,
                                                    max_grad_norm)
