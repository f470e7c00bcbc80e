"""Bug: keyword arguments of ``backward`` do not reach the engine, so ``scale_wrt_gas=False`` is lost and
DeepSpeed divides the user's own token-normalised loss by G once more (transformers #35808 relies on them)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C21",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        return super().backward(loss, is_final_micro_batch)
