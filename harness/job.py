"""One scenario inside one rank: build, check the world and the stack built, instrument, train the program, snapshot.

Runs in a rank process after ``world.reset_between_scenarios``; raises ``WorldMismatch`` rather than train in a
world other than the one the scenario asked for (warm-world.md: a wrong reset trains silently), and ``StackMismatchError``
rather than train on a stack other than the one asked for (DESIGN §3: a target that builds another ZeRO stage, drops
offload or changes the precision is wrong, whatever its numbers; the model reads the stage from the engine built, so
unchecked it would judge the run against what was built). Probes change the stack for one job: ``unmanaged`` sets
DeepSpeed's ``managed_gradient_accumulation: false`` and ``old_engine`` hides the engine's boundary API and
``no_sync`` (P9: a DeepSpeed before 0.5.8, or a fork without them); ``no_grad_norm`` builds an engine that reports
no norm (``zero_optimization.compute_grad_norm: false``, #8331, which needs clipping off) and ``clip_mismatch`` sets
DeepSpeed's ``gradient_clipping`` to twice the bound the program passes (P6).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch

from . import backends, loops, stack
from .models import ModelParts
from .scenario import Scenario
from .targets import load_target
from .trace import StepRecorder, Tensors, Trace

PROBES = ("unmanaged", "old_engine", "no_grad_norm", "clip_mismatch")


class WorldMismatch(RuntimeError):
    """The rank sees another world than the scenario asked for; training would be silently wrong."""


class StackMismatchError(RuntimeError):
    """The target built another stack than the scenario asked for (ZeRO stage, offload, precision)."""


def check_world(accelerator: Any, model: Any, scenario: Scenario, rank: int) -> dict[str, Any]:
    distributed_type = accelerator.distributed_type
    seen = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": getattr(distributed_type, "name", str(distributed_type)),
    }
    wanted = {"process_index": rank, "num_processes": scenario.world_size,
              "distributed_type": backends.expected_distributed_type(scenario)}
    if scenario.backend == "fsdp" and not all(backends.is_fsdp2_module(part) for part in _parts(model)):
        seen["distributed_type"] += " (the model is no fully_shard module)"
    if seen != wanted:
        raise WorldMismatch(f"{scenario.id}: rank {rank} sees {seen}, the scenario needs {wanted}; refusing to train")
    return seen


def _parts(model: Any) -> list[Any]:
    """The prepared modules behind what the loop calls (two models: both)."""
    return list(model.parts.values()) if isinstance(model, ModelParts) else [model]


def built_stack(accelerator: Any, model: Any, scenario: Scenario) -> dict[str, Any]:
    """What the target built, read from the engine DeepSpeed built (its config is what it built from) and from the
    module's parameters, or from the accelerator off DeepSpeed."""
    if scenario.is_deepspeed:
        def read(name: str, default: Any = None) -> Any:
            method = getattr(model, name, None)
            return method() if callable(method) else default

        dtype = next((p.dtype for p in model.module.parameters()), None) if hasattr(model, "module") else None
        return {"zero_stage": int(read("zero_optimization_stage", -1)),
                "offload": "cpu" if read("zero_cpu_offload", False) else "none",
                "precision": "bf16" if (read("bfloat16_enabled", False) and dtype == torch.bfloat16)
                else "fp16" if read("fp16_enabled", False) else "fp32" if dtype == torch.float32 else f"{dtype}"}
    mixed = str(getattr(accelerator, "mixed_precision", "no"))
    return {"precision": {"no": "fp32", "bf16": "bf16"}.get(mixed, mixed)}


def check_stack(accelerator: Any, model: Any, scenario: Scenario, rank: int) -> dict[str, Any]:
    """The stack the scenario asked for, or ``StackMismatchError`` naming what was built (the world's process index, count
    and distributed type are ``check_world``'s)."""
    built = built_stack(accelerator, model, scenario)
    wanted: dict[str, Any] = {"precision": scenario.precision}
    if scenario.is_deepspeed:
        wanted |= {"zero_stage": scenario.zero_stage, "offload": "cpu" if scenario.offload else "none"}
    if built != wanted:
        wrong = ", ".join(f"{key} {built.get(key)} (asked: {value})" for key, value in wanted.items()
                          if built.get(key) != value)
        raise StackMismatchError(f"{scenario.id}: rank {rank}: the target built {wrong}; refusing to judge a stack other "
                            "than the one asked for")
    return built


def _named_parameters(accelerator: Any, model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """By the names the oracle's module gives them (two models: ``<part>.<name>``)."""
    if isinstance(model, ModelParts):
        return [(f"{name}.{n}", p) for name, part in model.parts.items()
                for n, p in accelerator.unwrap_model(part).named_parameters()]
    return list(accelerator.unwrap_model(model).named_parameters())


def _full(tensor: Any) -> torch.Tensor:
    """FSDP2 shards parameters and gradients as DTensors: the full tensor is gathered (a collective: every rank
    calls it in the same order); anything else is already whole."""
    full = getattr(tensor, "full_tensor", None)
    return (full() if callable(full) else tensor).detach().float().cpu().clone()


def full_parameters(accelerator: Any, model: Any, scenario: Scenario) -> tuple[Tensors, bool]:
    """Unpartitioned fp32 CPU copies by name, and whether they are the optimizer's own fp32 weights.

    In fp32 the module's weights are the optimizer's: read as they are at ZeRO 0-2, gathered in one coalesced call at
    ZeRO-3 (``GatheredParameters``; a collective, every rank calls it together). In bf16 the optimizer's fp32 master
    weights are read: ``safe_get_full_fp32_param`` at ZeRO 1-3 (one collective per tensor, so only where needed),
    the FP16_UnfusedOptimizer's at ZeRO-0."""
    named = _named_parameters(accelerator, model)
    if scenario.is_deepspeed and scenario.zero_stage and scenario.precision == "bf16":
        from deepspeed.utils import safe_get_full_fp32_param

        return {name: safe_get_full_fp32_param(p).detach().float().cpu().clone() for name, p in named}, True
    if scenario.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {name: _full(p) for name, p in named}, True
    if scenario.is_deepspeed and scenario.precision == "bf16":
        master = _zero0_master_weights(model)
        if master is not None:
            return {name: master[id(p)].detach().float().cpu().clone() for name, p in named}, True
        return {name: _full(p) for name, p in named}, False
    return {name: _full(p) for name, p in named}, True


def _zero0_master_weights(engine: Any) -> dict[int, torch.Tensor] | None:
    """ZeRO-0 with bf16 keeps fp32 master weights in its FP16_UnfusedOptimizer (``fp32_groups`` beside the module's
    ``fp16_groups``, deepspeed 0.14-0.19); DeepSpeed offers no public accessor there (``safe_get_full_fp32_param``
    returns None at ZeRO-0). Without them the module's bf16 copies are compared, with bf16 rounding allowed."""
    optimizer = getattr(engine, "optimizer", None)
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if low is None or high is None:
        return None
    return {id(p): q for group, masters in zip(low, high) for p, q in zip(group, masters)}


def full_gradients(accelerator: Any, model: Any, scenario: Scenario) -> Tensors | None:
    """Unpartitioned gradients by name: ``safe_get_full_grad`` on DeepSpeed (a collective at ZeRO-3, so it runs on
    every rank at the same boundary), ``.grad`` elsewhere and at ZeRO-0; None when none can be read."""
    named = _named_parameters(accelerator, model)
    grads: dict[str, Any] = {name: p.grad for name, p in named}
    if scenario.is_deepspeed and scenario.zero_stage:
        from deepspeed.utils import safe_get_full_grad

        try:
            grads = {name: safe_get_full_grad(p) for name, p in named}
        except ValueError:  # ZeRO 1/2 between a step and the next backward: "only available immediately after backward"
            return None
    if all(g is None for g in grads.values()):
        return None
    return {name: (torch.zeros(tuple(p.shape), dtype=torch.float32) if g is None else _full(g))
            for (name, p), g in zip(named, grads.values())}


def leftover_gradients(run: loops.Run, scenario: Scenario) -> tuple[Tensors | None, int | None]:
    """The gradients the program leaves behind (P8). Where they sit on ``.grad`` they are read as they are (zeros
    when cleared); on FSDP2 and at ZeRO 1-3 they live in the engine's partitions, readable only right after a backward: one
    more micro-batch (the next sample) runs at a boundary on the raw engine, unstepped, and the full gradients are
    read then: the leftover plus that micro-batch's own."""
    accelerator, model = run.accelerator, run.model
    if scenario.backend == "fsdp":
        # FSDP2 keeps what a backward without gradient sync accumulated in its unsharded parameters, out of .grad's
        # reach (read there it is zero, measured): one more micro-batch with sync on reduces it into .grad, as the
        # ZeRO probe below does, and the oracle expects the same (the leftover plus that micro-batch, averaged).
        from .models import forward_loss

        probe = len(scenario.program)
        for part in _parts(model):
            part.set_requires_gradient_sync(True)
        (forward_loss(model, run.batch(probe)) / scenario.configured_g).backward()
        named = _named_parameters(accelerator, model)
        return {name: (torch.zeros(tuple(p.shape)) if p.grad is None else _full(p.grad)) for name, p in named}, probe
    if not (scenario.is_deepspeed and scenario.zero_stage):
        named = _named_parameters(accelerator, model)
        return {name: (torch.zeros(tuple(p.shape)) if p.grad is None else _full(p.grad)) for name, p in named}, None
    if not callable(getattr(model, "set_gradient_accumulation_boundary", None)):
        return None, None  # the old-engine probe hid it: nothing can be read
    probe = len(scenario.program)
    model.set_gradient_accumulation_boundary(True)
    from .models import forward_loss

    model.backward(forward_loss(model, run.batch(probe)))
    return full_gradients(accelerator, model, scenario), probe


def release(accelerator: Any, model: Any) -> None:
    """What ``accelerator.free_memory()`` does between scenarios, without its ``gc.collect()`` (a quarter of a ZeRO-3
    job's time, measured; the world freezes what survives the first job of each backend instead): the engine's hooks
    removed (``engine.destroy()``, before the next scenario builds one) and the accelerator's references dropped."""
    engine = getattr(getattr(accelerator, "deepspeed_engine_wrapped", None), "engine", None)
    destroy = getattr(engine, "destroy", None)
    if callable(destroy):
        destroy()
    for name in ("_models", "_optimizers", "_schedulers", "_dataloaders"):
        getattr(accelerator, name, []).clear()
    accelerator.deepspeed_engine_wrapped = None


def _learning_rate(optimizer: Any) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


@contextlib.contextmanager
def _probe(probe: str | None, scenario: Scenario) -> Iterator[dict[str, Any] | None]:
    """The stack change a probe makes for one job; the class attributes are restored after."""
    if probe is None:
        yield None
        return
    if probe not in PROBES or not scenario.is_deepspeed:
        raise ValueError(f"probe {probe!r}: expected one of {', '.join(PROBES)} on a DeepSpeed scenario")
    if probe == "unmanaged":
        yield {"managed_gradient_accumulation": False}
        return
    if probe == "no_grad_norm":
        zero = backends.deepspeed_config(scenario)["zero_optimization"]
        yield {"zero_optimization": {**zero, "compute_grad_norm": False}, "gradient_clipping": 0.0}
        return
    if probe == "clip_mismatch":
        yield {"gradient_clipping": 2.0 * (scenario.clip or 1.0)}
        return
    from deepspeed.runtime.engine import DeepSpeedEngine

    hidden = {name: DeepSpeedEngine.__dict__[name] for name in ("set_gradient_accumulation_boundary", "no_sync")
              if name in DeepSpeedEngine.__dict__}
    for name in hidden:  # deleted, not set to None: accelerate looks no_sync up with a default
        delattr(DeepSpeedEngine, name)
    try:
        yield None
    finally:
        for name, original in hidden.items():
            setattr(DeepSpeedEngine, name, original)


class _YoungGenerationGc:
    """``gc`` as DeepSpeed's ZeRO-3 ``defragment`` sees it in the warm world: its full ``gc.collect()`` rescans every
    object the rank holds at every engine build (0.1 s of a 0.16 s MLP job, measured); collecting the young
    generation frees the cycles a build leaves without it. Numerics are untouched: it only frees memory."""

    @staticmethod
    def collect(generation: int = 0) -> int:
        import gc

        return gc.collect(0)


def without_shm_op() -> None:
    """DeepSpeed JIT-builds its CPU shared-memory comm op when its communication backend starts (30-130 s per new
    venv, measured) and uses it only for ``inference_all_reduce``, which training never calls (deepspeed/comm/torch.py):
    the ranks skip building it, and every venv saves that compile."""
    import importlib

    try:  # by module path: `from deepspeed.comm import torch` would give PyTorch itself (imported by that package)
        ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    except Exception:
        return
    ds_comm_torch.build_shm_op = lambda: None


def _quick_zero3_defragment() -> None:
    try:
        from deepspeed.runtime.zero import utils as zero_utils
    except Exception:
        return
    zero_utils.gc = _YoungGenerationGc


def run(scenario: Scenario, target: str, rank: int, count_collectives: bool = False,
        probe: str | None = None) -> Trace | str:
    """The trace, or the reason the target does not support this scenario's API (found by calling it)."""
    accelerator_cls = load_target(target)
    if scenario.zero_stage == 3:
        _quick_zero3_defragment()
    if scenario.is_client or scenario.api == "trainer":
        from . import clients

        return clients.run(scenario, accelerator_cls, rank, count_collectives and scenario.world_size > 1)
    with warnings.catch_warnings(record=True) as caught, _probe(probe, scenario) as overrides:
        warnings.simplefilter("always")
        prepared = backends.build(scenario, accelerator_cls, overrides)
        accelerator, model = prepared.accelerator, prepared.model
        trace = Trace(rank=rank, world=check_world(accelerator, model, scenario, rank))
        if probe is None:  # a probe changes the stack on purpose
            trace.world["stack"] = check_stack(accelerator, model, scenario, rank)
        trace.facts = stack.facts(scenario.backend, scenario.world_size,
                                  model if scenario.is_deepspeed else None)
        # The weights the first step starts from: in fp32 the seeded model's (the oracle builds them itself; not read
        # here, so a target that changes the weights while preparing them shows at the first step); DeepSpeed in bf16
        # keeps fp32 master weights made from the bf16-cast module, so there they are read.
        if scenario.is_deepspeed and scenario.precision == "bf16":
            trace.initial_params, trace.params_are_master = full_parameters(accelerator, model, scenario)
        recorder = StepRecorder(trace, params=lambda: full_parameters(accelerator, model, scenario)[0],
                                grads=lambda: full_gradients(accelerator, model, scenario),
                                lr=lambda: _learning_rate(prepared.optimizers[0]))
        if scenario.is_deepspeed:
            recorder.wrap_engine_step(model)
            recorder.wrap_clip(accelerator, take_grads=False)  # only what it returns (P6): the engine stepped already
        else:
            recorder.wrap_clip(accelerator)
            for index, optimizer in enumerate(prepared.optimizers):
                recorder.wrap_optimizer_step(optimizer.optimizer, index)
        try:
            session = loops.Run(prepared, scenario, rank, trace)
            try:
                loops.train(session, recorder, count_collectives=count_collectives and scenario.world_size > 1)
            except loops.TargetLacksApi as lacking:
                return str(lacking)
            if scenario.is_deepspeed:
                trace.engine_global_steps = model.global_steps
                trace.engine_micro_steps = model.micro_steps
            trace.final_params, _ = full_parameters(accelerator, model, scenario)
            trace.leftover_grads, trace.leftover_probe = leftover_gradients(session, scenario)
        finally:
            release(accelerator, model)
    said = [f"{w.category.__name__}: {w.message}" for w in caught
            if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    trace.warnings = sorted(set(said))
    trace.warning_counts = {text: said.count(text) for text in trace.warnings}
    return trace
