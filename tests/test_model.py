"""The executable model of DESIGN §3 (harness/programs/model.py): each named style trains on the windows its
schedule means, untouched code follows the installed accelerate, and the breaks found from outside are what the
model forbids."""
from __future__ import annotations

import pytest

from harness.programs.model import Facts, InvalidProgram, expect
from harness.programs.program import MicroBatch, Program
from harness.scenario import API_STYLES, SCHEDULES, Scenario

FACTS = {
    "single": Facts("single", 1),
    "ddp": Facts("ddp", 2),
    "ds0": Facts("deepspeed", 2, 0),
    "ds1": Facts("deepspeed", 2, 1),
    "ds2": Facts("deepspeed", 2, 2),
    "ds3": Facts("deepspeed", 2, 3),
}


def _valid(kwargs: dict) -> bool:
    try:
        Scenario(**kwargs)
    except ValueError:
        return False
    return True


CASES = [(b, a, sch) for b in FACTS for a in API_STYLES for sch in ("uni4", "dyn3142", "forced4264", "tail442")
         if a != "legacy" and _valid(dict(backend=b, api=a, schedule=sch, world_size=1 if b == "single" else 2))]


@pytest.mark.parametrize(("backend", "api", "schedule"), CASES, ids=["-".join(c) for c in CASES])
def test_every_style_steps_at_its_schedules_boundaries(backend: str, api: str, schedule: str) -> None:
    s = Scenario(backend, api, schedule, world_size=1 if backend == "single" else 2)
    e = expect(s.program, FACTS[backend], s.configured_g, s.clip)
    assert e.step_points == s.boundaries
    if api != "ddp_native":  # its no_sync() micro-batches are plain backwards: the schedule's default, True
        assert [mb.boundary for mb in e.micro_batches] == [i in s.boundaries for i in range(s.micro_batches)]
    assert not e.grads_left and e.error is None
    if FACTS[backend].deepspeed:
        assert e.engine_global_steps == len(s.boundaries)


def test_legacy_follows_the_installed_accelerate() -> None:
    """accelerate >= 1.8: plain backward outside accumulate() is a boundary every time (#3630); <= 1.7 the engine's
    counter accumulates G micro-batches."""
    s = Scenario("ds2", "legacy", "uni4")
    new = expect(s.program, Facts("deepspeed", 2, 2), 4, 1.0)
    old = expect(s.program, Facts("deepspeed", 2, 2, accelerate_forwards_boundary=False), 4, 1.0)
    assert new.step_points == list(range(12))
    assert old.step_points == [3, 7, 11] and old.engine_micro_steps == 12
    assert all(mb.sync_gradients for mb in old.micro_batches)  # the schedule's default, reported as upstream does


def test_a_keyword_does_not_stick() -> None:
    program = Program((MicroBatch(backward=False, after="step"),) + (MicroBatch(after="step"),) * 3)
    assert expect(program, Facts("single", 1), 4, None).step_points == [1, 2, 3]


def test_user_no_sync_holds_back_the_all_reduce_and_stepping_on_local_gradients_is_invalid() -> None:
    s = Scenario("ddp", "ddp_native", "uni4")
    e = expect(s.program, FACTS["ddp"], 4, 1.0)
    assert [mb.reduces for mb in e.micro_batches[:4]] == [False, False, False, True]
    bad = Program((MicroBatch(context="no_sync", after="step"),))
    with pytest.raises(InvalidProgram, match="diverge"):
        expect(bad, FACTS["ddp"], 4, None)


def test_an_old_engine_follows_its_counter_unless_the_user_gives_a_boundary() -> None:
    old = Facts("deepspeed", 2, 0, engine_boundary_api=False, engine_no_sync=False)  # DeepSpeed < 0.5.8
    tail = Scenario("ds0", "auto", "tail442")
    e = expect(tail.program, old, 4, 1.0)
    assert e.step_points == [3, 7] and e.grads_left and e.error is None
    forced = Scenario("ds0", "kwarg", "dyn3142")
    e = expect(forced.program, old, 4, 1.0)
    assert e.error == "BoundaryUnsupportedError" and e.error_at == 2


def test_deepspeed_step_inside_its_own_no_sync_is_invalid_but_a_users_boundary_lifts_it() -> None:
    ds0 = FACTS["ds0"]
    inside = Program((MicroBatch(context="no_sync"),))
    with pytest.raises(InvalidProgram, match="no_sync"):
        expect(inside, ds0, 4, None)
    lifted = Program((MicroBatch(context="no_sync", backward=True),))
    e = expect(lifted, ds0, 4, None)
    assert e.step_points == [0] and e.micro_batches[0].reduces is True


def test_schedules_are_known() -> None:
    assert set(SCHEDULES) >= {"uni4", "dyn3142", "forced4264", "every1", "g1win4", "tail442"}


def test_minus_one_where_a_step_happened_and_no_norm_can_be_had() -> None:
    """§3: -1.0 only when a step happened and no norm can be had: the engine reports none (compute_grad_norm false,
    #8331) and its gradients are partitioned; at ZeRO-0 the wrapper measures the full gradients itself."""
    program = Scenario("ds1", "step_and_zero_grad", "dyn3142").program
    for stage, want in ((1, "-1"), (2, "-1"), (3, "-1"), (0, "norm")):
        facts = Facts("deepspeed", 2, stage, engine_reports_grad_norm=False)
        returned = [mb.returned for mb in expect(program, facts, 4, 1.0).micro_batches]
        assert returned.count(want) == 4 and set(returned) == {want, "none"}, (stage, returned)
    reported = [mb.returned for mb in expect(program, FACTS["ds1"], 4, 1.0).micro_batches]
    assert "-1" not in reported and reported.count("norm") == 4
