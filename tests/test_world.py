"""The warm world itself: bit-identical to fresh launches in any order, and robust to failing targets."""
from __future__ import annotations

import time

import pytest

from harness.runner import Runner, WorldPool
from harness.scenario import Scenario
from harness.world import World
from harness.xfails import parse

pytestmark = [pytest.mark.world, pytest.mark.harness]

BACKEND_SCENARIOS = [
    Scenario("single", "kwarg", "dyn3142", world_size=1),
    Scenario("ddp", "set_boundary", "dyn3142"),
    Scenario("ds0", "kwarg", "dyn3142", optimizer="adamw"),
    Scenario("ds1", "step_and_zero_grad", "dyn3142"),
    Scenario("ds2", "kwarg", "dyn3142"),
    Scenario("ds3", "kwarg", "dyn3142", model="gpt2"),
    Scenario("ds2off", "set_boundary", "forced4264", optimizer="adamw"),
    # FSDP2 on CPU sets the distributed type on accelerate's shared states before prepare: a reset must undo it.
    Scenario("fsdp", "kwarg", "forced4264"),
    # A prepared DataLoader registers itself in accelerate's GradientState (the state a reset must clear), and
    # backward keywords plus the window-token normalisation reach the engine.
    Scenario("ds0", "auto", "tail442"),
    Scenario("ds1", "kwarg", "uni2", micro_batch_size=4, model="gpt2", loss_norm="tokens"),
]


def _fingerprint(traces) -> list:
    """Everything a trace holds that training produced, as bytes."""
    out = []
    for trace in traces:
        out.append(("losses", trace.losses))
        for step in trace.steps:
            out.append((step.micro_step, {k: v.numpy().tobytes() for k, v in step.params.items()},
                        {k: v.numpy().tobytes() for k, v in step.grads.items()}, step.engine_grad_norm))
        out.append(("returned", trace.returned))
        out.append(("leftover", {k: v.numpy().tobytes() for k, v in (trace.leftover_grads or {}).items()}))
    return out


def test_warm_world_equals_fresh_launches_in_any_order() -> None:
    """Each backend's scenario, run in a warm world after every other backend (two orders), gives the same
    bytes (losses, gradients, parameters, norms) as the same scenario alone in a freshly started world."""
    fresh = {}
    for scenario in BACKEND_SCENARIOS:
        with World(world_size=2) as world:
            world.start()
            result = world.run(scenario, "reference")
            assert result.ok, result.errors
            fresh[scenario] = _fingerprint(result.traces)
    with World(world_size=2) as world:
        world.start()
        for order in (BACKEND_SCENARIOS, BACKEND_SCENARIOS[::-1]):
            for scenario in order:
                result = world.run(scenario, "reference")
                assert result.ok, result.errors
                assert _fingerprint(result.traces) == fresh[scenario], f"{scenario.id}: warm run differs from fresh"
        assert world.starts == 1


@pytest.mark.parametrize(("fault", "expect"), [
    ("Raises", "injected fault on rank 1"),
    ("Hangs", "gave no result within"),
    ("Dies", "died"),
])
def test_a_failing_rank_costs_one_scenario(fault: str, expect: str) -> None:
    timeout = 20.0
    scenario = Scenario("ds2", "kwarg", "dyn3142")
    with World(world_size=2, job_timeout_s=timeout) as world:
        world.start()
        started = time.monotonic()
        result = world.run(scenario, f"tests.faulty:{fault}")
        elapsed = time.monotonic() - started
        assert result.status == "error"
        assert expect in result.errors.get(1, ""), result.errors
        assert 0 in result.errors, "rank 0's side of the story is missing"
        assert elapsed < timeout + 10, f"took {elapsed:.1f} s with a {timeout} s timeout"
        if fault == "Hangs":
            assert "faulty.py" in result.errors[1], "the hung rank's stack should show where it hangs"
        pool = WorldPool()
        pool.worlds[2] = world
        verdict = Runner("reference", pool=pool).verdict(scenario, "P5")
        assert verdict.outcome == "pass", verdict
        assert world.starts == 2


def test_unexpected_pass_fails_the_run_and_expected_failure_does_not() -> None:
    scenarios = [Scenario("ds1", "kwarg", "uni4"), Scenario("ds1", "kwarg", "dyn3142", model="mlp")]
    xfails = parse("ds1-kwarg-uni4-*  P2:param  [*]  pretend-bug #1\n")
    results = Runner("reference", xfails=xfails, pool=WorldPool()).run(scenarios)
    outcomes = {o.scenario: o for o in results.outcomes}
    known = outcomes["ds1-kwarg-uni4-sgd-fp32-clip1-w2"]
    assert known.outcome == "xpass" and known.bad
    assert known.properties["P2"].outcome == "xpass" and known.properties["P4"].outcome == "pass"
    assert outcomes["ds1-kwarg-dyn3142-sgd-fp32-clip1-w2"].outcome == "pass"
    # A line excuses the properties it names and no other: the mutant's step positions (P4) still fail.
    steps_every_time = parse("*  P2:steps|grad|param|loss,P5:steps|grad|param|loss  [*]  the mutant steps every time\n")
    mutant = Runner("tests.mutants.always_step:Accelerator", xfails=steps_every_time, pool=WorldPool()).run(scenarios[:1])
    verdicts = {code: v.outcome for code, v in mutant.outcomes[0].properties.items()}
    assert verdicts["P2"] == "xfail" and verdicts["P4"] == "fail" and mutant.outcomes[0].outcome == "fail"


def test_the_external_launcher_worker_turns_a_rank_failure_into_an_error_outcome(tmp_path) -> None:
    """Under torchrun, rank 1 raising at its third micro-batch costs that scenario (error, both ranks' stories),
    the peer is released at once, the scenarios left are reported not run, and the worker exits 1 (not 3)."""
    import json
    import os
    import subprocess
    import sys

    ids = ["ds0-kwarg-uni4-sgd-fp32-clip1-w2", "ddp-kwarg-uni4-sgd-fp32-clip1-w2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29561", "-m", "harness.worker", "--target", "tests.faulty:Raises", "--profile", "quick",
                           "--report-dir", str(tmp_path), "--timeout", "300", "--ids", *ids],
                          env=env, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - started
    results = json.loads((tmp_path / "results.json").read_text())
    first, second = results["scenarios"]
    assert first["outcome"] == "error" and "injected fault on rank 1" in first["errors"]["1"], first["errors"]
    # Released by its peer's end, not by the process group's 300 s timeout: gloo words it "Connection closed by
    # peer" or, when the socket is reset first (seen under CI load), "Read error ... Connection reset".
    released = first["errors"]["0"]
    assert "Read timeout" not in released and any(
        text in released for text in ("Connection closed by peer", "Connection reset", "Read error")), released[-800:]
    assert second["outcome"] == "error" and "not run" in second["errors"]["0"]
    assert done.returncode != 0 and elapsed < 120, (done.returncode, elapsed, done.stderr[-2000:])
