"""Bug (written against programs): on DeepSpeed a boundary forced by the override (``set_deepspeed_gradient_
accumulation_boundary(True)``) inside ``accumulate()``'s ``engine.no_sync()`` is passed as the schedule's, not the
user's, so it does not lift ``no_sync`` and DeepSpeed's assert is what the user sees. Only the keyword is handled."""
from reference_impl import BoundaryAwareAccelerator


class Accelerator(BoundaryAwareAccelerator):
    def _resolve_boundary(self, is_final_micro_batch):
        if is_final_micro_batch is None and self._boundary_override is not None:
            return self._boundary_override, False
        return super()._resolve_boundary(is_final_micro_batch)
