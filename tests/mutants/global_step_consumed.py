"""Bug (the reference at 428deb9, issue 27): the first optimizer_step_and_zero_grad after a boundary consumes it for
every optimizer, so with two models and two optimizers (a GAN, an actor and a critic) the second never steps and its
gradients pile up. DESIGN §3: each optimizer steps once per boundary."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C20",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        if self._stepped_since_backward:
            return None
        return super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
