"""Bug (public API, §3 C14): at ZeRO-0, where DeepSpeed's engine reports no norm, ``optimizer_step_and_zero_grad``
returns -1.0 instead of measuring the full gradients before the step (§3: -1.0 only when no norm can be had)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C14",)


class Accelerator(BoundaryAwareAccelerator):
    def optimizer_step_and_zero_grad(self, optimizer, model=None, max_grad_norm=None):
        norm = super().optimizer_step_and_zero_grad(optimizer, model, max_grad_norm)
        engine = getattr(self.deepspeed_engine_wrapped, "engine", None)
        if norm is not None and engine is not None and engine.get_global_grad_norm() is None:
            return -1.0
        return norm
