"""Bug: every micro-batch is treated as a boundary (the optimizer steps each time)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C6", "C7")


class Accelerator(BoundaryAwareAccelerator):
    def _resolve_boundary(self, is_final_micro_batch):
        return True, True
