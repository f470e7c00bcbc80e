"""Issue 27's and 28's loops, written as users write them (tests/outside/user_loops.py), run under torchrun on 2 ranks:
the reference gives upstream's bytes; the reference as it was at 428deb9 (as mutants) does not — the second optimizer
never steps; a boundary forced under conditional computation aborts both ranks."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.contract import two_optimizers_violations

LOOPS = "tests/outside/user_loops.py"


def _torchrun(loops: str, target: str, port: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())  # the repository's code, not an installed copy
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), LOOPS, loops, target], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.world
def test_the_reference_trains_both_loops_to_upstreams_bytes_on_two_ranks() -> None:
    done = _torchrun("two_optimizers,conditional_branches", "reference_impl:BoundaryAwareAccelerator", 29581)
    # Two ranks print to one pipe: their lines may interleave, so the reports are found by pattern, not by line.
    reports = re.findall(r"(two_optimizers|conditional_branches) rank ([01]): (same bytes as upstream|DIFFERS)", done.stdout)
    assert done.returncode == 0 and sorted(reports) == sorted(
        (loop, rank, "same bytes as upstream") for loop in ("two_optimizers", "conditional_branches") for rank in "01"), (
        done.stdout[-2000:] + done.stderr[-3000:])


@pytest.mark.world
def test_the_per_tensor_resync_of_428deb9_aborts_under_conditional_computation() -> None:
    done = _torchrun("conditional_branches", "tests.mutants.per_tensor_resync:Accelerator", 29583)
    assert done.returncode != 0 and "same bytes as upstream" not in done.stdout, done.stdout[-2000:]


def test_the_global_boundary_of_428deb9_never_steps_the_second_optimizer(fresh_accelerate_state) -> None:
    from tests.mutants.global_step_consumed import Accelerator

    violations = two_optimizers_violations(Accelerator)
    assert any("second: returned None, stepped=False" in v for v in violations), violations
