"""Detection power: every check of the reference tests fails on the small wrong implementation meant for it.

A row names the mutant, where it is caught (a per-call contract check, or a scenario and property run in
the real world) and, for the subtle ones, a check that must *not* see it (showing why the catching check
is needed). The reference passing the same checks is asserted by the other test modules.
"""
from __future__ import annotations

import pytest

from harness import oracle, properties
from harness.scenario import Scenario
from harness.targets import load_target
from tests.contract import CHECKS


def _target(mutant: str) -> str:
    return f"tests.mutants.{mutant}:Accelerator"


CONTRACT_CATCHES = [
    ("always_step", "kwarg"),
    ("ignore_kwarg", "kwarg"),
    ("sticky_kwarg", "kwarg"),
    ("off_by_one", "kwarg"),
    ("override_not_cleared", "override"),
    ("post_clip_norm", "norm"),
    ("no_zero_grad", "norm"),
    ("report_sticks", "plain_after_explicit"),
]


@pytest.mark.parametrize(("mutant", "check"), CONTRACT_CATCHES, ids=lambda v: v)
def test_contract_catches(mutant: str, check: str, fresh_accelerate_state) -> None:
    assert CHECKS[check](load_target(_target(mutant))), f"{mutant} passed the {check} contract check"


def _w(backend: str) -> int:
    return 1 if backend == "single" else 2


def _s(backend: str, api: str, schedule: str) -> Scenario:
    return Scenario(backend, api, schedule, world_size=_w(backend))


def _steps(s, traces):
    return properties.steps_at_boundaries(s, traces)


def _oracle(s, traces):
    return properties.matches_oracle(s, traces, oracle.expected(s)) + properties.ranks_agree(s, traces)


def _norms(s, traces):
    return properties.returned_norms(s, traces, oracle.expected(s))


def _sync(s, traces):
    return properties.gradient_sync_follows_boundaries(s, traces)


def _collectives(s, traces):
    return properties.collectives_follow_boundaries(s, traces)


WORLD_CATCHES = [  # (mutant, scenario, catching check)
    ("always_step", _s("ds2", "kwarg", "dyn3142"), _steps),
    ("always_step", _s("ds2", "kwarg", "dyn3142"), _oracle),
    ("ignore_kwarg", _s("ds3", "kwarg", "dyn3142"), _steps),
    ("off_by_one", _s("ds0", "set_boundary", "forced4264"), _steps),
    ("double_scale", _s("ds1", "kwarg", "uni4"), _oracle),
    ("double_scale", _s("ddp", "auto", "uni4"), _oracle),
    ("post_clip_norm", _s("ds0", "step_and_zero_grad", "uni4"), _norms),
    ("post_clip_norm", _s("ds3", "step_and_zero_grad", "dyn3142"), _norms),
    ("no_zero_grad", _s("single", "step_and_zero_grad", "uni4"), _oracle),
    ("no_ddp_resync", _s("ddp", "auto", "dyn3142"), _oracle),
    ("set_boundary_keeps_sync", _s("ddp", "set_boundary", "uni4"), _sync),
    ("reduce_every_micro_batch", _s("ds0", "kwarg", "dyn3142"), _collectives),
]


@pytest.mark.parametrize(("mutant", "scenario", "check"), WORLD_CATCHES,
                         ids=[f"{m}-{s.id}-{c.__name__.strip('_')}" for m, s, c in WORLD_CATCHES])
def test_world_catches(run_scenario, mutant: str, scenario: Scenario, check) -> None:
    result = run_scenario(scenario, _target(mutant), count_collectives=True)
    assert result.ok, result.errors
    deviations = check(scenario, result.traces)
    assert deviations, f"{mutant} went unnoticed by {check.__name__} on {scenario.id}"
    assert scenario.id in deviations[0].message()


@pytest.mark.world
@pytest.mark.ds0
def test_only_the_collective_count_sees_a_reduction_on_every_micro_batch(run_scenario) -> None:
    """reduce_every_micro_batch trains to the oracle's numbers; P7's measured communication flags it."""
    scenario = _s("ds0", "kwarg", "dyn3142")
    result = run_scenario(scenario, _target("reduce_every_micro_batch"), count_collectives=True)
    assert result.ok
    assert not _oracle(scenario, result.traces) and not _steps(scenario, result.traces)
    assert _collectives(scenario, result.traces)
    assert not _collectives(scenario, run_scenario(scenario, "reference", count_collectives=True).traces)


@pytest.mark.world
@pytest.mark.ds2
def test_bit_identity_sees_what_the_oracle_tolerance_cannot(run_scenario) -> None:
    """nudged_loss stays inside fp32 tolerance of the oracle, yet P1 (bytes equal to accumulate()) flags it."""
    scenario, baseline = _s("ds2", "kwarg", "uni4"), _s("ds2", "auto", "uni4")
    mutant = run_scenario(scenario, _target("nudged_loss"))
    reference_baseline = run_scenario(baseline, "reference")
    assert mutant.ok and reference_baseline.ok
    assert not _oracle(scenario, mutant.traces), "the nudge was meant to hide inside the oracle tolerance"
    assert properties.bit_identical(scenario, mutant.traces, baseline, reference_baseline.traces)


@pytest.mark.world
@pytest.mark.ds0
def test_override_leaking_into_the_next_scenario_is_caught(world) -> None:
    """override_leaks keeps the override on the class: a set_boundary run leaves True behind, and the next
    accumulate() run in the same processes steps on every micro-batch (what P8's leak test looks for)."""
    target = _target("override_leaks")
    first, after = _s("ds0", "set_boundary", "forced4264"), _s("ds0", "auto", "uni4")
    assert world.run(first, target).ok
    result = world.run(after, target)
    assert result.ok
    assert _steps(after, result.traces), "the leaked override went unnoticed"
    assert not _steps(after, world.run(after, "reference").traces), "the reference must not be affected"


@pytest.mark.world
@pytest.mark.ds1
def test_batch_split_invariance_sees_a_lost_backward_keyword(run_scenario) -> None:
    """drops_backward_kwargs loses ``scale_wrt_gas=False``: with the user's token normalisation the (4, 2) split
    is then divided by G once more and no longer trains like the (8, 1) split; the reference's does (P10)."""
    scenario = Scenario("ds1", "kwarg", "uni2", micro_batch_size=4, model="gpt2", loss_norm="tokens")
    reference_split = run_scenario(scenario.split_reference, "reference")
    mutant, reference = run_scenario(scenario, _target("drops_backward_kwargs")), run_scenario(scenario, "reference")
    assert reference_split.ok and mutant.ok and reference.ok
    caught = properties.batch_split_invariant(scenario, mutant.traces, scenario.split_reference, reference_split.traces)
    assert caught, "the lost keyword went unnoticed by P10"
    assert "P10" in caught[0].message() and scenario.id in caught[0].message()
    assert not properties.batch_split_invariant(scenario, reference.traces, scenario.split_reference,
                                                reference_split.traces)
