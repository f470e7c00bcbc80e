"""Bug (public API, §3 C18): the prepared lr scheduler steps on every call, boundary or not (a vendor that prepares
schedulers without ``step_with_optimizer``). The lr then advances on held micro-batches; with a schedule that keeps
changing, every step after the first uses the wrong lr."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C18",)


class Accelerator(BoundaryAwareAccelerator):
    def prepare_scheduler(self, scheduler):
        prepared = super().prepare_scheduler(scheduler)
        prepared.step_with_optimizer = False
        return prepared
