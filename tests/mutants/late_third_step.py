"""Bug: the third boundary is applied one micro-batch late (the step happens after the first micro-batch of the next
window, with its gradient in it)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C6",)


class Accelerator(BoundaryAwareAccelerator):
    _boundaries = 0
    _owed = False

    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        boundary, _ = self._resolve_boundary(is_final_micro_batch)
        if self._owed:
            self._owed = False
            return super().backward(loss, is_final_micro_batch=True, **kwargs)
        if boundary:
            self._boundaries += 1
            if self._boundaries == 3:
                self._owed = True
                return super().backward(loss, is_final_micro_batch=False, **kwargs)
        return super().backward(loss, is_final_micro_batch, **kwargs)
