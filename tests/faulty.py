"""Targets that fail on purpose, on rank 1 only, at the third micro-batch: the world must turn each into an
``error`` outcome with every rank's story, within the timeout, and then carry on."""
from __future__ import annotations

import os
import signal
import time

from reference_impl import BoundaryAwareAccelerator


class _FaultOnRank1(BoundaryAwareAccelerator):
    def backward(self, loss, is_final_micro_batch=None, **kwargs):
        self._calls = getattr(self, "_calls", 0) + 1
        if self.process_index == 1 and self._calls == 3:
            self.fault()
        return super().backward(loss, is_final_micro_batch, **kwargs)

    def fault(self) -> None:
        raise NotImplementedError


class Raises(_FaultOnRank1):
    def fault(self) -> None:
        raise RuntimeError("injected fault on rank 1")


class Hangs(_FaultOnRank1):
    def fault(self) -> None:
        time.sleep(3600)


class Dies(_FaultOnRank1):
    def fault(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)
