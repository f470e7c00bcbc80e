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


# ------------------------------------------------------------------ DESIGN §3's own sentences, one test each
def _mb(**fields) -> MicroBatch:
    return MicroBatch(**fields)


SINGLE = Facts("single", 1)


def _run(*micro: MicroBatch, facts: Facts = SINGLE, g: int = 4, clip: float | None = 1.0,
         scheduler: bool = False, optimizers: int = 1, restart_at: int | None = None, dataloader: bool = False):
    return expect(Program(tuple(micro), dataloader=dataloader, restart_at=restart_at), facts, g, clip, scheduler,
                  optimizers)


def test_the_override_persists_across_boundaries_steps_and_context_entries_until_none() -> None:
    """§3: "The override persists: across boundaries, optimizer steps, and accumulate() / no_sync() entries and exits,
    until None is set. Entering accumulate() does not clear it." """
    e = _run(_mb(set_boundary=False, after="step"), _mb(context="accumulate", after="step"),
             _mb(context="accumulate", backward=True, after="step"), _mb(context="accumulate", after="step"),
             _mb(set_boundary=None, context="accumulate", after="step"))
    assert [m.boundary for m in e.micro_batches] == [False, False, True, False, True]  # the 4th accumulate(): G = 4
    assert e.step_points == [2, 4]


def test_a_new_accelerator_starts_without_an_override() -> None:
    """§3: "A new accelerator starts without one." """
    e = _run(_mb(set_boundary=False, after="step"), _mb(backward=True, after="step"), _mb(after="step"),
             restart_at=2)
    assert [m.boundary for m in e.micro_batches] == [False, True, True]


def test_the_scheduler_advances_exactly_at_resolved_boundaries() -> None:
    """§3: "The prepared lr scheduler, stepped after every micro-batch as accelerate's idiom does, advances exactly at
    resolved boundaries." (accelerate's wrapper steps it num_processes times per step.)"""
    e = _run(*[_mb(backward=i == 2, after="step") for i in range(4)], facts=Facts("ddp", 2), scheduler=True)
    assert [m.scheduler_steps for m in e.micro_batches] == [0, 0, 2, 0]


def test_step_and_zero_grad_off_a_boundary_does_nothing_whatever_its_arguments() -> None:
    """§3: "off a boundary it does nothing at all (no step of the inner optimizer, no zeroing), whatever its
    arguments"; "max_grad_norm=None clips nothing but still returns the norm"; without model it steps the optimizer's
    own parameters."""
    for form in ("model", "no_model", "no_clip", "other_clip", "twice"):
        e = _run(_mb(backward=False, after="step_and_zero_grad", form=form),
                 _mb(backward=True, after="step_and_zero_grad", form=form))
        held, final = e.micro_batches
        assert not held.steps and set(held.calls) == {"none"}, form
        assert final.steps and final.returned == "norm", form
    assert _run(_mb(backward=True, after="step_and_zero_grad", form="no_clip")).micro_batches[0].clip is None
    assert _run(_mb(backward=True, after="step_and_zero_grad", form="other_clip")).micro_batches[0].clip == 0.25


def test_each_optimizer_steps_once_per_boundary() -> None:
    """§3: "a second optimizer_step_and_zero_grad for the same optimizer after the same boundary returns None and does
    nothing; a call for another optimizer (two models, two optimizers) steps that one." """
    twice = _run(_mb(backward=True, after="step_and_zero_grad", form="twice"))
    assert twice.micro_batches[0].calls == ("norm", "none") and twice.step_points == [0]
    two = _run(_mb(backward=True, after="step_and_zero_grad"), optimizers=2)
    assert two.micro_batches[0].calls == ("norm", "norm") and two.step_points == [0]
    both_twice = _run(_mb(backward=True, after="step_and_zero_grad", form="twice"), optimizers=2)
    assert both_twice.micro_batches[0].calls == ("norm", "none", "norm", "none")


def test_deepspeed_returns_minus_one_only_when_it_stepped_and_no_norm_can_be_had() -> None:
    """§3: "-1.0 only when a step happened and no norm can be had"; at ZeRO-0 the wrapper measures the norm itself."""
    no_norm = Facts("deepspeed", 2, 1, engine_reports_grad_norm=False)
    e = _run(_mb(backward=False, after="step_and_zero_grad"), _mb(backward=True, after="step_and_zero_grad"),
             facts=no_norm)
    assert [m.returned for m in e.micro_batches] == ["none", "-1"]
    zero0 = _run(_mb(backward=True, after="step_and_zero_grad"), facts=Facts("deepspeed", 2, 0,
                                                                             engine_reports_grad_norm=False))
    assert zero0.micro_batches[0].returned == "norm"


def test_a_max_grad_norm_that_differs_from_deepspeeds_clipping_warns_once() -> None:
    """§3: "a max_grad_norm that differs from it warns once, naming both values" (none where they agree)."""
    ds = Facts("deepspeed", 2, 1)
    e = _run(*[_mb(backward=True, after="step_and_zero_grad", form="other_clip") for _ in range(3)], facts=ds)
    assert [m.warns_clip_mismatch for m in e.micro_batches] == [True, False, False]
    agree = _run(_mb(backward=True, after="step_and_zero_grad"), facts=ds)
    assert not agree.micro_batches[0].warns_clip_mismatch


def test_the_override_is_visible_to_the_engine_before_the_forward() -> None:
    """§3: "On DeepSpeed the override is visible to the engine before the forward pass
    (engine.is_gradient_accumulation_boundary() right after set_deepspeed_gradient_accumulation_boundary)." """
    e = _run(_mb(set_boundary=True, query=True), _mb(set_boundary=False, query=True), facts=Facts("deepspeed", 2, 3))
    assert [m.query[1] for m in e.micro_batches] == [True, False]


def test_sync_gradients_reports_the_last_resolved_boundary_until_the_next_accumulate_entry() -> None:
    """§3: "After an explicit boundary accelerator.sync_gradients reports the resolved boundary of the most recent
    backward (until the next accumulate() entry or backward)." """
    e = _run(_mb(backward=True), _mb(query=True, backward=False), _mb(query=True, context="accumulate"), g=4)
    assert e.micro_batches[1].query[0] is True  # the most recent backward's boundary
    assert e.micro_batches[2].query[0] is False  # accumulate()'s entry spoke: micro-batch 1 of 4


def test_no_sync_is_a_no_op_at_zero_2_and_3_not_an_error() -> None:
    """§3: "DeepSpeed ZeRO-2/3 partition gradients and reduce every micro-batch by design, so no_sync() there is a
    no-op, not an error" (at ZeRO 0/1 a step inside the engine's no_sync asserts upstream: invalid)."""
    inside = Program((MicroBatch(context="no_sync"),))
    for stage in (2, 3):
        assert expect(inside, Facts("deepspeed", 2, stage), 4, None).step_points == [0]
    with pytest.raises(InvalidProgram):
        expect(inside, Facts("deepspeed", 2, 1), 4, None)


def test_fsdp2_explicit_false_holds_the_reduction_and_true_reduces() -> None:
    """§3: "FSDP2: an explicit boundary sets FSDP2's gradient sync for that backward (True reduces what no_sync() held
    back, False holds the reduction)." """
    e = _run(_mb(backward=False), _mb(context="no_sync", backward=True, after="step"), facts=Facts("fsdp", 2))
    assert [m.reduces for m in e.micro_batches] == [False, True] and e.step_points == [1]


def test_ddp_override_false_holds_the_all_reduce_and_none_releases_it() -> None:
    """§3: "with DDP, a False set before the forward pass also disables gradient all-reduce for that micro-batch;
    True re-enables it" — and None, which clears the override, too."""
    e = _run(_mb(set_boundary=False), _mb(), _mb(set_boundary=None), facts=Facts("ddp", 2))
    assert [m.reduces for m in e.micro_batches] == [False, False, True]


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
