"""Bug (the reference before its repair, 3642bbc): the resolved boundary is written into accelerate's
``sync_gradients`` and read back as the schedule, so one ``is_final_micro_batch=False`` outside ``accumulate()``
holds every later plain ``backward``: the model silently stops training."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C3",)


class Accelerator(BoundaryAwareAccelerator):
    def _schedule_sync_gradients(self):
        return bool(self.gradient_state.sync_gradients)
