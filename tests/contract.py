"""The accelerator's per-call contract (DESIGN §3), checked in one process on the real accelerate.

Each check builds an accelerator of the class under test, trains a tiny model, observes what a user can
observe (``sync_gradients``, whether the parameters moved, returned norms) and returns violations as
sentences. The reference must give none; each mutant in tests/mutants must give some.
"""
from __future__ import annotations

from typing import Any

import torch

G = 4


def _setup(accelerator_cls: Any) -> tuple[Any, Any, Any]:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = accelerator_cls(cpu=True, gradient_accumulation_steps=G)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _loss(model: Any, index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(index)
    return (model(torch.randn(2, 3, generator=generator)) - 5.0).pow(2).mean()


def _micro_batch(accelerator: Any, model: Any, optimizer: Any, index: int, **backward_kwargs: Any) -> tuple[bool, bool]:
    """(sync_gradients after backward, whether the optimizer step changed the parameters)."""
    before = [p.detach().clone() for p in model.parameters()]
    accelerator.backward(_loss(model, index), **backward_kwargs)
    sync = bool(accelerator.sync_gradients)
    optimizer.step()
    optimizer.zero_grad()
    moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return sync, moved


def kwarg_violations(accelerator_cls: Any) -> list[str]:
    """Inside accumulate(G=4): ``is_final_micro_batch=True`` on micro-batch 2 steps there, and only there:
    the keyword is not sticky, accumulate()'s own boundaries (4, 8) still hold; ``False`` on 8 holds it."""
    accelerator, model, optimizer = _setup(accelerator_cls)
    forced = {2: True, 8: False}
    want = {1: False, 2: True, 3: False, 4: True, 5: False, 6: False, 7: False, 8: False}
    violations = []
    for index in range(1, 9):
        with accelerator.accumulate(model):
            kwargs = {"is_final_micro_batch": forced[index]} if index in forced else {}
            sync, moved = _micro_batch(accelerator, model, optimizer, index, **kwargs)
        if (sync, moved) != (want[index], want[index]):
            violations.append(f"micro-batch {index} ({kwargs or 'no keyword'}): sync_gradients={sync}, "
                              f"stepped={moved}; want both {want[index]}")
    return violations


def override_violations(accelerator_cls: Any) -> list[str]:
    """The override holds until changed; the keyword beats it for one call; ``None`` returns to the schedule."""
    accelerator, model, optimizer = _setup(accelerator_cls)
    violations = []
    accelerator.set_deepspeed_gradient_accumulation_boundary(False)
    plan = [  # (micro-batch, keyword, want boundary)
        (1, None, False), (2, True, True), (3, None, False), (4, None, False),
    ]
    for index, keyword, want in plan:
        with accelerator.accumulate(model):
            kwargs = {} if keyword is None else {"is_final_micro_batch": keyword}
            sync, moved = _micro_batch(accelerator, model, optimizer, index, **kwargs)
        if (sync, moved) != (want, want):
            violations.append(f"override False, micro-batch {index} ({kwargs or 'no keyword'}): "
                              f"sync_gradients={sync}, stepped={moved}; want both {want}")
    accelerator.set_deepspeed_gradient_accumulation_boundary(None)
    for index in range(5, 9):  # accumulate()'s counter is at 4: boundary again at 8
        with accelerator.accumulate(model):
            sync, moved = _micro_batch(accelerator, model, optimizer, index)
        want = index == 8
        if (sync, moved) != (want, want):
            violations.append(f"after override None, micro-batch {index}: sync_gradients={sync}, stepped={moved}; "
                              f"want both {want} (accumulate()'s schedule)")
    return violations


def norm_violations(accelerator_cls: Any) -> list[str]:
    """``optimizer_step_and_zero_grad``: None off-boundary; at a boundary the pre-clip norm as a float, the
    gradients clipped to ``max_grad_norm`` and stepped once, then zeroed; a second call does nothing."""
    accelerator, model, optimizer = _setup(accelerator_cls)
    violations = []
    for index in range(1, 5):
        with accelerator.accumulate(model):
            accelerator.backward(_loss(model, index))
            grads = [p.grad.detach().clone() for p in model.parameters()]
            params = [p.detach().clone() for p in model.parameters()]
            got = accelerator.optimizer_step_and_zero_grad(optimizer, model, max_grad_norm=1.0)
            if index < G:
                if got is not None:
                    violations.append(f"micro-batch {index} (not a boundary): returned {got!r}, want None")
                continue
            want = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if not isinstance(got, float) or abs(got - want) > 1e-6 * max(1.0, want):
                violations.append(f"boundary: returned {got!r}, want the pre-clip norm {want:.7g} as a float")
            scale = min(1.0, 1.0 / (want + 1e-6))
            expected = [p - 0.1 * g * scale for p, g in zip(params, grads)]
            if not all(torch.allclose(p, e, rtol=1e-6, atol=1e-7) for p, e in zip(model.parameters(), expected)):
                violations.append("boundary: parameters are not one SGD step on the gradients clipped to 1.0")
            if any(p.grad is not None and bool(p.grad.abs().sum()) for p in model.parameters()):
                violations.append("boundary: gradients were not zeroed")
            again = accelerator.optimizer_step_and_zero_grad(optimizer, model, max_grad_norm=1.0)
            if again is not None:
                violations.append(f"second call at the same boundary returned {again!r}, want None (no second step)")
    return violations


def plain_after_explicit_violations(accelerator_cls: Any) -> list[str]:
    """Outside ``accumulate()`` (the schedule says True on every micro-batch): one ``is_final_micro_batch=False``,
    or an override ``False`` then ``None``, holds that one micro-batch; every later plain ``backward`` is a boundary
    again and the optimizer steps (DESIGN §3 rule 1 "never sticky", rule 3 "the schedule's sync_gradients")."""
    violations = []
    for how in ("keyword", "override"):
        accelerator, model, optimizer = _setup(accelerator_cls)
        if how == "keyword":
            sync, moved = _micro_batch(accelerator, model, optimizer, 1, is_final_micro_batch=False)
        else:
            accelerator.set_deepspeed_gradient_accumulation_boundary(False)
            sync, moved = _micro_batch(accelerator, model, optimizer, 1)
            accelerator.set_deepspeed_gradient_accumulation_boundary(None)
        if (sync, moved) != (False, False):
            violations.append(f"{how} False: sync_gradients={sync}, stepped={moved}; want both False")
        for index in range(2, 5):
            sync, moved = _micro_batch(accelerator, model, optimizer, index)
            if (sync, moved) != (True, True):
                violations.append(f"{how} False then plain backward {index}: sync_gradients={sync}, stepped={moved}; "
                                  "want both True (the schedule's default outside accumulate())")
    return violations


def two_optimizers_violations(accelerator_cls: Any) -> list[str]:
    """Two models, two optimizers (a GAN, an actor and a critic), G = 2, ``backward(loss, is_final_micro_batch=...)``
    then ``optimizer_step_and_zero_grad`` for each optimizer: at every boundary both step, each once (a second call
    for the same optimizer after the same boundary returns None and does nothing), off the boundary neither
    (DESIGN §3 "Each optimizer steps once per boundary"). Issue 27's loop: on 428deb9 the second never stepped."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = accelerator_cls(cpu=True, gradient_accumulation_steps=2)
    torch.manual_seed(0)
    first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt_first = torch.optim.SGD(first.parameters(), lr=0.1)
    opt_second = torch.optim.SGD(second.parameters(), lr=0.1)
    first, opt_first = accelerator.prepare(first, opt_first)
    second, opt_second = accelerator.prepare(second, opt_second)
    violations = []
    for index in range(4):
        final = index % 2 == 1
        generator = torch.Generator().manual_seed(index)
        loss = (second(torch.tanh(first(torch.randn(2, 3, generator=generator)))) - 5.0).pow(2).mean()
        accelerator.backward(loss, is_final_micro_batch=final)
        for name, model, optimizer in (("first", first, opt_first), ("second", second, opt_second)):
            grads = [p.grad.detach().clone() for p in model.parameters()]
            before = [p.detach().clone() for p in model.parameters()]
            got = accelerator.optimizer_step_and_zero_grad(optimizer, model)
            moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
            want_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if not final and (got is not None or moved):
                violations.append(f"micro-batch {index} (not a boundary), {name}: returned {got!r}, stepped={moved}; "
                                  "want None and no step")
            elif final and (not moved or not isinstance(got, float) or abs(got - want_norm) > 1e-6 * max(1.0, want_norm)):
                violations.append(f"micro-batch {index} (boundary), {name}: returned {got!r}, stepped={moved}; want its "
                                  f"own pre-clip norm {want_norm:.7g} and a step")
            if final and any(p.grad is not None and bool(p.grad.abs().sum()) for p in model.parameters()):
                violations.append(f"micro-batch {index} (boundary), {name}: gradients left behind after the call")
            again = accelerator.optimizer_step_and_zero_grad(optimizer, model)
            if again is not None:
                violations.append(f"micro-batch {index}, {name}: a second call for the same optimizer returned "
                                  f"{again!r}, want None")
    return violations


CHECKS = {"kwarg": kwarg_violations, "override": override_violations, "norm": norm_violations,
          "plain_after_explicit": plain_after_explicit_violations, "two_optimizers": two_optimizers_violations}
