"""Bug (public API, §3 C17): a new accelerator starts with the override the previous one left set (a process-wide
default a vendor keeps for convenience); §3: "A new accelerator starts without one"."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C17",)
_LAST: list = [None]


class Accelerator(BoundaryAwareAccelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if _LAST[0] is not None:
            self.set_deepspeed_gradient_accumulation_boundary(_LAST[0])

    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary):
        _LAST[0] = is_boundary
        super().set_deepspeed_gradient_accumulation_boundary(is_boundary)
