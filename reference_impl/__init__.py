"""Reference implementation of boundary-aware gradient accumulation on the installed accelerate/DeepSpeed.

Imports nothing from the harness: the harness reaches it only through a ``--target`` string.
"""
from __future__ import annotations

from .accelerator import BoundaryAwareAccelerator
from .compat import capabilities
from .deepspeed_wrapper import BoundaryAwareDeepSpeedEngineWrapper
from .errors import BoundaryError, BoundaryUnsupportedError, PipelineEngineError, UnmanagedAccumulationError
from .patch import patch_accelerate

__all__ = [
    "BoundaryAwareAccelerator",
    "BoundaryAwareDeepSpeedEngineWrapper",
    "BoundaryError",
    "BoundaryUnsupportedError",
    "PipelineEngineError",
    "UnmanagedAccumulationError",
    "capabilities",
    "patch_accelerate",
]
