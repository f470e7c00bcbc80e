"""The reference implementation in real worlds: 2-rank gloo for DeepSpeed ZeRO 0-3 and DDP, one process
for ``single``; each API style and ``accumulate()``, configured G = 4, uniform / dynamic / forced windows.

Each test states one sentence of DESIGN §3 and checks it against mathematics (the float64 oracle) or
against another run (bit-identity), never against which calls were made.
"""
from __future__ import annotations

import pytest

from harness import oracle, properties
from harness.scenario import MANUAL_API_STYLES, Scenario

BACKENDS = ("single", "ddp", "ds0", "ds1", "ds2", "ds3")
API_STYLES = ("auto", "kwarg", "set_boundary", "step_and_zero_grad")

SCHEDULES = ("uni4", "dyn3142", "forced4264")


def _scenario(backend: str, api: str, schedule: str, optimizer: str = "sgd") -> Scenario:
    return Scenario(backend, api, schedule, optimizer=optimizer, world_size=1 if backend == "single" else 2)


SCENARIOS = [_scenario(b, a, s) for b in BACKENDS for s in SCHEDULES for a in API_STYLES]
SCENARIOS += [_scenario(b, a, "dyn3142", "adamw") for b in BACKENDS for a in ("kwarg", "step_and_zero_grad")]
NORM_SCENARIOS = [s for s in SCENARIOS if s.api == "step_and_zero_grad"]
NO_SYNC_SCENARIOS = [s for s in SCENARIOS if s.backend == "ddp" and properties.promises_no_sync_off_boundary(s)]
UNIFORM_MANUAL = [s for s in SCENARIOS if s.schedule == "uni4" and s.api in MANUAL_API_STYLES]


def _traces(run_scenario, scenario: Scenario, target: str = "reference"):
    result = run_scenario(scenario, target)
    assert result.ok, f"{scenario.id} did not run:\n" + "\n".join(
        f"--- rank {rank}\n{text}" for rank, text in sorted(result.errors.items()))
    return result.traces


def _assert_none(deviations) -> None:
    assert not deviations, f"{len(deviations)} deviation(s):\n" + "\n".join(d.message() for d in deviations[:8])


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_optimizer_steps_exactly_at_boundaries(run_scenario, scenario: Scenario) -> None:
    """engine.global_steps (or real optimizer steps) equals the number of boundaries, at the right places,
    and accelerator.sync_gradients reports each micro-batch's resolved boundary."""
    traces = _traces(run_scenario, scenario)
    _assert_none(properties.steps_at_boundaries(scenario, traces)
                 + properties.sync_gradients_follow_boundaries(scenario, traces))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_training_matches_the_oracle(run_scenario, scenario: Scenario) -> None:
    """Losses and parameters after every step equal the float64 single-process computation (loss / configured
    G, mean over ranks, clip 1.0) within rtol 1e-5 / atol 1e-6, and every rank holds the same bytes."""
    traces = _traces(run_scenario, scenario)
    _assert_none(properties.matches_oracle(scenario, traces, oracle.expected(scenario))
                 + properties.ranks_agree(scenario, traces))


@pytest.mark.parametrize("scenario", NORM_SCENARIOS, ids=str)
def test_step_and_zero_grad_returns_the_pre_clip_norm(run_scenario, scenario: Scenario) -> None:
    """None off-boundary; at a boundary the oracle's global norm before clipping (ZeRO-0 included)."""
    traces = _traces(run_scenario, scenario)
    _assert_none(properties.returned_norms(scenario, traces, oracle.expected(scenario)))


@pytest.mark.parametrize("scenario", NO_SYNC_SCENARIOS, ids=str)
def test_ddp_skips_the_all_reduce_before_the_boundary(run_scenario, scenario: Scenario) -> None:
    """With DDP and the boundary known before forward, non-final micro-batches do not all-reduce (the
    seed's no_sync), and the boundary does: observed through the gradients themselves."""
    _assert_none(properties.gradient_sync_follows_boundaries(scenario, _traces(run_scenario, scenario)))


@pytest.mark.parametrize("scenario", UNIFORM_MANUAL, ids=str)
def test_manual_apis_reproduce_accumulate(run_scenario, scenario: Scenario) -> None:
    """On a uniform schedule each manual API gives the bytes accumulate() gives on the same backend.

    One reasoned exception: DDP with ``is_final_micro_batch`` alone. DDP decides at *forward* time whether a
    micro-batch all-reduces, and the keyword arrives at backward, so every micro-batch is reduced (sum of
    means instead of mean of sums): the same mathematics in another rounding order. There the check is the
    fp32 tolerance against accumulate(), and the oracle test above holds it to the float64 result.
    """
    baseline = _scenario(scenario.backend, "auto", scenario.schedule, scenario.optimizer)
    traces, base_traces = _traces(run_scenario, scenario), _traces(run_scenario, baseline)
    if scenario.backend == "ddp" and scenario.api == "kwarg":
        _assert_none(properties.close_to_baseline(scenario, traces, baseline, base_traces))
        return
    _assert_none(properties.bit_identical(scenario, traces, baseline, base_traces))
