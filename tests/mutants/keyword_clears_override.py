"""Bug (written against programs): a ``backward(loss, is_final_micro_batch=...)`` clears the persistent override, as if
the keyword replaced it. The keyword is per call (DESIGN §3 rule 1): after it the override must hold again. No named
style mixes the two; a generated program does."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C2",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        result = super().backward(loss, is_final_micro_batch, **kwargs)
        if is_final_micro_batch is not None:
            self._boundary_override = None
        return result
