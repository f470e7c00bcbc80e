"""What the installed accelerate / DeepSpeed do, read by the harness itself (never through the target: the facts
of the stack are not the implementation's to report). Two uses: ``facts`` for the model of DESIGN §3 (measured in
the rank that ran, on the very engine it built) and ``versions`` for reports and xfails.

Imports accelerate and DeepSpeed only inside functions: listing scenarios must stay cheap and a broken
dependency must not break the pool.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import io
from typing import Any

VERSIONED = ("accelerate", "deepspeed", "torch", "transformers")


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    return {name: installed_version(name) for name in names}


@functools.lru_cache(maxsize=1)
def accelerate_forwards_boundary() -> bool:
    """accelerate >= 1.8 (#3630) passes ``sync_gradients`` to its DeepSpeed wrapper's ``backward``: read from
    accelerate's own class (the first accelerate class of the MRO, so a patched-in subclass does not answer)."""
    try:
        from accelerate.utils.deepspeed import DeepSpeedEngineWrapper
    except ImportError:
        return False
    upstream = next((c for c in DeepSpeedEngineWrapper.__mro__ if c.__module__.startswith("accelerate.")),
                    DeepSpeedEngineWrapper)
    return "sync_gradients" in inspect.signature(upstream.backward).parameters


def facts(backend: str, world_size: int, engine: Any = None) -> dict[str, Any]:
    """``programs.model.Facts`` as a dict, for the engine this rank really built (a probe may have hidden its API)."""
    kind = "deepspeed" if backend.startswith("ds") else backend
    out: dict[str, Any] = {"backend": kind, "world_size": world_size,
                           "accelerate_forwards_boundary": accelerate_forwards_boundary()}
    if engine is not None:
        stage = getattr(engine, "zero_optimization_stage", None)
        out["zero_stage"] = int(stage()) if callable(stage) else 0
        out["engine_boundary_api"] = callable(getattr(engine, "set_gradient_accumulation_boundary", None))
        out["engine_no_sync"] = callable(getattr(engine, "no_sync", None))
        out["engine_reports_grad_norm"] = engine_reports_grad_norm(engine, out["zero_stage"])
    return out


def engine_reports_grad_norm(engine: Any, zero_stage: int) -> bool:
    """Whether ``engine.get_global_grad_norm()`` has a value after a step, read from the engine DeepSpeed built: ZeRO
    1-3 compute one unless ``zero_optimization.compute_grad_norm`` is false (#8331); at ZeRO-0 the engine copies its
    optimizer's ``_global_grad_norm`` after the step, which a plain torch optimizer does not have (bf16's
    FP16_UnfusedOptimizer does)."""
    if zero_stage >= 1:
        zero_config = getattr(getattr(engine, "_config", None), "zero_config", None)
        return bool(getattr(zero_config, "compute_grad_norm", True))
    return hasattr(getattr(engine, "optimizer", None), "_global_grad_norm")


def capabilities() -> dict[str, Any]:
    """The installed stack as ``accumgate env`` and reports show it (versions first)."""
    caps: dict[str, Any] = dict(versions())
    caps["accelerate_forwards_boundary"] = accelerate_forwards_boundary()
    try:
        # DeepSpeed's logger binds the stdout it finds at import ("Setting accelerator to CPU…"): the coordinator
        # imports it only to read its classes, so what it says here is kept off the console for good.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from deepspeed.runtime.engine import DeepSpeedEngine
    except Exception as exc:  # deepspeed missing or broken on this torch: report, never crash
        caps["deepspeed_import_error"] = f"{type(exc).__name__}: {exc}"
        return caps
    caps["engine_boundary_api"] = callable(getattr(DeepSpeedEngine, "set_gradient_accumulation_boundary", None))
    caps["engine_no_sync"] = callable(getattr(DeepSpeedEngine, "no_sync", None))
    caps["engine_managed_accumulation_key"] = callable(getattr(DeepSpeedEngine, "managed_gradient_accumulation", None))
    caps["engine_get_global_grad_norm"] = callable(getattr(DeepSpeedEngine, "get_global_grad_norm", None))
    caps["engine_destroy"] = callable(getattr(DeepSpeedEngine, "destroy", None))
    return caps
