"""Bug: each boundary is applied one micro-batch late."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C6",)


class Accelerator(BoundaryAwareAccelerator):
    _previous = (False, True)

    def _resolve_boundary(self, is_final_micro_batch):
        current = super()._resolve_boundary(is_final_micro_batch)
        previous, self._previous = self._previous, current
        return previous
