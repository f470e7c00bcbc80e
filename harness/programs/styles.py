"""The named API styles of the conformance matrix, each as the program it stands for (a few lines each, side by
side: the habit of accelerate's test_sync). A style turns a schedule's windows into micro-batches; the model
(``model.py``) then says what must happen, so a style needs no expectation of its own.
"""
from __future__ import annotations

from typing import Callable

from .program import MicroBatch, Program

Style = Callable[[bool, bool], MicroBatch]  # (is_final, accumulate finds the boundaries itself) -> micro-batch


def _auto(is_final: bool, finds: bool) -> MicroBatch:
    """accumulate() + backward + clip/step/zero_grad; the keyword only where accumulate() cannot find the windows."""
    return MicroBatch(context="accumulate", backward=None if finds else is_final, after="clip_step")


def _kwarg(is_final: bool, finds: bool) -> MicroBatch:
    """Method 1: backward(loss, is_final_micro_batch=...), no accumulate()."""
    return MicroBatch(backward=is_final, after="clip_step")


def _set_boundary(is_final: bool, finds: bool) -> MicroBatch:
    """Method 2: the persistent override before the forward pass, plain backward."""
    return MicroBatch(set_boundary=is_final, after="clip_step")


def _step_and_zero_grad(is_final: bool, finds: bool) -> MicroBatch:
    """Method 3: accumulate() + backward + optimizer_step_and_zero_grad on every micro-batch (None off-boundary)."""
    return MicroBatch(context="accumulate", backward=None if finds else is_final, after="step_and_zero_grad")


def _ds_native(is_final: bool, finds: bool) -> MicroBatch:
    """The seed's "before" code on the raw engine: DeepSpeed's documented boundary idiom."""
    return MicroBatch(driver="engine", backward=is_final)


def _legacy(is_final: bool, finds: bool) -> MicroBatch:
    """Code written for accelerate <= 1.7 on DeepSpeed: plain backward outside accumulate(), step every time."""
    return MicroBatch(after="step")


def _ddp_native(is_final: bool, finds: bool) -> MicroBatch:
    """The seed's "before" code off DeepSpeed: the user's own no_sync() on non-final micro-batches, a plain
    backward on the final one, and the step guarded by the user's own knowledge of the boundary."""
    if is_final:
        return MicroBatch(after="clip_step")
    return MicroBatch(context="no_sync")


def _kwarg_hold(is_final: bool, finds: bool) -> MicroBatch:
    """The keyword only to hold the boundary (False); the final micro-batch is a plain backward, a boundary by the
    schedule's default outside accumulate(): a keyword that stuck would stop training here."""
    return MicroBatch(backward=None if is_final else False, after="clip_step")


def _set_boundary_hold(is_final: bool, finds: bool) -> MicroBatch:
    """The override False to hold, None on the final micro-batch to hand the decision back to the schedule."""
    return MicroBatch(set_boundary=None if is_final else False, after="clip_step")


def _trainer(is_final: bool, finds: bool) -> MicroBatch:
    """What the transformers Trainer's loop amounts to (it sets sync_gradients itself, every G-th micro-batch, holds
    the all-reduce back with no_sync() off DeepSpeed, clips, steps and zeroes at the boundary): run by the Trainer
    itself (harness/clients.py); this program is its expectation."""
    return MicroBatch(context="accumulate", after="clip_step" if is_final else "none")


STYLES: dict[str, Style] = {
    "auto": _auto,
    "kwarg": _kwarg,
    "set_boundary": _set_boundary,
    "step_and_zero_grad": _step_and_zero_grad,
    "ds_native": _ds_native,
    "legacy": _legacy,
    "ddp_native": _ddp_native,
    "kwarg_hold": _kwarg_hold,
    "set_boundary_hold": _set_boundary_hold,
    "trainer": _trainer,
}


def program_of(api: str, windows: tuple[int, ...], finds_boundaries: bool, dataloader: bool) -> Program:
    """The program of an API style over the given windows (the last micro-batch of each is final)."""
    style = STYLES[api]
    micro = [style(index == window - 1, finds_boundaries) for window in windows for index in range(window)]
    return Program(tuple(micro), dataloader=dataloader)
