"""Bug: ``is_final_micro_batch`` is accepted and ignored (upstream's silent failure mode)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C1",)


class Accelerator(BoundaryAwareAccelerator):
    def _resolve_boundary(self, is_final_micro_batch):
        return super()._resolve_boundary(None)
