"""Client programs the suite did not write, run against the target: code that uses none of the new API and must
keep working unchanged (DESIGN §7 "outside checks"). A client is a scenario whose API style names it; it runs in
the warm world like any job, with the target swapped in where the client takes its ``Accelerator`` from, and
reports whether it ran through and, if not, the assertion it stopped on.

- ``test_sync``: accelerate's own ``accelerate/test_utils/scripts/test_sync.py`` (``no_sync`` and ``accumulate()``
  equivalence loops), one process and 2 ranks, exactly as upstream runs it under ``torchrun``: whether it runs
  through, and otherwise the assertion it stopped on.
- ``trainer``: the transformers ``Trainer`` training the tiny GPT-2 with its own loop (it sets ``sync_gradients``
  itself, normalises the loss by the tokens of the whole accumulated batch, sends ``scale_wrt_gas=False`` to
  DeepSpeed, reads the norm from ``clip_grad_norm_``), recorded like any scenario and judged by every property; or
  GPT-2's sequence-classification head (``gpt2cls``), whose loss is its own mean (transformers#47688), with the
  Trainer's own 1/G or, told the head normalises nothing, its division by the window's length (#38837).
"""
from __future__ import annotations

import contextlib
import importlib
import traceback
from typing import Any, Iterator

from .scenario import Scenario
from .trace import Trace

CLIENTS = ("test_sync", "trainer")


@contextlib.contextmanager
def _process_group_kept() -> Iterator[None]:
    """test_sync's main() ends with ``state.destroy_process_group()``; in the warm world the group outlives the
    client, so that call is a no-op for its duration."""
    from accelerate.state import AcceleratorState, PartialState

    saved = [(cls, cls.__dict__.get("destroy_process_group")) for cls in (PartialState, AcceleratorState)]
    for cls, _ in saved:
        if "destroy_process_group" in cls.__dict__:
            cls.destroy_process_group = lambda self, group=None: None
    try:
        yield
    finally:
        for cls, original in saved:
            if original is not None:
                cls.destroy_process_group = original


def _test_sync(accelerator_cls: Any) -> str | None:
    module = importlib.import_module("accelerate.test_utils.scripts.test_sync")
    original = module.Accelerator
    module.Accelerator = accelerator_cls
    try:
        with _process_group_kept():
            module.main()
    except AssertionError:
        return traceback.format_exc(limit=-3).strip()
    finally:
        module.Accelerator = original
    return None


RUNNERS = {"test_sync": _test_sync}


def run(scenario: Scenario, accelerator_cls: Any, rank: int, count_collectives: bool = False) -> Trace:
    """The client on this rank; an assertion it stops on is recorded (a conformance failure, not a crash)."""
    if scenario.api == "trainer":
        return trainer(scenario, accelerator_cls, rank, count_collectives)
    trace = Trace(rank=rank)
    trace.client_failure = RUNNERS[scenario.api](accelerator_cls)
    return trace


def trainer(scenario: Scenario, accelerator_cls: Any, rank: int, count_collectives: bool = False) -> Trace:
    """The transformers Trainer on the target: its ``Accelerator`` is the target (patched into ``transformers.trainer``,
    where the Trainer takes it from), its data the very per-rank streams every other scenario reads (through its own
    sharded DataLoader), its optimizer SGD; steps, gradients, losses and what ``sync_gradients`` said are recorded
    by wrapping the objects it built, when its training begins."""
    import tempfile

    import torch
    import transformers.trainer as trainer_module
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from . import snapshot, stack
    from .backends import LEARNING_RATES, deepspeed_config
    from .data import sample_for_global_index
    from .models import build_model
    from .trace import StepRecorder

    s = scenario
    world, size = s.world_size, s.micro_batch_size

    class Samples(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return s.micro_batches * size * world

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            sample = sample_for_global_index(s.model, s.seed, world, size, index)
            if s.loss_norm in ("trainermask0", "trainerdefault"):  # never a target after the shift: same loss, oracle
                sample = dict(sample, labels=sample["labels"].clone())
                sample["labels"][0] = -100
            return sample

    ds_config = None
    if s.is_deepspeed:
        ds_config = deepspeed_config(s) | {"train_batch_size": size * s.configured_g * world}
    trace = Trace(rank=rank)
    state: dict[str, Any] = {}

    class Recording(TrainerCallback):
        def on_train_begin(self, args: Any, train_state: Any, control: Any, **kwargs: Any) -> None:
            accelerator, model = state["trainer"].accelerator, state["trainer"].model_wrapped
            state["accelerator"], state["model"] = accelerator, model
            recorder = StepRecorder(trace, params=lambda: snapshot.full_parameters(accelerator, model, s)[0],
                                    grads=lambda: snapshot.full_gradients(accelerator, model, s),
                                    lr=lambda: float(state["trainer"].optimizer.param_groups[0]["lr"]))
            if s.is_deepspeed:
                recorder.wrap_engine_step(model)
            else:
                recorder.wrap_clip(accelerator)
                recorder.wrap_optimizer_step(state["trainer"].optimizer.optimizer)
            original = accelerator.backward

            def backward(loss: Any, *args: Any, **kwargs: Any) -> Any:
                recorder.micro_step += 1
                trace.losses.append(float(loss.detach().float()))
                if count_collectives:  # the gradient reduction runs in backward (DDP's reducer, ZeRO 0/1)
                    from .loops import _count_collectives

                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                        result = original(loss, *args, **kwargs)
                    trace.collectives.append(_count_collectives(profile))
                else:
                    result = original(loss, *args, **kwargs)
                trace.sync_gradients.append(bool(accelerator.sync_gradients))
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                trace.grad_digests.append(float(sum(g.double().sum() for g in grads)) if grads else None)
                return result

            accelerator.backward = backward

    # Older transformers (4.4x): no train_sampling_strategy field (a SequentialSampler through _get_train_sampler
    # instead) and average_tokens_across_devices defaulting to False (set True: the oracle's normalisation).
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    compat: dict[str, Any] = {}
    trainer_cls = Trainer
    if "train_sampling_strategy" in fields:
        compat["train_sampling_strategy"] = "sequential"
    else:
        class SequentialTrainer(Trainer):
            def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
                return torch.utils.data.SequentialSampler(self.train_dataset)

        trainer_cls = SequentialTrainer
    if "average_tokens_across_devices" in fields and s.loss_norm != "trainerdefault":  # #34242: the default's own
        compat["average_tokens_across_devices"] = True
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(
            output_dir=output, use_cpu=not s.is_deepspeed, deepspeed=ds_config, per_device_train_batch_size=size,
            gradient_accumulation_steps=s.configured_g, max_steps=len(s.windows), learning_rate=LEARNING_RATES["sgd"],
            optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=0.0 if s.clip is None else s.clip, **compat,
            save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, log_level="error",
            seed=s.seed, data_seed=s.seed, dataloader_pin_memory=False,
            # The world's own PartialState (gloo, its ranks): re-created by the Trainer without a backend, it would
            # count one process on CPU (warm-world.md).
            accelerator_config={"use_configured_state": True})
        original = trainer_module.Accelerator
        trainer_module.Accelerator = accelerator_cls
        try:
            model = build_model(s.model, s.seed)
            if s.loss_norm == "trainerwindow":  # the head says it normalises nothing: the Trainer divides by the window
                model.accepts_loss_kwargs = False
            state["trainer"] = trainer_cls(model=model, args=args, train_dataset=Samples(), callbacks=[Recording()])
        finally:
            trainer_module.Accelerator = original
        for noisy in (PrinterCallback, ProgressCallback):
            state["trainer"].remove_callback(noisy)
        state["trainer"].train()
        accelerator, model = state["accelerator"], state["model"]
        trace.world = snapshot.check_world(accelerator, model, s, rank)
        trace.facts = stack.facts(s.backend, world, model if s.is_deepspeed else None)
        if s.is_deepspeed:
            trace.engine_global_steps, trace.engine_micro_steps = model.global_steps, model.micro_steps
        trace.final_params, _ = snapshot.full_parameters(accelerator, model, s)
        probe = _ProbeRun(accelerator, model, s, rank)
        trace.leftover_grads, trace.leftover_probe = snapshot.leftover_gradients(probe, s)  # type: ignore[arg-type]
        snapshot.release(accelerator, model)
    return trace


class _ProbeRun:
    """What ``snapshot.leftover_gradients`` reads of a run: the prepared objects and the next micro-batch's data."""

    def __init__(self, accelerator: Any, model: Any, scenario: Scenario, rank: int) -> None:
        self.accelerator, self.model, self.scenario, self.rank = accelerator, model, scenario, rank

    def batch(self, index: int) -> Any:
        from .data import micro_batch

        s = self.scenario
        return {k: v.to(self.accelerator.device)
                for k, v in micro_batch(s.model, s.seed, self.rank, index, s.micro_batch_size).items()}
