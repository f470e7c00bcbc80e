"""Bug (public API, §3 C22): inside ``accumulate()``, a plain ``backward`` at the end of a prepared DataLoader is held
when the window is short of G micro-batches by the accelerator's own count, instead of following accumulate()'s forced
boundary, so a window cut short by the data is never applied (accelerate#3552's symptom, brought back by a fork)."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C22",)


class Accelerator(BoundaryAwareAccelerator):
    _held = 0

    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        self._held += 1
        if (is_final_micro_batch is None and self.gradient_state.end_of_dataloader
                and self._held % self.gradient_accumulation_steps):
            is_final_micro_batch = False
        result = super().backward(loss, is_final_micro_batch, **kwargs)
        if self.sync_gradients:
            self._held = 0
        return result
