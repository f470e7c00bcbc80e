"""Bug: clip_grad_norm_ returns the right pre-clip norm but leaves the gradients 1% smaller than it should (a
max_norm rounding gone wrong), on every call alike: manual and automatic runs agree (P1), every batch split agrees
(P10), the reported norm is right (P6 where it applies) and nothing is left behind (P8); only the steps compared
with the float64 oracle (P2) can see it."""
import torch

from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C16",)


class Accelerator(BoundaryAwareAccelerator):
    def clip_grad_norm_(self, parameters, max_norm, norm_type=2):
        parameters = list(parameters)
        norm = super().clip_grad_norm_(parameters, max_norm, norm_type)
        with torch.no_grad():
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad.mul_(0.99)
        return norm
