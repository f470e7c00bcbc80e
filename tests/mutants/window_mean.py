"""Bug: every window weighs as much as a full one, whatever its length (a tempting "fix" of DeepSpeed's under-weighted
partial windows that breaks DESIGN §3's rule: each micro-batch loss divided by the configured G). The boundary's
loss is scaled up so that a window of n micro-batches counts like G of them. Uniform windows are unchanged; only
windows of another length (P5) show it."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C8",)


class Accelerator(BoundaryAwareAccelerator):
    _seen_in_window = 0

    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        self._seen_in_window += 1
        boundary, _ = self._resolve_boundary(is_final_micro_batch)
        if boundary:
            loss = loss * (self.gradient_accumulation_steps - self._seen_in_window + 1)
            self._seen_in_window = 0
        return super().backward(loss, is_final_micro_batch, **kwargs)
