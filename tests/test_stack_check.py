"""The built stack is verified before judging (harness/job.py): the ZeRO stage, offload and precision the engine was
built with, or the accelerator's mixed precision off DeepSpeed, as the scenario asked; a mismatch names what was
built. (The world-size and distributed-type checks are check_world's; a target that builds another stage is a mutant
in tests/test_mutants.py.)"""
from __future__ import annotations

import pytest
import torch

from harness.scenario import Scenario
from harness.snapshot import StackMismatchError, check_stack


class FakeEngine:
    def __init__(self, stage: int, offload: bool, bf16: bool) -> None:
        self.stage, self.offload, self.bf16 = stage, offload, bf16
        self.module = torch.nn.Linear(2, 2).to(torch.bfloat16 if bf16 else torch.float32)

    def zero_optimization_stage(self) -> int:
        return self.stage

    def zero_cpu_offload(self) -> bool:
        return self.offload

    def bfloat16_enabled(self) -> bool:
        return self.bf16

    def fp16_enabled(self) -> bool:
        return False


class FakeAccelerator:
    def __init__(self, mixed_precision: str) -> None:
        self.mixed_precision = mixed_precision


def test_the_stack_asked_for_passes() -> None:
    assert check_stack(None, FakeEngine(3, True, True), Scenario("ds3off", "kwarg", "uni4", precision="bf16"), 0) == {
        "zero_stage": 3, "offload": "cpu", "precision": "bf16"}
    assert check_stack(FakeAccelerator("bf16"), None, Scenario("ddp", "kwarg", "uni4", precision="bf16"), 1) == {
        "precision": "bf16"}


@pytest.mark.parametrize(("engine", "named"), [
    (FakeEngine(2, False, False), "zero_stage 2 (asked: 3)"),
    (FakeEngine(3, True, False), "offload cpu (asked: none)"),
    (FakeEngine(3, False, True), "precision bf16 (asked: fp32)"),
])
def test_another_stack_is_refused_naming_what_was_built(engine, named: str) -> None:
    with pytest.raises(StackMismatchError, match=r"rank 0: the target built .*" + named.replace("(", r"\(").replace(")", r"\)")):
        check_stack(None, engine, Scenario("ds3", "kwarg", "uni4"), 0)


def test_off_deepspeed_the_precision_is_the_accelerator_s() -> None:
    with pytest.raises(StackMismatchError, match=r"precision fp32 \(asked: bf16\)"):
        check_stack(FakeAccelerator("no"), None, Scenario("single", "kwarg", "uni4", precision="bf16", world_size=1), 0)
