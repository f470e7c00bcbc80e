"""A counterexample a maintainer can act on: one standalone Python file that imports only torch, accelerate, deepspeed
and the target (no accumgate), runs the minimal program under ``torchrun --nproc_per_node 2`` (or plain ``python``
for one process), judges the quantity where accumgate saw the program go wrong *with the property's own tolerance*,
prints that first deviation exactly as accumgate printed it, and exits 1 while the bug is there.

A program that uses none of the new API, and on which upstream accelerate shows the same first deviation, gets an
upstream-only script: plain ``accelerate.Accelerator``, no reference import (DESIGN §3: untouched code trains to
upstream's bytes, P3), ready to attach to the upstream thread.

How it stays faithful without importing accumgate:
- the check is *data*: the harness re-judges the failing property on the recorded run, catches the comparison that
  produced the first deviation (``_recording``) and bakes in its location, its expected value (the float64 oracle's,
  the model's, or another run's bytes) and its tolerance;
- the code that reads a run (full parameters and gradients, the step recorder, the collective counter) and the
  comparison itself are copied into the script from the harness's own source when it is written (``inspect``), so
  the script reads and compares exactly as the harness does: one home for each, two copies of none.
"""
from __future__ import annotations

import ast
import contextlib
import inspect
import json
import re
import sys
import textwrap
from typing import Any, Iterator

from .. import compare, loops, snapshot, trace
from ..backends import ADAMW_WEIGHT_DECAY, LEARNING_RATES, _fsdp2_accelerator, deepspeed_config
from ..data import TARGET_SCALE
from ..models import HIDDEN, IN_FEATURES, OUT_FEATURES
from ..properties import REGISTRY, SUBJECT
from ..properties.base import _last_line
from ..scenario import Scenario
from .program import NO_CALL

UPSTREAM_TARGET = "accelerate:Accelerator"


class NoRepro(ValueError):
    """This counterexample's first deviation is of a kind the standalone script cannot check; says which."""


# ------------------------------------------------------------------------------------------------ the check as data
@contextlib.contextmanager
def _recording() -> Iterator[list[tuple[str, tuple, dict, Any, int]]]:
    """Every call of the comparison functions while a property judges: (function, args, kwargs, result, depth),
    depth 0 for the property's own calls (``compare_tensors`` calls ``compare_tensor`` at depth 1). The functions
    are swapped wherever a harness module bound them, and put back after."""
    originals = {name: getattr(compare, name) for name in ("compare_tensors", "compare_scalar", "compare_tensor")}
    calls: list[tuple[str, tuple, dict, Any, int]] = []
    depth = [0]

    def wrapped(name: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            try:
                result = function(*args, **kwargs)
            finally:
                depth[0] -= 1
            calls.append((name, args, kwargs, result, depth[0]))
            return result
        return call

    swapped = []
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("harness") and m is not None]:
        for name, function in originals.items():
            if getattr(module, name, None) is function:
                swapped.append((module, name, function))
                setattr(module, name, wrapped(name, function))
    try:
        yield calls
    finally:
        for module, name, function in swapped:
            setattr(module, name, function)


def _location(where: str, tensor: str) -> tuple[str, list[Any]]:
    """Where in a run a deviation's quantity lives, from its place and label (the harness's own vocabulary)."""
    step = re.search(r"\bstep (\d+) of \d+", where)
    micro = re.search(r"micro-batch (\d+)", where)
    name = re.search(r"\[(.+)\]$", tensor)
    k, i = (int(step.group(1)) - 1 if step else None), (int(micro.group(1)) if micro else None)
    if "followed" in where:
        raise NoRepro(f"{where}: a run after another scenario (P8-leak) has no standalone script")
    if tensor.startswith("grad[") and k is not None:
        return "tensor", ["steps", k, "grads", name.group(1)]
    if tensor.startswith("param") and name and k is not None:
        return "tensor", ["steps", k, "params", name.group(1)]
    if tensor.startswith("param") and name and "final" in where:
        return "tensor", ["final", name.group(1)]
    if tensor == "loss" and i is not None:
        return "scalar", ["losses", i]
    if tensor == "lr used by the step" and k is not None:
        return "scalar", ["lr", k]
    if tensor == "engine.get_global_grad_norm()" and k is not None:
        return "scalar", ["engine_grad_norm", k]
    if tensor.startswith("optimizer_step_and_zero_grad()") and i is not None:
        return "scalar", ["returned", i]
    if "micro_steps" in tensor:
        return "scalar", ["counter", "micro_steps"]
    if tensor in ("engine.global_steps", "engine_global_steps"):
        return "scalar", ["counter", "global_steps"]
    if tensor == "accelerator.sync_gradients":
        return "equal", ["sync", i] if i is not None else ["sync_list"]
    if tensor == "optimizer steps":
        return "equal", ["step_points"]
    if tensor == "collectives" and i is not None:
        return "collectives", ["collectives", i]
    if tensor == "gradients" and i is not None:
        return "digests", ["digests", i]
    if tensor in ("outcome", "error") and where.startswith("probe old_engine"):
        return "probe", ["old_engine"]
    raise NoRepro(f"no standalone check for {tensor!r} at {where!r}")


def _jsonable(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": value.double().tolist(), "shape": list(value.shape)}
    return value


def _lists(text: str) -> list[Any]:
    return [ast.literal_eval(found) for found in re.findall(r"\[[^\[\]]*\]", text)]


def check_of(runner: Any, scenario: Scenario, code: str) -> dict[str, Any]:
    """The first deviation of ``code`` on ``scenario`` as the runner judged it, as a check a script can make alone:
    where it lives, what was expected, the tolerance, what accumgate printed."""
    verdict = runner.verdict(scenario, code)
    prop = REGISTRY[code]
    base = {"property": prop.name, "code": code, "scenario": scenario.id}
    if not verdict.deviations:
        if verdict.raw != "error" or (verdict.reason or "").startswith("needed "):
            raise NoRepro(f"{prop.name}: {verdict.outcome} ({verdict.reason}): no deviation of the program's own run")
        return base | {"kind": "error", "rank": 0, "printed": f"{prop.name}: error: {verdict.reason}"}
    first = verdict.deviations[0]
    where, tensor, message = first["where"], first["tensor"], first["message"]
    detail = message.split("\n  ", 1)[1] if "\n  " in message else ""
    kind, path = _location(where, tensor)
    rank = re.search(r"rank (\d+)", where)
    check = base | {"kind": kind, "path": path, "rank": int(rank.group(1)) if rank else 0, "where": where,
                    "tensor": tensor, "detail": detail, "printed": message.replace("\n", " "), "message": message}
    if kind in ("tensor", "scalar"):
        evidence = runner.evidence(scenario, prop)
        with _recording() as calls:
            found = prop.judge(scenario, evidence)
        if not any(d.where == where and d.tensor == tensor for d in found):
            raise NoRepro(f"{prop.name}: judging again did not give {where} · {tensor}")
        check |= _comparison(calls, where, tensor, detail, path)
    elif kind == "equal":
        if path[0] == "sync":
            check["want"] = "want True" in detail
        elif path[0] == "sync_list":
            check["want"] = ast.literal_eval(detail.split(" vs ", 1)[1])
        else:
            check["want"] = _lists(detail)[1]
    elif kind in ("collectives", "digests"):
        check["promised"] = "(reduces)" in where
    elif kind == "probe":
        check["want_error"] = "want an error naming" in detail or "want the target's own error" in detail
        named = re.search(r"naming (\S+)", detail)
        check["naming"] = named.group(1).rstrip(",") if named else ""
    return check


def _comparison(calls: list, where: str, tensor: str, detail: str, path: list[Any]) -> dict[str, Any]:
    """The expected value and the tolerance of the comparison that produced the deviation."""
    for name, args, kwargs, result, depth in calls:
        if depth != 0:
            continue
        if name == "compare_tensors" and any(d.where == where and d.tensor == tensor and d.detail == detail
                                             for d in result):
            key = path[-1]
            bound = (kwargs.get("bounds") or {}).get(key)
            return {"want": _jsonable(args[1][key]), "rtol": kwargs.get("rtol", 0.0), "atol": kwargs.get("atol", 0.0),
                    "bound": bound.double().tolist() if bound is not None else None,
                    "bound_text": kwargs.get("bound_text", ""), "as": "tensors"}
        if name == "compare_scalar" and any(d.where == where and d.tensor == tensor and d.detail == detail
                                            for d in result):
            return {"want": args[1], "rtol": kwargs.get("rtol", 0.0), "atol": kwargs.get("atol", 0.0),
                    "bound": kwargs.get("bound"), "bound_text": kwargs.get("bound_text", ""), "as": "scalar"}
        if name == "compare_tensor" and result == detail:
            want = args[1]
            return {"want": float(want), "rtol": kwargs.get("rtol", 0.0), "atol": kwargs.get("atol", 0.0),
                    "bound": None, "bound_text": "", "as": "float64"}
    raise NoRepro(f"the comparison behind {where} · {tensor} was not found when judging again")


# ------------------------------------------------------------------------------------------------ the script
def _source(*objects: Any) -> str:
    return "\n\n".join(textwrap.dedent(inspect.getsource(o)) for o in objects)


HELPERS = (snapshot._named_parameters, snapshot._full, snapshot.full_parameters, snapshot._zero0_master_weights,
           snapshot.full_gradients,
           trace.StepRecord, trace.StepRecorder, loops._count_collectives, _last_line, compare.tolerance_text,
           compare.measure_tensor, compare.compare_tensor)

TEMPLATE = '''#!/usr/bin/env python3
"""{title}

{summary}

The program ({id}), as the user wrote it:

{program}

Found with: {versions}
Run:        {run}
Judged as accumgate judged it: {prop} at "{where}", {what}.
Imports only torch, accelerate, deepspeed{target_note}. Prints the first deviation as accumgate printed it and exits 1
while the bug is there; exits 0 when this run gives what was expected. Written by `accumgate explore`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Any, Callable

{env}import torch
from accelerate.state import PartialState

from {target_module} import {target_attr} as Accelerator

Tensors = dict


class ModelParts:  # accumgate's two-model shape; this script's model is one module
    pass


CHECK = json.loads({check!r})
SCENARIO = types.SimpleNamespace(**json.loads({axes!r}))
G = {g}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear({in_features}, {hidden})
        self.fc2 = torch.nn.Linear({hidden}, {out_features})

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def sample(rank, index):
    generator = torch.Generator().manual_seed(1_000_003 * {seed} + 10_007 * rank + index)
    return torch.randn({in_features}, generator=generator), {target_scale} * torch.randn({out_features}, generator=generator)


def micro_batch(rank, index, size={micro_batch_size}):
    pairs = [sample(rank, index * size + k) for k in range(size)]
    return {{"inputs": torch.stack([p[0] for p in pairs]), "targets": torch.stack([p[1] for p in pairs])}}


# ---- how accumgate reads a run and compares, copied from its source ----------------------------------------------
{helpers}


def without_shm_op():
    """DeepSpeed JIT-builds a shared-memory op when its communication starts (30-130 s on CPU) that only inference
    uses; training never calls it, so it is not built (nothing else changes)."""
    try:
        import importlib

        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    except Exception:
        pass


def build():
    without_shm_op()
    {partial_state}
    {accelerator}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed({seed})
        model = MLP()
    optimizer = {optimizer}
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def engine_boundary(accelerator):
    """What user code reads of the engine before the forward (None where there is no DeepSpeed engine)."""
    engine = getattr(getattr(accelerator, "deepspeed_engine_wrapped", None), "engine", None)
    asks = getattr(engine, "is_gradient_accumulation_boundary", None)
    return bool(asks()) if callable(asks) else None


def hide_engine_boundary_api():
    """An engine without set_gradient_accumulation_boundary and no_sync (DeepSpeed < 0.5.8, or a fork)."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    for name in ("set_gradient_accumulation_boundary", "no_sync"):
        if name in DeepSpeedEngine.__dict__:
            delattr(DeepSpeedEngine, name)


def train(accelerator, model, optimizer):
    rank = accelerator.process_index
    run = types.SimpleNamespace(steps=[], losses=[], sync_gradients=[], returned={{}}, collectives=[], digests=[])
    recorder = StepRecorder(run, params=lambda: full_parameters(accelerator, model, SCENARIO)[0],
                            grads=lambda: full_gradients(accelerator, model, SCENARIO),
                            lr=lambda: float(optimizer.param_groups[0]["lr"]))
    if SCENARIO.is_deepspeed:
        recorder.wrap_engine_step(model)
    else:
        recorder.wrap_clip(accelerator)
        recorder.wrap_optimizer_step(optimizer.optimizer)
    original_backward = accelerator.backward

    def backward(loss, *args, **kwargs):
        {backward_kwargs}if CHECK["kind"] == "collectives":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                original_backward(loss, *args, **kwargs)
            run.collectives.append(_count_collectives(profile))
        else:
            original_backward(loss, *args, **kwargs)
        run.sync_gradients.append(bool(accelerator.sync_gradients))
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        local = [g.to_local() if callable(getattr(g, "to_local", None)) else g for g in grads]
        run.digests.append(float(sum(g.double().sum() for g in local)) if local else None)

    accelerator.backward = backward
    if callable(getattr(accelerator, "optimizer_step_and_zero_grad", None)):
        original_step_and_zero_grad = accelerator.optimizer_step_and_zero_grad

        def optimizer_step_and_zero_grad(*args, **kwargs):
            run.returned[recorder.micro_step] = original_step_and_zero_grad(*args, **kwargs)
            return run.returned[recorder.micro_step]

        accelerator.optimizer_step_and_zero_grad = optimizer_step_and_zero_grad

    def loss_fn(model, batch):
        batch = {{key: value{cast} for key, value in batch.items()}}
        loss = torch.nn.functional.mse_loss(model(batch["inputs"]), batch["targets"])
        run.losses.append(float(loss.detach().float()))
        return loss{user_scale}

    {batches}

    def numbered(batches):
        for index, batch in enumerate(batches):
            recorder.micro_step = index
            yield batch

    batches = numbered(batches)
{program_indented}
    run.micro_steps = getattr(model, "micro_steps", None)
    run.global_steps = getattr(model, "global_steps", None)
    run.final = full_parameters(accelerator, model, SCENARIO)[0]
    return run


def observe(run, path):
    """The quantity the check reads, from this run."""
    if path[0] == "steps":
        step = run.steps[path[1]] if path[1] < len(run.steps) else None
        if step is None:
            return None
        return getattr(step, path[2]).get(path[3]) if getattr(step, path[2]) is not None else None
    if path[0] == "final":
        return run.final.get(path[1])
    if path[0] == "losses":
        return run.losses[path[1]] if path[1] < len(run.losses) else None
    if path[0] == "lr":
        return run.steps[path[1]].lr if path[1] < len(run.steps) else None
    if path[0] == "engine_grad_norm":
        return run.steps[path[1]].engine_grad_norm if path[1] < len(run.steps) else None
    if path[0] == "returned":
        return run.returned.get(path[1])
    if path[0] == "counter":
        return getattr(run, path[1])
    if path[0] == "sync":
        return run.sync_gradients[path[1]] if path[1] < len(run.sync_gradients) else None
    if path[0] == "sync_list":
        return run.sync_gradients
    if path[0] == "step_points":
        return [step.micro_step for step in run.steps]
    if path[0] == "collectives":
        return run.collectives[path[1]] if path[1] < len(run.collectives) else None
    raise ValueError(path)


def judge(run, world_size):
    """The deviation accumgate found, judged again on this run with the same tolerance: its detail, or None."""
    kind, path = CHECK["kind"], CHECK.get("path")
    if kind == "tensor":
        got, want = observe(run, path), CHECK["want"]
        if got is None:
            return "missing from the run"
        bound = CHECK.get("bound")
        return compare_tensor(got, torch.tensor(want["tensor"], dtype=torch.float64).reshape(want["shape"]),
                              rtol=CHECK["rtol"], atol=CHECK["atol"],
                              bound=None if bound is None else torch.tensor(bound, dtype=torch.float64).reshape(want["shape"]),
                              bound_text=CHECK.get("bound_text", ""))
    if kind == "scalar":
        got, want = observe(run, path), CHECK["want"]
        if got is None and want is None:
            return "not recorded by either run: None on both sides"
        if got is None or want is None:
            return f"got {{got!r}}, want {{want!r}}"
        dtype = torch.float64
        bound = CHECK.get("bound")
        return compare_tensor(torch.tensor(float(got), dtype=dtype), torch.tensor(float(want), dtype=dtype),
                              rtol=CHECK["rtol"], atol=CHECK["atol"],
                              bound=None if bound is None else torch.tensor(float(bound), dtype=torch.float64),
                              bound_text=CHECK.get("bound_text", ""))
    if kind == "equal":
        got = observe(run, path)
        return None if got == CHECK["want"] else (CHECK["detail"] if str(got) in CHECK["detail"]
                                                  else f"got {{got}}, want {{CHECK['want']}}")
    if kind == "collectives":
        counts = observe(run, path) or {{}}
        reductions = sum(n for k, n in counts.items() if k in ("all_reduce", "reduce_scatter", "reduce", "allreduce"))
        if CHECK["promised"] and not reductions:
            return f"no gradient reduction ran ({{counts or 'none'}})"
        if not CHECK["promised"] and reductions:
            return f"{{reductions}} gradient reduction(s) where none may run: {{counts}}"
        return None
    if kind == "digests":
        index = path[1]
        everyone = [None] * world_size
        torch.distributed.all_gather_object(everyone, run.digests[index] if index < len(run.digests) else None)
        synced = everyone[0] == everyone[1]
        if CHECK["promised"] != synced:
            return CHECK["detail"]
        return None
    raise ValueError(kind)


def verdict(run, raised, rank, world_size):
    """The first deviation as accumgate prints it, found again on this run (None: as expected)."""
    kind = CHECK["kind"]
    header = f"{{CHECK['scenario']}} · {{CHECK['property']}} · {{CHECK.get('where')}} · {{CHECK.get('tensor')}}"
    if kind in ("error", "probe") and rank != CHECK["rank"]:
        return None  # every rank runs the same program: the rank accumgate quoted speaks for them
    if kind == "error":
        return None if raised is None else f"{{CHECK['property']}}: error: {{raised}}"
    if kind == "probe":
        if CHECK["want_error"]:
            if raised is None:
                detail = f"ok: want an error naming {{CHECK['naming']}}"
            elif CHECK["naming"] not in raised or "AssertionError" in raised:
                detail = f"{{raised!r}}: want the target's own error naming {{CHECK['naming']}}, never a dependency's assert"
            else:
                return None
        elif raised is None:
            return None
        else:
            detail = (f"raised {{raised!r}}: want training as the model says (no boundary the user gave contradicts "
                      "the engine)")
        return f"{{header}}   {{detail}}"
    if raised is not None:
        return f"the program raised before the check could be made: {{raised}}"
    detail = judge(run, world_size)
    if kind == "digests":
        return None if detail is None or rank != 0 else f"{{header}}   {{detail}}"
    return None if detail is None or rank != CHECK["rank"] else f"{{header}}   {{detail}}"


def main():
    versions = {{"torch": torch.__version__}}
    import accelerate

    versions["accelerate"] = accelerate.__version__
    try:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    except Exception:
        pass
    if CHECK["kind"] == "probe":
        hide_engine_boundary_api()
    accelerator, model, optimizer = build()
    rank, world_size = accelerator.process_index, accelerator.num_processes
    try:
        run, raised = train(accelerator, model, optimizer), None
    except Exception:
        run, raised = None, _last_line({{rank: traceback.format_exc()}})
    found = verdict(run, raised, rank, world_size)
    if rank == 0:
        print("versions:", versions)
        print("accumgate printed:", CHECK["printed"])
    if found is not None:
        print("FIRST DEVIATION:", found)
    elif rank == CHECK.get("rank", 0):
        print("as expected: no deviation at", CHECK.get("where") or CHECK["property"])
    sys.stdout.flush()
    code = 0 if found is None else 1
    if raised is not None:
        os._exit(code)  # a rank that raised may have left its peer inside a collective: leave at once
    if world_size > 1:
        codes = [None] * world_size
        torch.distributed.all_gather_object(codes, code)
        code = max(codes)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    main()
'''

MEANING = {
    "tensor": "against the value accumgate expected there (the float64 oracle: teacher-forced from this run's own "
              "weights, or the other run it must equal) with the property's own tolerance",
    "scalar": "against the value accumgate expected there with the property's own tolerance",
    "equal": "against the model of DESIGN §3 (what the program implies), exactly",
    "collectives": "gradient reductions the process group ran in that micro-batch's backward, against what the backend "
                   "promises there",
    "digests": "whether the ranks' gradients agree after that backward (all-reduced or held back)",
    "error": "the program must run: accumgate saw it raise",
    "probe": "on an engine without the boundary API (DeepSpeed < 0.5.8, or a fork), the target's own clear error or "
             "training as the model says",
}


def _unscripted(scenario: Scenario) -> str:
    """What of an untouched program (``explore --untouched``) the template cannot write: accelerator options, the raw
    engine's own loop, an lr set by hand, a zero_grad() at a micro-batch's end, FSDP2's own calls; and of any program: a
    second accelerator (its arguments) and an lr schedule's scheduler, which the template does not build (empty: none)."""
    program = scenario.program
    found = [f"accelerator option {name}" for name in program.options]
    for mb in program.micro_batches:
        found += (["the raw engine's loop"] if mb.driver == "engine" else []) + (
            ["an lr set by hand"] if mb.set_lr != "none" else []) + (
            ["zero_grad() at a micro-batch's end"] if mb.zero_grad != "none" else []) + (
            ["FSDP2's own calls"] if mb.fsdp_sync != NO_CALL or mb.fsdp_last_backward != NO_CALL else [])
    if program.restart_at is not None:
        found.append("a second accelerator")
    if scenario.lr_schedule != "const":
        found.append(f"the {scenario.lr_schedule} lr schedule's scheduler")
    return ", ".join(dict.fromkeys(found))


def script(scenario: Scenario, target_path: str, check: dict[str, Any], versions: dict[str, str | None],
           summary: str, upstream: bool = False) -> str:
    """The standalone repro of a generated program (MLP only: the programs the explorer draws); ``upstream``: it
    imports plain accelerate instead of ``target_path`` (see ``write_for``)."""
    if scenario.model != "mlp":
        raise NoRepro("repro scripts are written for the MLP programs the explorer generates")
    unscripted = _unscripted(scenario)
    if unscripted:
        raise NoRepro(f"repro scripts do not write {unscripted} yet (explore --untouched's calls)")
    module, _, attribute = (UPSTREAM_TARGET if upstream else target_path).partition(":")
    ds = scenario.is_deepspeed
    axes = {"is_deepspeed": ds, "zero_stage": scenario.zero_stage, "precision": scenario.precision,
            "backend": scenario.backend}
    if ds:
        accelerator = (f"from accelerate.utils import DeepSpeedPlugin\n\n    accelerator = Accelerator(deepspeed_plugin="
                       f"DeepSpeedPlugin(hf_ds_config={deepspeed_config(scenario)!r}), gradient_accumulation_steps=G)")
        partial_state = "PartialState(backend='gloo')"
    elif scenario.backend == "fsdp":
        accelerator = "accelerator = _fsdp2_accelerator(types.SimpleNamespace(configured_g=G, precision=SCENARIO.precision), Accelerator)"
        partial_state = "PartialState(backend='gloo', cpu=True)"
    else:
        mixed = "bf16" if scenario.precision == "bf16" else "no"
        accelerator = f"accelerator = Accelerator(cpu=True, gradient_accumulation_steps=G, mixed_precision={mixed!r})"
        partial_state = "PartialState(cpu=True)"
    count = len(scenario.program)
    if scenario.program.dataloader:
        batches = ("from torch.utils.data import DataLoader\n\n    loader = accelerator.prepare(DataLoader(range("
                   f"{count} * accelerator.num_processes), batch_size=1))\n"
                   "    batches = (micro_batch(rank, index) for index, _ in enumerate(loader))")
    else:
        batches = f"batches = [micro_batch(rank, index) for index in range({count})]"
    optimizer = (f"torch.optim.SGD(model.parameters(), lr={LEARNING_RATES['sgd']})" if scenario.optimizer == "sgd" else
                 f"torch.optim.AdamW(model.parameters(), lr={LEARNING_RATES['adamw']}, weight_decay={ADAMW_WEIGHT_DECAY})")
    helpers = _source(*HELPERS) + ("\n\n\n" + _source(_fsdp2_accelerator) if scenario.backend == "fsdp" else "")
    file = f"{scenario.id}.py"
    run = f"torchrun --nproc_per_node {scenario.world_size} {file}" if scenario.world_size > 1 else f"python {file}"
    title = (f"Upstream-only repro ({'accelerate + deepspeed' if ds else 'accelerate'}): {check['property']}"
             if upstream else f"accumgate counterexample on {target_path}: {check['property']}")
    program = scenario.program.code(scenario.clip, scenario.lr_schedule != "const")
    return TEMPLATE.format(
        title=title, id=scenario.id, summary=textwrap.fill(summary, 116),
        program=textwrap.indent(program, "    "), versions=", ".join(f"{k} {v}" for k, v in versions.items()),
        run=run, prop=check["property"], where=check.get("where", "the run"), what=MEANING[check["kind"]],
        target_note="" if upstream else f" and the target ({target_path})",
        env='os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")\n' if ds else
        'os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "false")\n', target_module=module, target_attr=attribute,
        check=json.dumps(check), axes=json.dumps(axes), g=scenario.configured_g, in_features=IN_FEATURES,
        hidden=HIDDEN, out_features=OUT_FEATURES, seed=scenario.seed, target_scale=TARGET_SCALE,
        micro_batch_size=scenario.micro_batch_size, helpers=helpers,
        cast=".to(torch.bfloat16)" if ds and scenario.precision == "bf16" else "",
        user_scale=" / G" if scenario.loss_norm == "user" else "",
        partial_state=partial_state, accelerator=accelerator, optimizer=optimizer,
        backward_kwargs="kwargs.setdefault('scale_wrt_gas', False)\n        " if scenario.loss_norm == "user" else "",
        batches=batches, program_indented=textwrap.indent(program, "    "))


def upstream_shows_it(runner: Any, scenario: Scenario, code: str, check: dict[str, Any]) -> bool:
    """Whether upstream accelerate, on the same stack, gives the same first deviation: then the bug is upstream's
    (the reference adds nothing to code without the new API, P3) and the script needs no target; a fork's own bug in
    untouched code, or one under a probe of the target's fallback (P9), keeps the target. One more job, in the same
    warm world."""
    from ..runner import Runner

    try:
        return check_of(Runner("native", pool=runner.pool), scenario, code)["printed"] == check["printed"]
    except NoRepro:
        return False


def write_for(runner: Any, scenario: Scenario, code: str, target_path: str, versions: dict[str, str | None],
              summary: str) -> str:
    """The script for the first deviation of ``code`` on ``scenario`` (judged by ``runner``): upstream-only where the
    program uses none of the new API and upstream shows the same deviation."""
    check = check_of(runner, scenario, code)
    check.pop("message", None)
    upstream = not scenario.program.uses_new_api and upstream_shows_it(runner, scenario, code, check)
    return script(scenario, target_path, check, versions, summary, upstream)


__all__ = ["NoRepro", "SUBJECT", "check_of", "script", "upstream_shows_it", "write_for"]
