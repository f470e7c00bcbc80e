"""Capability detection for the installed (or forked) accelerate and DeepSpeed.

Features are detected by ``hasattr``/signature, never by version strings alone, so that a fork which
back-ports an API is treated as having it. Every quirk lives here with its version range and thread.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
from typing import Any, Iterator


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def engine_has_boundary_api(engine: Any) -> bool:
    """``set_gradient_accumulation_boundary`` exists since DeepSpeed 0.5.8 (#1588); forks may lack it."""
    return callable(getattr(engine, "set_gradient_accumulation_boundary", None))


def engine_manages_accumulation(engine: Any) -> bool:
    """``managed_gradient_accumulation`` (DeepSpeed 0.19.4+, #8184): False makes the boundary API assert.

    Older engines ignore the config key and always manage accumulation, hence the default True.
    """
    managed = getattr(engine, "managed_gradient_accumulation", None)
    if callable(managed):
        return bool(managed())
    return True


def is_pipeline_engine(engine: Any) -> bool:
    """By class name along the MRO, so neither deepspeed.runtime.pipe nor a fork's copy must be imported."""
    return any(cls.__name__ == "PipelineEngine" for cls in type(engine).__mro__)


def engine_zero_stage(engine: Any) -> int:
    stage = getattr(engine, "zero_optimization_stage", None)
    return int(stage()) if callable(stage) else 0


def engine_partitions_gradients(engine: Any) -> bool:
    """ZeRO-2/3 partition gradients, and DeepSpeed's ``no_sync()`` asserts there (#6675, 0.16+)."""
    partitions = getattr(engine, "zero_optimization_partition_gradients", None)
    return bool(partitions()) if callable(partitions) else engine_zero_stage(engine) >= 2


def engine_gradient_clipping(engine: Any) -> float:
    clipping = getattr(engine, "gradient_clipping", None)
    return float(clipping()) if callable(clipping) else 0.0


def engine_computes_grad_norm(engine: Any) -> bool:
    """Whether ``engine.get_global_grad_norm()`` can be non-None after a step.

    The engine copies ``optimizer._global_grad_norm`` after each step; a plain torch optimizer at ZeRO-0
    has none, so the engine reports None there (measured, deepspeed 0.19.8).
    """
    return hasattr(getattr(engine, "optimizer", None), "_global_grad_norm")


def engine_global_grad_norm(engine: Any) -> float | None:
    getter = getattr(engine, "get_global_grad_norm", None)
    norm = getter() if callable(getter) else None
    if norm is None:
        return None
    return float(norm.item() if hasattr(norm, "item") else norm)


@contextlib.contextmanager
def engine_sync_allowed(engine: Any) -> Iterator[None]:
    """Lift the engine's ``no_sync`` for one boundary backward + step.

    accelerate enters ``engine.no_sync()`` inside ``accumulate()`` off its own boundary at ZeRO 0/1
    (accelerate #3656, 1.9+), and DeepSpeed >= 0.16 asserts when ``step()`` runs inside it (#6675). An
    explicit boundary must win over ``accumulate()``'s schedule, so the flag is cleared for the boundary
    micro-batch (the engine then all-reduces the locally accumulated gradients) and restored after.
    """
    inside = bool(getattr(engine, "inside_no_sync_ctxt", False))
    if inside:
        engine.inside_no_sync_ctxt = False
    try:
        yield
    finally:
        if inside:
            engine.inside_no_sync_ctxt = True


def parameters_of(function: Any) -> set[str]:
    """Parameter names, looking through wrappers that forget ``functools.wraps``: DeepSpeed's
    ``instrument_w_nvtx`` hides ``engine.backward``'s signature behind ``(*args, **kwargs)`` and keeps the
    real function only in its closure."""
    seen = 0
    while function is not None and seen < 5:
        names = set(inspect.signature(function).parameters) - {"args", "kwargs"}
        if names - {"self"}:
            return names
        inner = getattr(function, "__wrapped__", None)
        if inner is None and getattr(function, "__closure__", None):
            inner = next((c.cell_contents for c in function.__closure__ if callable(c.cell_contents)), None)
        function, seen = inner, seen + 1
    return set()


@functools.lru_cache(maxsize=1)
def upstream_wrapper_takes_sync_gradients() -> bool:
    """accelerate >= 1.8 (#3630) calls ``wrapper.backward(loss, sync_gradients=...)``; <= 1.7 ``backward(loss)``.

    Read from accelerate's own class even after ``patch_accelerate()`` swapped the reference's wrapper in (the
    first class of the MRO that accelerate defines), so the answer is the installed upstream's."""
    try:
        from accelerate.utils.deepspeed import DeepSpeedEngineWrapper
    except ImportError:
        return False
    upstream = next((c for c in DeepSpeedEngineWrapper.__mro__ if c.__module__.startswith("accelerate.")),
                    DeepSpeedEngineWrapper)
    return "sync_gradients" in inspect.signature(upstream.backward).parameters


def capabilities() -> dict[str, Any]:
    """What the installed stack offers, for ``accumgate env`` and for reports."""
    caps: dict[str, Any] = {
        "torch": installed_version("torch"),
        "accelerate": installed_version("accelerate"),
        "deepspeed": installed_version("deepspeed"),
        "transformers": installed_version("transformers"),
        "accelerate_forwards_boundary": upstream_wrapper_takes_sync_gradients(),
    }
    try:
        from deepspeed.runtime.engine import DeepSpeedEngine
    except Exception as exc:  # deepspeed missing or broken on this torch: report, never crash
        caps["deepspeed_import_error"] = f"{type(exc).__name__}: {exc}"
        return caps
    caps["engine_boundary_api"] = callable(getattr(DeepSpeedEngine, "set_gradient_accumulation_boundary", None))
    caps["engine_no_sync"] = callable(getattr(DeepSpeedEngine, "no_sync", None))
    caps["engine_managed_accumulation_key"] = callable(getattr(DeepSpeedEngine, "managed_gradient_accumulation", None))
    caps["engine_scale_wrt_gas"] = "scale_wrt_gas" in parameters_of(DeepSpeedEngine.backward)
    caps["engine_get_global_grad_norm"] = callable(getattr(DeepSpeedEngine, "get_global_grad_norm", None))
    caps["engine_destroy"] = callable(getattr(DeepSpeedEngine, "destroy", None))
    caps["zero_compute_grad_norm_key"] = _zero_config_has("compute_grad_norm")
    # Where the pre-clip global norm that optimizer_step_and_zero_grad returns comes from, per ZeRO stage: a plain
    # torch optimizer at ZeRO-0 has none (the engine reports None), so the reference measures it itself.
    caps["grad_norm_source_zero0"] = "reference (measured before the step)"
    caps["grad_norm_source_zero1_3"] = "engine.get_global_grad_norm()" + (
        " (None if zero_optimization.compute_grad_norm is false)" if caps["zero_compute_grad_norm_key"] else "")
    return caps


def _zero_config_has(key: str) -> bool:
    """A field of DeepSpeed's ZeRO config model, under pydantic 2 (``model_fields``) or 1 (``__fields__``)."""
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except Exception:
        return False
    fields = getattr(DeepSpeedZeroConfig, "model_fields", None) or getattr(DeepSpeedZeroConfig, "__fields__", {})
    return key in fields
