"""Bug: a boundary forced inside accumulate()'s no_sync steps on rank-local DDP gradients."""
from reference_impl import BoundaryAwareAccelerator


class Accelerator(BoundaryAwareAccelerator):
    def _all_reduce_unsynchronised_gradients(self):
        pass
