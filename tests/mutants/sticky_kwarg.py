"""Bug: the per-call keyword is stored as the persistent override."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C1",)


class Accelerator(BoundaryAwareAccelerator):
    def _resolve_boundary(self, is_final_micro_batch):
        if is_final_micro_batch is not None:
            self._boundary_override = bool(is_final_micro_batch)
        return super()._resolve_boundary(is_final_micro_batch)
