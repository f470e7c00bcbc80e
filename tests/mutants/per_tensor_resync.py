"""Bug (the reference at 428deb9, issue 28): an explicit boundary whose forward ran under no_sync re-syncs beside DDP,
one all-reduce per parameter that holds a gradient on this rank. Under conditional computation (a branch taken on
some ranks only) the ranks hold gradients for different parameters, pair different tensors in their collectives and
abort (gloo: "Received data size doesn't match expected size"); where they agree, DDP's local-used map is left set."""
import torch

from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C5",)


class Accelerator(BoundaryAwareAccelerator):
    def _sync_held_gradients(self, loss):
        self._held = [m for m in self._ddp_models() if not m.require_forward_param_sync]

    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        self._held = []
        super().backward(loss, is_final_micro_batch, **kwargs)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        for model in self._held:
            for param in model.parameters():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad.div_(world)
