"""Bug (a fork's wrapper, §3 C9): ``backward`` requires accelerate >= 1.8's ``sync_gradients`` argument, so code written
for accelerate <= 1.7 (``wrapper.backward(loss)``) breaks; §3: both signatures keep working."""
from reference_impl import BoundaryAwareDeepSpeedEngineWrapper

CLAUSES = ("C9",)


class Wrapper(BoundaryAwareDeepSpeedEngineWrapper):
    def backward(self, loss, sync_gradients=None, is_final_micro_batch=None, **kwargs):
        if sync_gradients is None and is_final_micro_batch is None:
            raise TypeError("backward() missing required argument: 'sync_gradients'")
        return super().backward(loss, sync_gradients, is_final_micro_batch, **kwargs)
