"""Bug (written against programs): outside ``accumulate()`` a plain backward is taken as a boundary, whatever the
schedule last said. Upstream reads ``sync_gradients`` as ``accumulate()`` left it (False after a window left open):
untouched code must do the same (DESIGN §3 rule 3), and only a program that leaves a window open and goes on without
``accumulate()`` shows the difference."""
from reference_impl import BoundaryAwareAccelerator

CLAUSES = ("C3",)


class Accelerator(BoundaryAwareAccelerator):
    _inside = 0

    def accumulate(self, *models):
        import contextlib

        @contextlib.contextmanager
        def counted():
            self._inside += 1
            try:
                with BoundaryAwareAccelerator.accumulate(self, *models):
                    yield
            finally:
                self._inside -= 1
        return counted()

    def _schedule_sync_gradients(self):
        return super()._schedule_sync_gradients() if self._inside else True
