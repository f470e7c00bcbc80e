"""Bug: a boundary forced inside accumulate()'s no_sync steps on rank-local DDP gradients (nothing reduces them)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C5",)


class Accelerator(BoundaryAwareAccelerator):
    def _sync_held_gradients(self, loss):
        pass
