"""Every pass proves something (issue 21, DESIGN §7 "Sensitivity"): on the recorded runs of a named set, every backend
× {MLP, GPT-2} × {fp32, bf16} × {uni4, dyn3142}, the oracle comparison (P2 on uniform windows, P5 on dynamic ones)
catches each synthetic fault of its kind: each tensor's gradient zeroed (GPT-2's 16, the MLP's 4, the smallest
layer-norm biases included), one micro-batch's contribution dropped or doubled, a step moved by one micro-batch, the lr
one scheduler step late, one rank's gradients off by a micro-batch; P4 catches the moved step and the late lr. The
faults act on the recorded traces (harness/properties/faults.py): nothing is run twice.

AdamW with an lr warm-up (the case most DeepSpeed P5 verdicts are, and where a late lr shows); SGD at ZeRO-0 in
bf16, where deepspeed#5104 makes AdamW fail P2/P5 by itself (conformance/xfails/reference.txt).
"""
from __future__ import annotations

import pytest

from harness.models import build_model
from harness.runner import Runner
from harness.scenario import Scenario

BACKENDS = ("single", "ddp", "fsdp", "ds0", "ds1", "ds2", "ds3")


def _scenario(backend: str, model: str, precision: str, schedule: str) -> Scenario:
    optimizer = "sgd" if (backend == "ds0" and precision == "bf16") else "adamw"
    return Scenario(backend, "kwarg", schedule, optimizer=optimizer, precision=precision, model=model,
                    lr_schedule="warmup", world_size=1 if backend == "single" else 2)


NAMED = [_scenario(b, m, p, s) for b in BACKENDS for m in ("mlp", "gpt2") for p in ("fp32", "bf16")
         for s in ("uni4", "dyn3142")]


@pytest.fixture(scope="module")
def runner(pool):
    return Runner("reference", pool=pool, count_collectives=False)  # P7 is not asked here: no profiler


def _caught(verdict, prefix: str) -> tuple[list[str], list[str]]:
    declared = [f for f in verdict.faults if f.startswith(prefix)]
    return declared, [f for f in declared if f in verdict.proven]


@pytest.mark.world
@pytest.mark.parametrize("scenario", NAMED, ids=str)
def test_the_oracle_comparison_catches_every_fault_of_its_kind(runner, scenario: Scenario) -> None:
    code = "P2" if scenario.is_uniform else "P5"
    verdict = runner.verdict(scenario, code)
    assert verdict.outcome == "pass", f"{scenario.id} · {code}: {verdict.outcome} {verdict.first_line()}"
    tensors = [name for name, _ in build_model(scenario.model, scenario.seed).named_parameters()]
    for name in tensors:
        declared, caught = _caught(verdict, f"grad[{name}] zeroed")
        assert declared and caught == declared, f"{scenario.id} · {code}: zeroing grad[{name}] " + (
            "was not declared" if not declared else "passed")
    kinds = ["micro-batch", "step 1's window scaled", "step 1 moved", "lr one scheduler step late"] + (
        ["rank 1's gradients"] if scenario.world_size > 1 else [])
    for kind in kinds:
        declared, caught = _caught(verdict, kind)
        assert declared, f"{scenario.id} · {code}: no fault {kind!r} declared ({verdict.faults})"
        assert caught == declared, f"{scenario.id} · {code}: missed {sorted(set(declared) - set(caught))}"
    assert len([f for f in verdict.faults if f.startswith("micro-batch")]) == 2  # dropped and doubled
    assert 0.0 <= verdict.margin <= 1.0 and verdict.margins


@pytest.mark.world
@pytest.mark.parametrize("scenario", NAMED[::4], ids=str)
def test_boundaries_catch_a_moved_step_and_a_late_lr(runner, scenario: Scenario) -> None:
    verdict = runner.verdict(scenario, "P4")
    assert verdict.outcome == "pass", f"{scenario.id} · P4: {verdict.outcome} {verdict.first_line()}"
    for kind in ("step 1 moved", "lr one scheduler step late"):
        declared, caught = _caught(verdict, kind)
        assert declared and caught == declared, f"{scenario.id} · P4: {kind}: declared {declared}, caught {caught}"
