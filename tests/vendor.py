"""A vendor's subclass of the reference, written the usual way to wrap a class: ``backward(self, loss, *args,
**kwargs)`` forwards everything. Its signature hides ``is_final_micro_batch`` behind ``**kwargs``; it supports the
API all the same, and the harness must judge that by calling it."""
from reference_impl import BoundaryAwareAccelerator


class VendorAccelerator(BoundaryAwareAccelerator):
    def backward(self, loss, *args, **kwargs):
        self.vendor_calls = getattr(self, "vendor_calls", 0) + 1
        return super().backward(loss, *args, **kwargs)
