"""The clauses of DESIGN §3, one record each: what the suite must exercise, and where it does.

Data only (the coverage table ``docs/contract.md`` is generated from it by ``python -m tests.contract_table``, and
``tests/test_contract_table.py`` fails when a clause has no mutant recorded as caught). A record names the rule of the
executable model that enforces it (``programs/model.py``), the properties that judge it, the program draws that reach
it, the named scenarios or probes that exercise it, and whether the explorer can reach it on the default stack; the
mutants that break it declare it themselves (``CLAUSES = ("C17",)`` in ``tests/mutants/*.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

EXPLORER, NAMED = "explorer", "named scenarios or probes"


@dataclass(frozen=True)
class Clause:
    id: str
    text: str  # the clause, as §3 says it (shortened)
    rule: str  # the model's rule (programs/model.py) that enforces it, or where else it is enforced
    properties: tuple[str, ...]
    draws: str  # what a generated program draws to reach it ("" where programs cannot)
    named: str  # named scenarios, probes or tests that exercise it
    reach: str = EXPLORER  # can the explorer see it on the default stack?


CLAUSES: tuple[Clause, ...] = (
    Clause("C1", "Boundary resolution 1: the explicit is_final_micro_batch argument, per call, never sticky",
           "_resolve", ("P4", "P5", "P1"), "backward keyword True/False among plain calls",
           "styles kwarg, kwarg_hold (every backend)"),
    Clause("C2", "Boundary resolution 2: the persistent override from set_deepspeed_gradient_accumulation_boundary "
           "(None clears it)", "_set_override, _resolve", ("P4", "P5"), "override True/False/None calls",
           "styles set_boundary, set_boundary_hold"),
    Clause("C3", "Boundary resolution 3: the schedule's sync_gradients (accumulate()'s, or accelerate's default "
           "outside it), never a value reported for an earlier explicit boundary", "_resolve, _enter_context",
           ("P4", "P5"), "plain backward after explicit ones, inside and outside accumulate()",
           "style auto, kwarg_hold"),
    Clause("C4", "Code that uses none of the new API behaves exactly as the installed upstream accelerate, byte for "
           "byte, the user's own no_sync() included", "(P3 compares with upstream's run)", ("P3", "P1"),
           "programs without the new API (untouched twins, --untouched)",
           "styles auto, legacy, ddp_native, ds_native; accelerate's test_sync.py; the Trainer"),
    Clause("C5", "The reference re-syncs gradients only at an explicit boundary whose forward ran without sync",
           "_reduction", ("P7", "P5", "P3"), "explicit True under accumulate()'s or the user's no_sync on ddp",
           "ddp-auto-dyn3142, ddp-ddpnative, twoheads (conditional computation)"),
    Clause("C6", "DeepSpeed: the boundary is forwarded to the engine, engine.step() runs only at a boundary; "
           "global_steps counts boundaries", "_deepspeed_backward", ("P4", "P8", "P7"),
           "every program on ds0-ds3", "every style on ds0-ds3"),
    Clause("C7", "Other backends: an explicit boundary sets sync_gradients for this micro-batch, so an "
           "AcceleratedOptimizer.step() that follows steps exactly at boundaries", "_after", ("P4", "P5"),
           "step / clip+step after explicit calls", "styles kwarg, set_boundary on single, ddp, fsdp"),
    Clause("C8", "Loss scaling: each micro-batch loss divided by the configured G, whatever the window's length",
           "(the oracle)", ("P2", "P5", "P10"), "windows of any length (explicit boundaries)",
           "schedules dyn3142, forced4264, g1win4; batch splits"),
    Clause("C9", "Signature compatibility: backward(loss) for accelerate <= 1.7 and wrapper.backward(loss, "
           "sync_gradients=...) for >= 1.8 both keep working", "_deepspeed_backward (accelerate_forwards_boundary)",
           ("P3", "P4"), "", "tests/test_deepspeed_wrapper.py (both signatures); the acc170-ds0154 factor", NAMED),
    Clause("C10", "set_deepspeed_gradient_accumulation_boundary forwards the override to the engine immediately",
           "_query", ("P4",), "a query of the engine right after the call (ds0-ds3)", "C23's probe"),
    Clause("C11", "DDP: an override False set before the forward disables that micro-batch's all-reduce; True (or "
           "None) re-enables it", "_reduction", ("P7",), "override False/True/None before plain backwards on ddp",
           "ddp-setboundary-*"),
    Clause("C12", "After an explicit boundary accelerator.sync_gradients reports the resolved boundary of the most "
           "recent backward (until the next accumulate() entry or backward)", "step (reported), _query", ("P4",),
           "queries before the forward; sync_gradients after every backward", "every style"),
    Clause("C13", "optimizer_step_and_zero_grad at a boundary = the resolved boundary of the most recent backward; "
           "off it, nothing, None", "_step_and_zero_grad", ("P6", "P4", "P5"), "the call after any backward",
           "style step_and_zero_grad"),
    Clause("C14", "DeepSpeed: the returned norm is the pre-clip global norm (measured by the wrapper at ZeRO-0); -1.0 "
           "only when a step happened and no norm can be had", "_step_and_zero_grad", ("P6",),
           "the call on ds0-ds3", "P6's no-norm probe (compute_grad_norm false)"),
    Clause("C15", "DeepSpeed clips with its gradient_clipping; a max_grad_norm that differs warns once, naming both",
           "_step_and_zero_grad", ("P6",), "call form other_clip on ds0-ds3", "P6's clipping-mismatch check"),
    Clause("C16", "Other backends: the pre-clip total norm, clipped to max_grad_norm, step, zero, the norm as a float",
           "_step_and_zero_grad, _optimizer_step", ("P6", "P5", "P2"), "the call on single, ddp, fsdp",
           "style step_and_zero_grad"),
    Clause("C17", "The override persists across boundaries, steps and accumulate()/no_sync() entries until None; "
           "entering accumulate() does not clear it; a new accelerator starts without one",
           "_set_override, _new_accelerator", ("P4", "P5", "P8-leak"),
           "override left in force over later micro-batches; a second accelerator (single, ddp)",
           "P8-leak's follow-up run"),
    Clause("C18", "The prepared lr scheduler, stepped after every micro-batch, advances exactly at resolved "
           "boundaries", "_scheduler_steps", ("P4", "P5"), "lr schedules decay (changes every step) and warmup",
           "scenarios with lr_schedule warmup"),
    Clause("C19", "optimizer_step_and_zero_grad without model uses the optimizer's own parameters; max_grad_norm=None "
           "clips nothing but returns the norm; off a boundary it does nothing at all, whatever its arguments",
           "_step_and_zero_grad", ("P6", "P5", "P8"), "call forms no_model, no_clip, other_clip", ""),
    Clause("C20", "Each optimizer steps once per boundary: a second call for the same optimizer does nothing; another "
           "optimizer steps; on DeepSpeed a foreign optimizer is refused", "_step_and_zero_grad",
           ("P6", "P4", "P5"), "call form twice", "model twomodels (single, ddp, fsdp); "
           "tests/test_accelerator_contract.py (DeepSpeed's refusal)"),
    Clause("C21", "backward(..., **kwargs) forwards every keyword it does not own (scale_wrt_gas=False)",
           "(the oracle: loss_norm user)", ("P2", "P5", "P10"), "the user divides by G (scale_wrt_gas=False) on "
           "ds0-ds3", "loss_norm tokens and user"),
    Clause("C22", "accumulate()'s own boundary at the end of a DataLoader is the schedule's word, followed exactly as "
           "upstream", "_enter_context", ("P4", "P5", "P3"), "programs read through a prepared DataLoader",
           "schedule tail442"),
    Clause("C23", "On DeepSpeed the override is visible to the engine before the forward pass", "_query", ("P4",),
           "a query right after set_deepspeed_gradient_accumulation_boundary (ds0-ds3)", ""),
    Clause("C24", "FSDP2: an explicit boundary sets the gradient sync for that backward; ZeRO-2/3 no_sync() is a no-op, "
           "not an error", "_reduction, _deepspeed_backward", ("P7", "P5"),
           "explicit calls under no_sync on fsdp; no_sync on ds2/ds3", "fsdp-kwarg-forced4264, ds2/ds3 auto"),
    Clause("C25", "The built stack is the one asked for (ZeRO stage, offload, precision, distributed type, world size)",
           "(snapshot.check_stack, in every job before judging)", ("all",), "", "the stack check of every job", NAMED),
    Clause("C26", "DeepSpeed without set_gradient_accumulation_boundary: follow the engine's counter; an explicit "
           "boundary that disagrees raises naming the versions", "_deepspeed_backward", ("P9",), "",
           "P9's old-engine probe", NAMED),
    Clause("C27", "managed_gradient_accumulation: false is supported or rejected naming the config key", "(wrapper)",
           ("P9",), "", "P9's unmanaged probe", NAMED),
    Clause("C28", "PipelineEngine: a clear error pointing to train_batch", "(wrapper)", ("unit",), "",
           "tests/test_deepspeed_wrapper.py", NAMED),
    Clause("C29", "Features detected by capability, not version strings, so forks work", "(compat.py)",
           ("P9", "unit"), "", "tests/test_negative_control.py (a vendor subclass), P9's probes", NAMED),
)

BY_ID = {clause.id: clause for clause in CLAUSES}
