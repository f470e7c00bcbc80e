"""Bug: the boundary override lives on the class, so one Accelerator's override leaks into the next one
created in the same process (the next scenario, the next training job)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C17",)


class Accelerator(BoundaryAwareAccelerator):
    _shared_override = None

    @property
    def _boundary_override(self):
        return type(self)._shared_override

    @_boundary_override.setter
    def _boundary_override(self, value):
        if value is not None:  # a new Accelerator's None does not clear the shared value
            type(self)._shared_override = value
