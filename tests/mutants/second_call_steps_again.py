"""Bug (public API, §3 C20): a second ``optimizer_step_and_zero_grad`` for the same optimizer after the same boundary
steps it again (a vendor that decides by ``sync_gradients`` alone). With AdamW, zero gradients still move the weights
(its moments, its decay)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C20",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        norm = super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
        if norm is None and self.sync_gradients and self.distributed_type != "DEEPSPEED":
            optimizer.step()
            optimizer.zero_grad()
        return norm
