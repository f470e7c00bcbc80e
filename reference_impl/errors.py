"""Errors the reference raises instead of letting a dependency's internal ``assert`` reach the user.

Each message says what was wrong, what was expected and what to do, in one line a person can act on.
"""
from __future__ import annotations


class BoundaryError(RuntimeError):
    """Base class: boundary-aware accumulation cannot do what was asked without training wrongly."""


class BoundaryUnsupportedError(BoundaryError):
    """The engine has no ``set_gradient_accumulation_boundary`` and an explicit boundary disagrees with its
    own micro-step counter; following either silently would train on the wrong windows."""


class UnmanagedAccumulationError(BoundaryError):
    """DeepSpeed runs with ``managed_gradient_accumulation: false``: the engine refuses a boundary (it asserts
    inside ``set_gradient_accumulation_boundary``), so the boundary-aware API rejects the config up front."""


class PipelineEngineError(BoundaryError):
    """A ``PipelineEngine`` schedules its own micro-batches; boundaries are meaningless there."""
