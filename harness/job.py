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

from . import backends, loops, stack
from .scenario import Scenario
from .snapshot import (
    check_stack,
    check_world,
    full_gradients,
    full_parameters,
    leftover_gradients,
    release,
)
from .targets import load_target
from .trace import StepRecorder, Trace

PROBES = ("unmanaged", "old_engine", "no_grad_norm", "clip_mismatch")


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
