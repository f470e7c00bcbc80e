"""Bug: ``set_deepspeed_gradient_accumulation_boundary(False)`` leaves DDP's all-reduce on (right result,
wasted communication: the seed's ``no_sync`` promise broken)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C11",)


class Accelerator(BoundaryAwareAccelerator):
    def _ddp_models(self):
        return []
