"""Bug (the reference before its repair, 3642bbc): after a plain backward under the user's own ``no_sync()`` the
gradients are all-reduced anyway, so ``no_sync`` no longer holds back the all-reduce (accelerate's test_sync.py:
"Gradients in sync when they should not be"). The numbers stay right; the communication (P7) and the bytes of
upstream (P3) do not."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C4",)


class Accelerator(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        boundary, explicit = self._resolve_boundary(is_final_micro_batch)
        if boundary and not explicit and self.distributed_type != "DEEPSPEED":
            self._sync_held_gradients(loss)
        super().backward(loss, is_final_micro_batch, **kwargs)
