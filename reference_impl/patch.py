"""``patch_accelerate()``: run unmodified third-party scripts on the reference.

It swaps the reference classes into the ``accelerate`` namespaces a script imports from. It applies at
once (usable as a plain call) and undoes itself on ``undo()`` or when used as a context manager.
"""
from __future__ import annotations

import importlib
from types import TracebackType
from typing import Any

# (module, attribute) pairs through which scripts and accelerate itself reach the two classes.
_ACCELERATOR_SLOTS = [("accelerate", "Accelerator"), ("accelerate.accelerator", "Accelerator")]
_WRAPPER_SLOTS = [("accelerate.utils", "DeepSpeedEngineWrapper"), ("accelerate.utils.deepspeed", "DeepSpeedEngineWrapper"),
                  ("accelerate.accelerator", "DeepSpeedEngineWrapper")]


class AcceleratePatch:
    """Handle of one patch; restores exactly what it replaced."""

    def __init__(self) -> None:
        from .accelerator import BoundaryAwareAccelerator
        from .deepspeed_wrapper import BoundaryAwareDeepSpeedEngineWrapper

        self._saved: list[tuple[Any, str, Any]] = []
        for slots, replacement in ((_ACCELERATOR_SLOTS, BoundaryAwareAccelerator),
                                   (_WRAPPER_SLOTS, BoundaryAwareDeepSpeedEngineWrapper)):
            for module_name, attribute in slots:
                module = importlib.import_module(module_name)
                if hasattr(module, attribute):
                    self._saved.append((module, attribute, getattr(module, attribute)))
                    setattr(module, attribute, replacement)

    def undo(self) -> None:
        for module, attribute, original in reversed(self._saved):
            setattr(module, attribute, original)
        self._saved.clear()

    def __enter__(self) -> "AcceleratePatch":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.undo()


def patch_accelerate() -> AcceleratePatch:
    """Swap ``BoundaryAwareAccelerator`` and its DeepSpeed wrapper into ``accelerate``; returns the handle."""
    return AcceleratePatch()
