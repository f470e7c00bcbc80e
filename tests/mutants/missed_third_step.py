"""Bug: the third boundary is reported but never applied: the engine is told "no boundary", so that window's
gradients carry over into the next one and a whole step is lost. Under bf16 or AdamW a comparison that looks only
at the first step, or allows lr-sized drift, would not see it; P2/P5 judge every step from where the run stood."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C6",)


class Accelerator(BoundaryAwareAccelerator):
    _boundaries = 0

    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        boundary, _ = self._resolve_boundary(is_final_micro_batch)
        if boundary:
            self._boundaries += 1
            if self._boundaries == 3:
                return super().backward(loss, is_final_micro_batch=False, **kwargs)
        return super().backward(loss, is_final_micro_batch, **kwargs)
