"""The model's rules for untouched upstream code (issue 24): each test quotes what upstream documents or does (accelerate
1.15's source, torch's FSDP2, DeepSpeed's engine) or PyTorch's own meaning where the model decides for it, and checks
the rule against it; then the oracle following the model (a discarded window, an lr set by hand), the scenarios of
the live threads, and the strategy that draws only untouched code."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from harness import oracle
from harness.backends import LEARNING_RATES
from harness.data import micro_batch
from harness.models import build_model, forward_loss
from harness.programs.model import Facts, InvalidProgram, expect
from harness.programs.program import LR_SET_FACTORS, NO_CALL, MicroBatch, Program, lr_set_factor
from harness.programs.strategies import programs
from harness.scenario import PROGRAM, Scenario, live, profile

SINGLE, DDP, FSDP = Facts("single", 1), Facts("ddp", 2), Facts("fsdp", 2)
DS = {stage: Facts("deepspeed", 2, stage) for stage in range(4)}


def _run(*micro: MicroBatch, facts: Facts = SINGLE, g: int = 4, clip: float | None = None, scheduler: bool = False,
         **options: bool):
    return expect(Program(tuple(micro), **options), facts, g, clip, scheduler)


# ------------------------------------------------------------------------------------------------------ zero_grad
def test_optimizer_zero_grad_through_accelerate_acts_only_while_sync_gradients() -> None:
    """accelerate's AcceleratedOptimizer.zero_grad: ``if self.gradient_state.sync_gradients: self.optimizer.zero_grad()``
    — inside accumulate() off its boundary it does nothing (the accumulate() idiom zeroes after every micro-batch)."""
    inside = _run(*[MicroBatch(context="accumulate", zero_grad="optimizer") for _ in range(3)],
                  MicroBatch(context="accumulate", after="step"))
    assert not any(mb.discards for mb in inside.micro_batches)
    assert inside.windows == [range(0, 4)]


def test_where_zero_grad_acts_it_discards_what_accumulated_since_the_last_step() -> None:
    """PyTorch's meaning (the model decides it; docs/decisions.md): after the user's own no_sync() outside accumulate()
    sync_gradients is True, zero_grad acts, and the next step's window starts after it — the micro-batch reduction it
    held back is gone too, so a step after a synchronising backward is valid."""
    e = _run(MicroBatch(context="no_sync"), MicroBatch(context="no_sync", zero_grad="optimizer"),
             MicroBatch(context="no_sync"), MicroBatch(after="step"), facts=DDP)
    assert [mb.discards for mb in e.micro_batches] == [False, True, False, False]
    assert e.windows == [range(2, 4)] and e.leftover_start == 4


def test_zero_grad_through_accelerate_on_deepspeed_does_nothing() -> None:
    """accelerate's DeepSpeedOptimizerWrapper.zero_grad is ``pass`` (the engine zeroes at its own step)."""
    e = _run(MicroBatch(backward=None, zero_grad="optimizer"), facts=DS[0])
    assert not e.micro_batches[0].discards


@pytest.mark.parametrize("stage", range(4))
@pytest.mark.parametrize("call", ["engine", "engine_optimizer"])
def test_the_raw_engines_zero_grad_mid_window_discards_on_every_stage(stage: int, call: str) -> None:
    """PyTorch's meaning for engine.zero_grad() and engine.optimizer.zero_grad() after engine.step() off the boundary
    (deepspeed#6554 measured ZeRO-2 and ZeRO-3's engine.zero_grad to ignore it: they fail against this, by name)."""
    e = _run(MicroBatch(driver="engine", backward=False), MicroBatch(driver="engine", backward=False, zero_grad=call),
             MicroBatch(driver="engine", backward=False), MicroBatch(driver="engine", backward=True), facts=DS[stage])
    assert e.windows == [range(2, 4)] and e.step_points == [3] and e.engine_micro_steps == 4


# ----------------------------------------------------------------------------------------------- the raw engine
def test_the_raw_engines_counter_decides_until_a_boundary_is_set_and_the_flag_sticks() -> None:
    """DeepSpeed's is_gradient_accumulation_boundary(): ``(micro_steps + 1) % G == 0`` while no flag was set; a flag
    set by set_gradient_accumulation_boundary is never reset by step() (it holds until the next call)."""
    plain = [MicroBatch(driver="engine") for _ in range(4)]
    assert _run(*plain, facts=DS[2], g=2).step_points == [1, 3]
    sticky = _run(MicroBatch(driver="engine", backward=True), *plain[:3], facts=DS[2], g=4)
    assert sticky.step_points == [0, 1, 2, 3]
    held = _run(MicroBatch(driver="engine", backward=False), *plain[:3], MicroBatch(driver="engine", backward=True),
                facts=DS[0], g=2)
    assert held.step_points == [4] and held.engine_global_steps == 1


def test_accelerates_backward_leaves_its_boundary_on_the_engine() -> None:
    """accelerate >= 1.8 calls engine.set_gradient_accumulation_boundary(sync_gradients) before every backward: the
    flag it leaves is the engine's sticky flag (the model tracks it for loops that reach the engine afterwards)."""
    from harness.programs.model import start, step

    state = start(DS[1], 2, None)
    flags = []
    for _ in range(4):
        step(state, MicroBatch(context="accumulate"))
        flags.append(state.engine_flag)
    assert flags == [False, True, False, True]


def test_the_users_own_boundary_call_on_an_engine_without_it_raises_there() -> None:
    """An engine without set_gradient_accumulation_boundary (DeepSpeed < 0.5.8, a fork; P9's probe): the user's own call
    fails with AttributeError naming it — no fallback answers a call made on the engine — while a loop that never
    calls it trains by the engine's counter."""
    old = Facts("deepspeed", 2, 2, engine_boundary_api=False, engine_no_sync=False)
    raising = _run(MicroBatch(driver="engine"), MicroBatch(driver="engine", backward=True), facts=old, g=2)
    assert raising.error == "AttributeError" and raising.error_at == 1
    counting = _run(MicroBatch(driver="engine"), MicroBatch(driver="engine"), facts=old, g=2)
    assert counting.error is None and counting.step_points == [1]


def test_raw_engine_programs_are_named_apart() -> None:
    program = Program((MicroBatch(driver="engine"), MicroBatch(driver="engine", backward=True)))
    assert Scenario("ds2", PROGRAM, "g2", generated=program).id.startswith("ds2-engineprogram-g2-")


# -------------------------------------------------------------------------------------------------- lr by hand
def test_an_lr_set_between_backward_and_step_applies_to_that_step() -> None:
    """PyTorch's meaning: optimizer.step() uses the lr in its param groups when it runs (accelerate#2951: on DeepSpeed
    the engine has stepped inside backward already, one step early — that fails against this, by name)."""
    e = _run(MicroBatch(), MicroBatch(set_lr="before_step", after="step"), facts=SINGLE, g=2)
    assert e.micro_batches[1].steps and e.micro_batches[1].lr_set == ("before_step", LR_SET_FACTORS[0])
    ds = _run(MicroBatch(context="accumulate"), MicroBatch(context="accumulate", set_lr="before_step", after="step"),
              facts=DS[0], g=2)
    assert ds.micro_batches[1].steps and ds.micro_batches[1].lr_set == ("before_step", LR_SET_FACTORS[0])


def test_consecutive_hand_set_lrs_differ_and_the_first_differs_from_the_built_one() -> None:
    """A set applied one step late must show: every factor differs from the one before it (and the first from 1)."""
    factors = [lr_set_factor(k) for k in range(12)]
    assert factors[0] != 1.0 and all(a != b for a, b in zip(factors, factors[1:]))
    e = _run(*[MicroBatch(set_lr="before_forward", after="step") for _ in range(3)])
    assert [mb.lr_set[1] for mb in e.micro_batches] == factors[:3]


# ------------------------------------------------------------------------------------------- accelerate options
def test_sync_each_batch_reduces_inside_accumulate_and_steps_at_the_same_boundaries() -> None:
    """accelerate's accumulate(): ``allow_gradient_sync = self.sync_gradients or (self.use_distributed and
    plugin_kwargs.get("sync_each_batch"))`` — no no_sync(), the same steps."""
    loop = [MicroBatch(context="accumulate", after="step") for _ in range(4)]
    plain = _run(*loop, facts=DDP, g=2)
    each = _run(*loop, facts=DDP, g=2, sync_each_batch=True)
    assert [mb.reduces for mb in plain.micro_batches] == [False, True, False, True]
    assert [mb.reduces for mb in each.micro_batches] == [True] * 4
    assert plain.step_points == each.step_points == [1, 3]


def test_without_sync_with_dataloader_the_loaders_end_forces_no_boundary() -> None:
    """accelerate's _do_sync: ``if sync_with_dataloader and end_of_dataloader: step = 0; sync`` — otherwise it counts."""
    loop = [MicroBatch(context="accumulate", after="step") for _ in range(3)]
    assert _run(*loop, g=2, dataloader=True).step_points == [1, 2]
    off = _run(*loop, g=2, dataloader=True, sync_with_dataloader=False)
    assert off.step_points == [1] and off.grads_left


def test_adjust_scheduler_changes_no_learning_rate() -> None:
    """accelerate's AcceleratedScheduler.step off a boundary: ``if adjust_scheduler: self.scheduler._step_count += 1;
    return`` — a counter torch reads only for its warning, never the lr."""
    loop = [MicroBatch(context="accumulate", after="step") for _ in range(4)]
    on = _run(*loop, facts=DDP, g=2, scheduler=True)
    off = _run(*loop, facts=DDP, g=2, scheduler=True, adjust_scheduler=False)
    assert [mb.scheduler_steps for mb in on.micro_batches] == [mb.scheduler_steps for mb in off.micro_batches]


def test_a_short_dataset_wraps_the_last_ranks_last_batch_to_the_first_item() -> None:
    """accelerate's BatchSamplerShard(even_batches=True) over 7 items for 2 ranks: rank 1 reads 1, 3, 5, 0 (measured)."""
    program = Program(tuple(MicroBatch() for _ in range(4)), dataloader=True, short_dataset=True)
    assert [program.source(1, index, 2) for index in range(4)] == [(1, 0), (1, 1), (1, 2), (0, 0)]
    assert [program.source(0, index, 2) for index in range(4)] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    with pytest.raises(ValueError, match="even_batches"):
        Program((MicroBatch(),), dataloader=True, even_batches=False, short_dataset=True)


# ------------------------------------------------------------------------------------------------------- FSDP2
def test_fsdp2s_requires_gradient_sync_is_sticky_and_accelerates_no_sync_sets_it_back_to_true() -> None:
    """torch's FSDPModule.set_requires_gradient_sync(False) holds every later reduce-scatter until set True again;
    accelerate 1.15's no_sync on FSDP2 sets it False and, on exit, True — whatever it was before."""
    e = _run(MicroBatch(fsdp_sync=False), MicroBatch(), MicroBatch(context="no_sync"), MicroBatch(after="step"),
             facts=FSDP)
    assert [mb.reduces for mb in e.micro_batches] == [False, False, False, True]
    with pytest.raises(InvalidProgram, match="diverge"):
        _run(MicroBatch(fsdp_sync=False, after="step"), facts=FSDP)
    with pytest.raises(InvalidProgram, match="FSDP2"):
        _run(MicroBatch(fsdp_sync=True), facts=DDP)


def test_set_is_last_backward_changes_no_number() -> None:
    """torch: it only decides whether the backward waits on pending reductions (streams)."""
    plain = _run(MicroBatch(), MicroBatch(after="step"), facts=FSDP, g=2)
    late = _run(MicroBatch(fsdp_last_backward=False), MicroBatch(after="step"), facts=FSDP, g=2)
    assert [m.oracle_plan for m in plain.micro_batches] == [m.oracle_plan for m in late.micro_batches]


# ---------------------------------------------------------------------------------------------------- the oracle
def _window_gradient(seed: int, indices: list[int], g: int) -> dict[str, torch.Tensor]:
    model = build_model("mlp", seed).double()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for index in indices:
        model.zero_grad()
        batch = {k: v.double() for k, v in micro_batch("mlp", seed, 0, index, 2).items()}
        (forward_loss(model, batch) / g).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad
    return total


def _scenario(program: Program, g: int) -> Scenario:
    return Scenario("single", PROGRAM, f"g{g}", clip=None, world_size=1, generated=program)


def test_the_oracle_drops_what_a_zero_grad_discarded_and_uses_a_hand_set_lr() -> None:
    """Micro-batches 0 and 1, then zero_grad, then 2 and 3 with an lr set between the last backward and the step: the
    step applies (g₂ + g₃)/G at lr × the first factor, computed here by hand from the seeded model."""
    program = Program((MicroBatch(), MicroBatch(zero_grad="optimizer"), MicroBatch(),
                       MicroBatch(set_lr="before_step", after="step")))
    scenario = _scenario(program, 4)
    expectation = expect(program, SINGLE, 4, None)
    step = oracle.expected(scenario, expectation).steps[0]
    grads = _window_gradient(0, [2, 3], 4)
    lr = LEARNING_RATES["sgd"] * LR_SET_FACTORS[0]
    initial = dict(build_model("mlp", 0).double().named_parameters())
    assert step.lr == pytest.approx(lr)
    for name, g in grads.items():
        torch.testing.assert_close(step.grads[name], g, rtol=0, atol=1e-12)
        torch.testing.assert_close(step.params[name], initial[name].detach() - lr * g, rtol=0, atol=1e-12)


def test_the_teacher_forced_oracle_keeps_the_losses_of_discarded_micro_batches() -> None:
    """Every micro-batch's loss is judged, the discarded ones too: one loss per micro-batch, per rank."""
    from harness.trace import StepRecord, Trace

    program = Program((MicroBatch(), MicroBatch(zero_grad="optimizer"), MicroBatch(after="step")))
    scenario = _scenario(program, 4)
    expectation = expect(program, SINGLE, 4, None)
    free = oracle.expected(scenario, expectation)
    trace = Trace(rank=0, steps=[StepRecord(2, free.steps[0].params, {k: v.float() for k, v in free.steps[0].grads.items()},
                                            LEARNING_RATES["sgd"])], final_params=free.steps[0].params)
    local = oracle.teacher_forced(scenario, expectation, trace)
    assert len(local.losses[0]) == 3 and local.losses[0] == pytest.approx(free.losses[0])
    torch.testing.assert_close(local.steps[0].grads["fc1.weight"], free.steps[0].grads["fc1.weight"])


def test_the_oracle_reads_the_wrapped_batch_of_a_short_dataset() -> None:
    """Rank 1's last micro-batch of a short dataset is rank 0's micro-batch 0: its loss is that one's."""
    program = Program((MicroBatch(), MicroBatch(after="step")), dataloader=True, short_dataset=True)
    scenario = Scenario("ddp", PROGRAM, "g2", clip=None, generated=program)
    losses = oracle.expected(scenario, expect(program, DDP, 2, None)).losses
    assert losses[1][1] == pytest.approx(losses[0][0]) and losses[1][0] != pytest.approx(losses[0][0])


# ------------------------------------------------------------------------------------------------- the scenarios
def test_user_calls_land_where_their_names_say() -> None:
    engine = Scenario("ds2", "ds_native", "dyn3142", user_call="zerograd2").program.micro_batches
    assert [mb.zero_grad for mb in engine[:3]] == ["none", "engine", "none"]
    assert Scenario("ds3", "ds_native", "dyn3142", user_call="optzerograd2").program.micro_batches[1].zero_grad == \
        "engine_optimizer"
    late = Scenario("ds0", "auto", "uni4", user_call="lrbeforestep").program.micro_batches
    assert [i for i, mb in enumerate(late) if mb.set_lr == "before_step"] == [3, 7, 11]
    between = Scenario("ds0", "auto", "uni4", user_call="lrbetween").program.micro_batches
    assert [i for i, mb in enumerate(between) if mb.set_lr == "before_forward"] == [4, 8]
    assert Scenario("ds0", "auto", "uni4", user_call="lrbeforestep").untouched


@pytest.mark.parametrize(("axes", "problem"), [
    (dict(backend="ds2", api="ds_native", schedule="uni4", user_call="zerograd2"), "P1"),
    (dict(backend="ds2", api="auto", schedule="uni4", user_call="optzerograd2"), "raw engine"),
    (dict(backend="ds2", api="auto", schedule="every1", user_call="zerograd2"), "3 or more"),
    (dict(backend="ddp", api="auto", schedule="uni4", reduce_dtype="fp32", precision="bf16"), "FSDP2"),
    (dict(backend="ds1", api="auto", schedule="uni4", model="lastbranch"), "off DeepSpeed"),
    (dict(backend="single", api="trainer", schedule="uni4", model="gpt2cls", loss_norm="trainer", world_size=1), "mean"),
])
def test_meaningless_live_combinations_are_rejected(axes: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Scenario(**axes)


def test_the_live_profile_holds_each_thread_and_its_controls_and_stays_out_of_ci() -> None:
    ids = {s.id for s in live()}
    for wanted in ("single-trainer-uni4-sgd-fp32-clip1-gpt2cls-w1", "single-auto-uni4-sgd-fp32-clip1-gpt2cls-w1",
                   "ds2-dsnative-dyn3142-sgd-fp32-clip1-zerograd2-w2", "ds3-dsnative-dyn3142-sgd-fp32-clip1-optzerograd2-w2",
                   "ds0-auto-uni4-sgd-fp32-clip1-lrbeforestep-w2", "ds0-auto-uni4-sgd-fp32-clip1-lrbetween-w2",
                   "fsdp-auto-uni4-sgd-bf16-clip1-lastbranch-redfp32-w2", "fsdp-auto-uni4-sgd-bf16-clip1-redfp32-w2"):
        assert wanted in ids
    assert not ids & {s.id for s in profile("ci")}
    assert ids <= {s.id for s in profile("full")}
    assert profile("live", ["ds0"]) == live(["ds0"])


def test_scenario_json_round_trips_the_new_axes() -> None:
    program = Program((MicroBatch(zero_grad="optimizer", set_lr="before_step", fsdp_sync=False, fsdp_last_backward=True),
                       MicroBatch(after="step")), dataloader=True, sync_each_batch=True, short_dataset=True)
    s = Scenario("fsdp", PROGRAM, "g2", generated=program)
    again = Scenario.from_json(s.to_json())
    assert again == s and again.id == s.id
    named = Scenario("ds2", "ds_native", "dyn3142", user_call="zerograd2")
    assert Scenario.from_json(named.to_json()) == named


def test_ids_of_programs_without_the_new_fields_are_unchanged() -> None:
    """Corpus and sentinel programs keep their ids: fields added later enter the digest only where they differ."""
    program = Program((MicroBatch(context="accumulate", after="step"), MicroBatch(backward=True, after="step")))
    assert program.digest == "4aa6f76ddb"  # computed on main before the new fields


# ------------------------------------------------------------------------------------------------- the strategy
@pytest.mark.parametrize("backend", ["single", "ddp", "fsdp", "ds0", "ds3"])
def test_untouched_programs_use_no_new_api_and_the_engine_loop_only_on_deepspeed(backend: str) -> None:
    seen: list[Scenario] = []

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(programs(backend, untouched=True))
    def draw(scenario: Scenario) -> None:
        seen.append(scenario)
        assert scenario.untouched
        drivers = {mb.driver for mb in scenario.program.micro_batches}
        assert len(drivers) == 1 and (drivers == {"accelerator"} or backend.startswith("ds"))
        if backend != "fsdp":
            assert all(mb.fsdp_sync == NO_CALL and mb.fsdp_last_backward == NO_CALL
                       for mb in scenario.program.micro_batches)

    draw()
    assert any(s.generated.options for s in seen)
    assert any(mb.zero_grad != "none" for s in seen for mb in s.program.micro_batches)
    assert any(mb.set_lr != "none" for s in seen for mb in s.program.micro_batches)


def test_the_reference_strategy_draws_none_of_the_untouched_widenings() -> None:
    """The default (reference) space is unchanged: the programs env and the sentinels draw what they drew before."""
    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(programs("ddp"))
    def draw(scenario: Scenario) -> None:
        assert not scenario.generated.options
        assert all(mb.zero_grad == "none" and mb.set_lr == "none" and mb.fsdp_sync == NO_CALL
                   for mb in scenario.program.micro_batches)

    draw()


def test_a_repro_script_refuses_what_its_template_cannot_write() -> None:
    """An untouched program's lr set, zero_grad, accelerator options or raw-engine loop are not in the standalone
    script's template: writing one says so (NoRepro) instead of a script that trains another loop."""
    from harness.programs.repro import NoRepro, script

    check = {"property": "P5 dynamic schedule≡oracle"}
    for program in (Program((MicroBatch(after="step", set_lr="before_step"),)),
                    Program((MicroBatch(after="step", zero_grad="optimizer"),)),
                    Program((MicroBatch(after="step"),), sync_each_batch=True),
                    Program((MicroBatch(), MicroBatch(after="step")), restart_at=1)):
        scenario = Scenario("ddp", PROGRAM, "g1", generated=program)
        with pytest.raises(NoRepro, match="do not write"):
            script(scenario, "reference_impl:Accelerator", check, {}, "summary")
    with pytest.raises(NoRepro, match="lr schedule"):
        script(Scenario("ddp", PROGRAM, "g1", lr_schedule="decay", generated=Program((MicroBatch(after="step"),))),
               "reference_impl:Accelerator", check, {}, "summary")


def test_a_repro_script_defines_what_a_query_reads() -> None:
    """A program that reads the boundary before the forward calls engine_boundary(): the script defines it."""
    from harness.programs.repro import script

    check = {"property": "P4 boundaries", "kind": "equal", "path": ["sync", 0], "want": True, "detail": "",
             "printed": "", "rank": 0, "where": "micro-batch 0", "tensor": "accelerator.sync_gradients"}
    text = script(Scenario("ds0", PROGRAM, "g1", generated=Program((MicroBatch(query=True, after="step"),))),
                  "reference_impl:Accelerator", check, {"accelerate": "1.15.0"}, "summary")
    compile(text, "repro.py", "exec")
    assert "def engine_boundary(accelerator):" in text and "engine_boundary(accelerator))" in text
