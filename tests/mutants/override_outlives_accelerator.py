"""Bug: the last boundary override is also kept in a process-wide slot (a cached config, say) and the next
Accelerator created in the process starts with it, once. Every run that starts clean trains right; only a run that
follows one which left set_deepspeed_gradient_accumulation_boundary(True) set (the next scenario, the next job in
the same process) steps on every micro-batch: only P8-leak, which runs exactly that, can see it."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C17",)

_LAST_SET: list = [None]


class Accelerator(BoundaryAwareAccelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._boundary_override = _LAST_SET[0]
        _LAST_SET[0] = None

    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary):
        super().set_deepspeed_gradient_accumulation_boundary(is_boundary)
        _LAST_SET[0] = is_boundary
