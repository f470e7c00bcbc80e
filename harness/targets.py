"""Targets: which ``Accelerator`` class the harness drives, named by a string (``--target``).

``reference`` is this project's implementation, ``native`` the installed ``accelerate.Accelerator`` (the
negative control, or a fork that ships the API), ``pkg.module:attr`` anything else. The harness never
imports a target at module level: a broken target must not break the pool.
"""
from __future__ import annotations

import importlib
from typing import Any

BUILTIN_TARGETS = {
    "reference": "reference_impl:BoundaryAwareAccelerator",
    "native": "accelerate:Accelerator",
}


class TargetError(ValueError):
    """A ``--target`` string that names nothing usable."""


def target_path(spec: str) -> str:
    """Validate the form without importing anything (cheap enough for CLI argument checks)."""
    path = BUILTIN_TARGETS.get(spec, spec)
    module, sep, attribute = path.partition(":")
    if not sep or not module or not attribute or any(not part.isidentifier() for part in module.split(".")):
        raise TargetError(f"--target {spec!r}: expected 'module:attribute' or one of {', '.join(BUILTIN_TARGETS)}")
    return path


def load_target(spec: str) -> Any:
    """The accelerator class a target names."""
    module_name, _, attribute = target_path(spec).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"--target {spec!r}: cannot import {module_name!r} ({exc})") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise TargetError(f"--target {spec!r}: module {module_name!r} has no attribute {attribute!r}") from exc


def target_capabilities(spec: str) -> dict[str, Any]:
    """What a target says of itself: the ``capabilities()`` function of the module that holds it, if it has one
    (the reference does; upstream accelerate does not). Reached through the target string, like everything else."""
    module_name, _, _ = target_path(spec).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return {"import_error": str(exc)}
    function = getattr(module, "capabilities", None)
    if not callable(function):
        return {}
    try:
        return dict(function())
    except Exception as exc:  # a target's self-report must not break a run
        return {"capabilities_error": f"{type(exc).__name__}: {exc}"}
