"""``Program``: what a user's training loop does on each micro-batch, as plain frozen data.

Every rank runs the same program. A micro-batch is: an optional ``set_deepspeed_gradient_accumulation_boundary``
call before the forward pass, a context around forward + backward + what follows (``accumulate(model)``, the
user's own ``no_sync(model)``, or none), ``backward`` plain or with ``is_final_micro_batch``, then nothing, a
step (``optimizer.step(); optimizer.zero_grad()``), clip + step, or ``optimizer_step_and_zero_grad``. The
``engine`` driver is the seed's "before" code on the raw DeepSpeed engine. A program prints as the Python it
stands for and has a stable id. Imports nothing heavy: listing programs costs nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
        if self.driver == "engine" and (self.backward is None or self.set_boundary != NO_CALL
                                        or self.context != "none" or self.query or self.after != "none"):
            raise ValueError("the engine driver sets its own boundary on every micro-batch, outside any context")

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
                                                                        ("form", self.form, "model"))
                      if value != default)
        return (self.set_boundary, self.context, self.backward, self.after, self.driver) + extra

    @property
    def uses_new_api(self) -> bool:
        """A call that only the boundary-aware API has."""
        return (self.driver == "accelerator" and (self.set_boundary != NO_CALL or self.backward is not None
                                                   or self.after == "step_and_zero_grad"))

    def code(self, clip: float | None, scheduler: bool) -> list[str]:
        """The lines of Python this micro-batch stands for (inside ``for batch in ...:``)."""
        if self.driver == "engine":
            return [f"engine.set_gradient_accumulation_boundary({self.backward})",
                    "engine.backward(loss_fn(engine, batch))", "engine.step()"]
        lines = []
        if self.set_boundary != NO_CALL:
            lines.append(f"accelerator.set_deepspeed_gradient_accumulation_boundary({self.set_boundary})")
        body = []
        if self.query:
            body.append("seen = (accelerator.sync_gradients, engine_boundary(accelerator))  # before the forward")
        keyword = "" if self.backward is None else f", is_final_micro_batch={self.backward}"
        body.append(f"accelerator.backward(loss_fn(model, batch){keyword})")
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

    def __len__(self) -> int:
        return len(self.micro_batches)

    @property
    def uses_new_api(self) -> bool:
        return any(mb.uses_new_api for mb in self.micro_batches)

    @property
    def digest(self) -> str:
        """Stable across processes and Python versions (no ``hash()``): the id of a generated program."""
        text = repr((self.dataloader, [mb.fields for mb in self.micro_batches])
                    + ((("restart_at", self.restart_at),) if self.restart_at is not None else ()))
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def code(self, clip: float | None = None, scheduler: bool = False) -> str:
        """The loop as Python: one block per micro-batch, in order (what a counterexample prints). ``batches`` yields
        micro-batch ``index``'s data; with ``dataloader`` it is read through a prepared DataLoader."""
        source = ("# batches: the micro-batches, read through accelerator.prepare(DataLoader(...)): its end is the last"
                  if self.dataloader else "# batches: the micro-batches, in order")
        lines = [source, "for index, batch in enumerate(batches):"]
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
            context=mb.context, after="clip_step" if mb.after == "step_and_zero_grad" else mb.after, query=mb.query)
            for mb in self.micro_batches]
        return Program(tuple(plain), dataloader=self.dataloader, restart_at=self.restart_at)

    def to_json(self) -> dict:
        data: dict = {"dataloader": self.dataloader,
                      "micro_batches": [{"set_boundary": mb.set_boundary, "context": mb.context, "backward": mb.backward,
                                         "after": mb.after, "driver": mb.driver,
                                         **({"query": True} if mb.query else {}),
                                         **({"form": mb.form} if mb.form != "model" else {})}
                                        for mb in self.micro_batches]}
        if self.restart_at is not None:
            data["restart_at"] = self.restart_at
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Program":
        return cls(tuple(MicroBatch(**mb) for mb in data["micro_batches"]), dataloader=bool(data["dataloader"]),
                   restart_at=data.get("restart_at"))
