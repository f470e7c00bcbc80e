"""Bug (written against programs): an explicit boundary re-syncs DDP gradients only inside ``accumulate()``; a boundary
forced under the user's own ``no_sync()`` then steps on each rank's local gradients and the ranks diverge. DESIGN §3:
the reference re-syncs at every explicit boundary whose forward ran without sync."""
import contextlib

from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C5",)


class Accelerator(BoundaryAwareAccelerator):
    _in_accumulate = False

    @contextlib.contextmanager
    def accumulate(self, *models):
        self._in_accumulate = True
        try:
            with super().accumulate(*models):
                yield
        finally:
            self._in_accumulate = False

    def _sync_held_gradients(self, loss):
        if self._in_accumulate:
            super()._sync_held_gradients(loss)
