"""Bug: after an explicit boundary ``accelerator.sync_gradients`` keeps the schedule's value instead of reporting the
resolved boundary. On DeepSpeed the engine still steps right, but user code written as ``if
accelerator.sync_gradients: ...`` (logging, the lr scheduler) is told the wrong thing. P4 sees the report; with an lr
schedule the lr too."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C12",)


class Accelerator(BoundaryAwareAccelerator):
    def _report_boundary(self, boundary):
        super()._report_boundary(self._schedule_sync_gradients())
