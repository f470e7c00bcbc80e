"""Bug (written against programs): entering ``accumulate()`` clears the persistent override, so the schedule wins over
a boundary the user set. The override outranks the schedule (DESIGN §3 rule 2) until the user clears it."""
import contextlib

from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C17",)


class Accelerator(BoundaryAwareAccelerator):
    @contextlib.contextmanager
    def accumulate(self, *models):
        self._boundary_override = None
        with super().accumulate(*models):
            yield
