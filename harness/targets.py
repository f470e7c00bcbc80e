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
        found = getattr(module, attribute)
    except AttributeError as exc:
        raise TargetError(f"--target {spec!r}: module {module_name!r} has no attribute {attribute!r}") from exc
    problem = not_an_accelerator_class(found)
    if problem:
        raise TargetError(f"--target {spec!r}: found {problem}; expected a class deriving from accelerate.Accelerator "
                          f"(e.g. {BUILTIN_TARGETS['reference']})")
    return found


def not_an_accelerator_class(found: Any) -> str | None:
    """What a target attribute is when it is not an ``Accelerator`` class (None when it is one). Without this a module
    or a function named by mistake would run every scenario into the same ``error``: one line now, not N verdicts."""
    import inspect

    if inspect.isclass(found):
        from accelerate import Accelerator

        if issubclass(found, Accelerator):
            return None
        return f"class {found.__module__}.{found.__qualname__}, which does not derive from accelerate.Accelerator"
    if inspect.ismodule(found):
        return f"a module ({found.__name__})"
    if inspect.isroutine(found):
        return f"a function ({getattr(found, '__module__', '?')}.{getattr(found, '__qualname__', found)})"
    return f"an instance of {type(found).__module__}.{type(found).__qualname__}, not a class"


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
