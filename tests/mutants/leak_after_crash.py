"""Bug: the last boundary override outlives the accelerator (kept in a process-wide slot, as in
override_outlives_accelerator), and a run that sets it True for the fourth time crashes right after storing it. The
crash restarts the world, so the next scenario runs in fresh processes and starts clean: judged by the follow-up alone,
P8-leak passed. Its leaving run's own outcome is part of the verdict now: error."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C17",)

_LAST_SET: list = [None]


class Accelerator(BoundaryAwareAccelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._boundary_override = _LAST_SET[0]
        _LAST_SET[0] = None
        self._set_true = 0

    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary):
        super().set_deepspeed_gradient_accumulation_boundary(is_boundary)
        _LAST_SET[0] = is_boundary
        self._set_true += is_boundary is True
        if self._set_true == 4:
            raise RuntimeError("leak_after_crash: the fourth override True")
