"""``Program``: what a user's training loop does on each micro-batch, as plain frozen data.

Every rank runs the same program. A micro-batch is: an optional ``set_deepspeed_gradient_accumulation_boundary``
call before the forward pass, a context around forward + backward + what follows (``accumulate(model)``, the
user's own ``no_sync(model)``, or none), ``backward`` plain or with ``is_final_micro_batch``, then nothing, a
step (``optimizer.step(); optimizer.zero_grad()``), clip + step, or ``optimizer_step_and_zero_grad``; optionally a
learning rate set by hand (before the forward, or between ``backward`` and the step: accelerate#2951) and a
``zero_grad()`` at the end (deepspeed#6554). The ``engine`` driver is the seed's "before" code on the raw DeepSpeed
engine: an optional ``set_gradient_accumulation_boundary``, ``engine.backward``, ``engine.step()``. A program's own
settings are those of the accelerator it builds (``GradientAccumulationPlugin`` and ``DataLoaderConfiguration``
options) and of the DataLoader it reads. A program prints as the Python it stands for and has a stable id. Imports
nothing heavy: listing programs costs nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

NO_CALL = "no call"  # set_boundary: the micro-batch makes no set_deepspeed_gradient_accumulation_boundary call
CONTEXTS = ("none", "accumulate", "no_sync")
AFTERS = ("none", "step", "clip_step", "step_and_zero_grad")
DRIVERS = ("accelerator", "engine")
# How optimizer_step_and_zero_grad is called (DESIGN §3's call forms): with the model and max_grad_norm = the
# scenario's clip; without the model (the optimizer's own parameters); max_grad_norm=None (measure, clip nothing); a
# max_grad_norm other than the scenario's clip (off DeepSpeed it clips to it; on DeepSpeed, whose clipping is its
# config's, a warning naming both); twice in a row (the second call does nothing).
FORMS = ("model", "no_model", "no_clip", "other_clip", "twice")
OTHER_MAX_NORM = 0.25
# zero_grad() at the end of a micro-batch (after what follows the backward): "optimizer" = the prepared optimizer's
# ``optimizer.zero_grad()`` (accelerator driver); on the raw engine, after ``engine.step()``: "engine" =
# ``engine.zero_grad()``, "engine_optimizer" = ``engine.optimizer.zero_grad()`` (deepspeed#6554: they differ per stage).
ZERO_GRADS = ("none", "optimizer", "engine", "engine_optimizer")
ENGINE_ZERO_GRADS = ("none", "engine", "engine_optimizer")
# A learning rate the user sets by hand (``for group in optimizer.param_groups: group["lr"] = ...``): "before_forward"
# at the micro-batch's start (an lr change between steps), "before_step" between ``backward`` and what follows (where
# PyTorch code sets it; accelerate#2951: on DeepSpeed the engine has stepped inside backward already).
LR_SETS = ("none", "before_forward", "before_step")
# The k-th lr set by hand (k = 0, 1, ...) is the optimizer's lr times LR_SET_FACTORS[k % 4]: consecutive values differ,
# and the first differs from the lr the optimizer was built with, so a set applied one step late always shows.
LR_SET_FACTORS = (0.5, 2.0, 0.25, 1.5)


def lr_set_factor(sets_before: int) -> float:
    """The factor of the lr set after ``sets_before`` earlier sets (the loop and the model count the same way)."""
    return LR_SET_FACTORS[sets_before % len(LR_SET_FACTORS)]


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of a user's loop. ``backward``: None is a plain ``backward(loss)``; True/False is
    ``backward(loss, is_final_micro_batch=...)`` (with the ``engine`` driver: the boundary set on the engine)."""

    set_boundary: object = NO_CALL  # NO_CALL, True, False or None
    context: str = "none"
    backward: bool | None = None
    after: str = "none"
    driver: str = "accelerator"
    query: bool = False  # before the forward: read accelerator.sync_gradients (and the engine's boundary on DeepSpeed)
    form: str = "model"  # how optimizer_step_and_zero_grad is called (FORMS); only with after="step_and_zero_grad"
    zero_grad: str = "none"  # a zero_grad() at the end of the micro-batch (ZERO_GRADS)
    set_lr: str = "none"  # an lr set by hand (LR_SETS), to the next factor of LR_SET_FACTORS
    # FSDP2's own calls on the prepared module before the forward (NO_CALL, True or False; both sticky in torch):
    # ``model.set_requires_gradient_sync(...)`` and ``model.set_is_last_backward(...)``
    fsdp_sync: object = NO_CALL
    fsdp_last_backward: object = NO_CALL

    def __post_init__(self) -> None:
        if self.set_boundary not in (NO_CALL, True, False, None):
            raise ValueError(f"set_boundary {self.set_boundary!r}: expected {NO_CALL!r}, True, False or None")
        if self.context not in CONTEXTS:
            raise ValueError(f"context {self.context!r}: expected one of {', '.join(CONTEXTS)}")
        if self.after not in AFTERS:
            raise ValueError(f"after {self.after!r}: expected one of {', '.join(AFTERS)}")
        if self.driver not in DRIVERS:
            raise ValueError(f"driver {self.driver!r}: expected one of {', '.join(DRIVERS)}")
        if self.form not in FORMS or (self.form != "model" and self.after != "step_and_zero_grad"):
            raise ValueError(f"form {self.form!r}: expected one of {', '.join(FORMS)}, and only with "
                             "after='step_and_zero_grad'")
        if self.zero_grad not in ZERO_GRADS or (self.zero_grad in ENGINE_ZERO_GRADS) != (
                self.driver == "engine" or self.zero_grad == "none"):
            raise ValueError(f"zero_grad {self.zero_grad!r}: expected one of {', '.join(ZERO_GRADS)} ('optimizer' with the "
                             "accelerator driver, 'engine' or 'engine_optimizer' with the engine driver)")
        if self.set_lr not in LR_SETS:
            raise ValueError(f"set_lr {self.set_lr!r}: expected one of {', '.join(LR_SETS)}")
        for name in ("fsdp_sync", "fsdp_last_backward"):
            if getattr(self, name) not in (NO_CALL, True, False) or (getattr(self, name) != NO_CALL
                                                                     and self.driver != "accelerator"):
                raise ValueError(f"{name} {getattr(self, name)!r}: expected {NO_CALL!r}, True or False (FSDP2's module "
                                 "call, with the accelerator driver)")
        if self.driver == "engine" and (self.set_boundary != NO_CALL or self.context != "none" or self.query
                                        or self.after != "none"):
            raise ValueError("the engine driver sets the engine's boundary itself (backward: True/False, or None for no "
                             "call), outside any context, and steps the engine after every backward")

    def max_grad_norm(self, clip: float | None) -> float | None:
        """What ``max_grad_norm`` this micro-batch passes to optimizer_step_and_zero_grad."""
        return {"no_clip": None, "other_clip": OTHER_MAX_NORM}.get(self.form, clip)

    def call_arguments(self, clip: float | None) -> str:
        bound = self.max_grad_norm(clip)
        text = "None" if bound is None else f"{bound:g}"
        return f"optimizer, max_grad_norm={text}" if self.form == "no_model" else f"optimizer, model, max_grad_norm={text}"

    @property
    def fields(self) -> tuple:
        """The fields that name this micro-batch (those added later only where they differ from their default, so the
        ids of programs written before them stay the same)."""
        extra = tuple(f"{name}={value!r}" for name, value, default in (("query", self.query, False),
                                                                        ("form", self.form, "model"),
                                                                        ("zero_grad", self.zero_grad, "none"),
                                                                        ("set_lr", self.set_lr, "none"),
                                                                        ("fsdp_sync", self.fsdp_sync, NO_CALL),
                                                                        ("fsdp_last_backward", self.fsdp_last_backward,
                                                                         NO_CALL))
                      if value != default)
        return (self.set_boundary, self.context, self.backward, self.after, self.driver) + extra

    @property
    def uses_new_api(self) -> bool:
        """A call that only the boundary-aware API has."""
        return (self.driver == "accelerator" and (self.set_boundary != NO_CALL or self.backward is not None
                                                   or self.after == "step_and_zero_grad"))

    def code(self, clip: float | None, scheduler: bool) -> list[str]:
        """The lines of Python this micro-batch stands for (inside ``for batch in ...:``)."""
        set_lr = ["set_lr(optimizer, next_factor())  # for group in optimizer.param_groups: group['lr'] = lr * factor"]
        if self.driver == "engine":
            lines = set_lr if self.set_lr == "before_forward" else []
            if self.backward is not None:
                lines.append(f"engine.set_gradient_accumulation_boundary({self.backward})")
            lines.append("engine.backward(loss_fn(engine, batch))")
            lines += set_lr if self.set_lr == "before_step" else []
            lines.append("engine.step()")
            if self.zero_grad != "none":
                lines.append({"engine": "engine.zero_grad()", "engine_optimizer": "engine.optimizer.zero_grad()"}[
                    self.zero_grad])
            return lines
        lines = list(set_lr) if self.set_lr == "before_forward" else []
        if self.fsdp_sync != NO_CALL:
            lines.append(f"model.set_requires_gradient_sync({self.fsdp_sync})  # FSDP2")
        if self.fsdp_last_backward != NO_CALL:
            lines.append(f"model.set_is_last_backward({self.fsdp_last_backward})  # FSDP2")
        if self.set_boundary != NO_CALL:
            lines.append(f"accelerator.set_deepspeed_gradient_accumulation_boundary({self.set_boundary})")
        body = []
        if self.query:
            body.append("seen = (accelerator.sync_gradients, engine_boundary(accelerator))  # before the forward")
        keyword = "" if self.backward is None else f", is_final_micro_batch={self.backward}"
        body.append(f"accelerator.backward(loss_fn(model, batch){keyword})")
        body += set_lr if self.set_lr == "before_step" else []
        sched = ["scheduler.step()"] if scheduler else []
        if self.after == "step":
            body += ["optimizer.step()", *sched, "optimizer.zero_grad()"]
        elif self.after == "clip_step":
            if clip is not None:
                body.append(f"if accelerator.sync_gradients: accelerator.clip_grad_norm_(model.parameters(), {clip:g})")
            body += ["optimizer.step()", *sched, "optimizer.zero_grad()"]
        elif self.after == "step_and_zero_grad":
            body += [f"norm = accelerator.optimizer_step_and_zero_grad({self.call_arguments(clip)})"] * (
                2 if self.form == "twice" else 1)
            body += sched
        if self.zero_grad == "optimizer":
            body.append("optimizer.zero_grad()")
        if self.context == "none":
            return lines + body
        return lines + [f"with accelerator.{self.context}(model):"] + ["    " + line for line in body]


@dataclass(frozen=True)
class Program:
    """Micro-batches in order; ``dataloader``: they come from a prepared DataLoader whose end (the last micro-batch)
    makes ``accumulate()`` force its boundary, as accelerate does (the #3552 situation)."""

    micro_batches: tuple[MicroBatch, ...]
    dataloader: bool = False
    # Before this micro-batch the user builds a second accelerator of the same class and prepares the same model and
    # optimizer with it (a notebook re-run, a script's second phase): DESIGN §3 "a new accelerator starts without one"
    # (no override). None: one accelerator throughout.
    restart_at: int | None = None
    # The accelerator's GradientAccumulationPlugin options (accelerate's defaults: False, True, True): sync_each_batch
    # reduces inside accumulate() off its boundary too (no no_sync); sync_with_dataloader=False lets the DataLoader's
    # end pass without a forced boundary; adjust_scheduler counts skipped scheduler steps (its _step_count only).
    sync_each_batch: bool = False
    sync_with_dataloader: bool = True
    adjust_scheduler: bool = True
    # The accelerator's DataLoaderConfiguration(even_batches=...) and the DataLoader's dataset: ``short_dataset`` holds
    # one item fewer than the ranks read, so that with even_batches the last rank's last micro-batch wraps around to
    # the first item (rank 0's micro-batch 0); without even_batches the ranks would read different numbers of batches
    # and the run would hang (accelerate's join_uneven_inputs territory): never generated.
    even_batches: bool = True
    short_dataset: bool = False

    def __post_init__(self) -> None:
        if self.short_dataset and not (self.dataloader and self.even_batches):
            raise ValueError("short_dataset: a DataLoader (dataloader=True) with even_batches, or the ranks read different "
                             "numbers of micro-batches")

    def __len__(self) -> int:
        return len(self.micro_batches)

    # Program-level settings that differ from accelerate's defaults, by name (ids, json, the printed code).
    OPTIONS = (("sync_each_batch", False), ("sync_with_dataloader", True), ("adjust_scheduler", True),
               ("even_batches", True), ("short_dataset", False))

    @property
    def options(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name, default in self.OPTIONS if getattr(self, name) != default}

    def source(self, rank: int, index: int, world_size: int) -> tuple[int, int]:
        """The (rank, micro-batch) stream whose data micro-batch ``index`` of ``rank`` reads: its own, but for the
        wrapped-around last micro-batch of a short dataset (accelerate's even_batches: the last rank's last batch is
        completed from the dataset's start, global item 0 = rank 0's micro-batch 0)."""
        last = len(self.micro_batches) - 1
        if self.short_dataset and world_size > 1 and rank == world_size - 1 and index == last:
            return 0, 0
        return rank, index

    @property
    def uses_new_api(self) -> bool:
        return any(mb.uses_new_api for mb in self.micro_batches)

    @property
    def digest(self) -> str:
        """Stable across processes and Python versions (no ``hash()``): the id of a generated program."""
        text = repr((self.dataloader, [mb.fields for mb in self.micro_batches])
                    + ((("restart_at", self.restart_at),) if self.restart_at is not None else ())
                    + tuple(sorted(self.options.items())))
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def code(self, clip: float | None = None, scheduler: bool = False) -> str:
        """The loop as Python: one block per micro-batch, in order (what a counterexample prints). ``batches`` yields
        micro-batch ``index``'s data; with ``dataloader`` it is read through a prepared DataLoader."""
        source = ("# batches: the micro-batches, read through accelerator.prepare(DataLoader(...)): its end is the last"
                  if self.dataloader else "# batches: the micro-batches, in order")
        lines = [source]
        plugin = {k: v for k, v in self.options.items() if k in ("sync_each_batch", "sync_with_dataloader",
                                                                   "adjust_scheduler")}
        if plugin:
            lines.append("# accelerator = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=G, "
                         + ", ".join(f"{k}={v}" for k, v in plugin.items()) + "), ...)")
        if not self.even_batches:
            lines.append("# accelerator = Accelerator(dataloader_config=DataLoaderConfiguration(even_batches=False), ...)")
        if self.short_dataset:
            lines.append("# the DataLoader's dataset holds one item fewer than the ranks read: even_batches wraps the last "
                         "rank's last batch around to the first item")
        lines.append("for index, batch in enumerate(batches):")
        for index, mb in enumerate(self.micro_batches):
            lines.append(f"    {'if' if index == 0 else 'elif'} index == {index}:")
            if index == self.restart_at:
                lines += ["        accelerator = Accelerator(**same_arguments)  # a second accelerator, same class",
                          "        model, optimizer = accelerator.prepare(accelerator.unwrap_model(model), optimizer.optimizer)"]
            lines += ["        " + line for line in mb.code(clip, scheduler)]
        return "\n".join(lines)

    def untouched_twin(self) -> "Program":
        """The same loop without the new API: no keyword, no override, ``optimizer_step_and_zero_grad`` replaced by
        the accelerate idiom it stands for (clip at a boundary, step, zero). Where the model gives both the same steps
        and reductions, the explicit calls only restated the schedule, and must change nothing, bit for bit (P1)."""
        plain = [mb if mb.driver != "accelerator" else MicroBatch(
            context=mb.context, after="clip_step" if mb.after == "step_and_zero_grad" else mb.after, query=mb.query,
            zero_grad=mb.zero_grad, set_lr=mb.set_lr, fsdp_sync=mb.fsdp_sync, fsdp_last_backward=mb.fsdp_last_backward)
            for mb in self.micro_batches]
        return replace(self, micro_batches=tuple(plain))

    def to_json(self) -> dict:
        data: dict = {"dataloader": self.dataloader,
                      "micro_batches": [{"set_boundary": mb.set_boundary, "context": mb.context, "backward": mb.backward,
                                         "after": mb.after, "driver": mb.driver,
                                         **({"query": True} if mb.query else {}),
                                         **({"form": mb.form} if mb.form != "model" else {}),
                                         **({"zero_grad": mb.zero_grad} if mb.zero_grad != "none" else {}),
                                         **({"set_lr": mb.set_lr} if mb.set_lr != "none" else {}),
                                         **({"fsdp_sync": mb.fsdp_sync} if mb.fsdp_sync != NO_CALL else {}),
                                         **({"fsdp_last_backward": mb.fsdp_last_backward}
                                            if mb.fsdp_last_backward != NO_CALL else {})}
                                        for mb in self.micro_batches]}
        if self.restart_at is not None:
            data["restart_at"] = self.restart_at
        data.update(self.options)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Program":
        return cls(tuple(MicroBatch(**mb) for mb in data["micro_batches"]), dataloader=bool(data["dataloader"]),
                   restart_at=data.get("restart_at"),
                   **{name: bool(data[name]) for name, _ in cls.OPTIONS if name in data})
