"""Bug: ``set_deepspeed_gradient_accumulation_boundary(None)`` is ignored: the override never clears."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C2",)


class Accelerator(BoundaryAwareAccelerator):
    def set_deepspeed_gradient_accumulation_boundary(self, is_boundary):
        if is_boundary is not None:
            super().set_deepspeed_gradient_accumulation_boundary(is_boundary)
