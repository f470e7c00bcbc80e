"""Loops written the way users write them, run under ``torchrun`` (or plainly, one process) against upstream accelerate's
own idiom for the same training, byte for byte. No accumgate import: the accelerator class comes from the command line
(``module:attribute``), so a mutant or a vendor's class runs the same loops.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 tests/outside/user_loops.py two_optimizers reference_impl:BoundaryAwareAccelerator

- ``two_optimizers`` (issue 27): two models, two SGD optimizers (a GAN, an actor and a critic), G = 2, per micro-batch
  ``backward(loss, is_final_micro_batch=...)`` then ``optimizer_step_and_zero_grad`` for each optimizer; upstream's
  idiom is the user's own ``no_sync`` on held micro-batches and two ``optimizer.step()`` calls at the boundary.
- ``conditional_branches`` (issue 28): DDP with ``find_unused_parameters=True``, a model with two heads, micro-batch
  0 takes head ``a`` on rank 0 and head ``b`` on rank 1, later ones ``a``; G = 3, windows [2, 1], written as
  ``accumulate(model)`` + the keyword + ``optimizer_step_and_zero_grad``; upstream's idiom as above.
Exit 0 when every rank ends with upstream's bytes, 1 otherwise (a crash is a non-zero exit too).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch

os.environ.setdefault("ACCELERATE_USE_CPU", "yes")


def _load(spec: str):
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _fresh(cls, **kwargs):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return cls(cpu=True, **kwargs)


def _batch(rank: int, index: int) -> torch.Tensor:
    return torch.randn(2, 4, generator=torch.Generator().manual_seed(100 * rank + index))


def two_optimizers(cls, upstream: bool) -> list[torch.Tensor]:
    accelerator = _fresh(cls, gradient_accumulation_steps=2)
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
    opt_first = torch.optim.SGD(first.parameters(), lr=0.1)
    opt_second = torch.optim.SGD(second.parameters(), lr=0.1)
    first, opt_first = accelerator.prepare(first, opt_first)
    second, opt_second = accelerator.prepare(second, opt_second)
    for index in range(6):
        final = index % 2 == 1
        held = contextlib.ExitStack()
        if upstream and not final:
            held.enter_context(accelerator.no_sync(first))
            held.enter_context(accelerator.no_sync(second))
        with held:
            loss = second(torch.tanh(first(_batch(accelerator.process_index, index)))).pow(2).mean()
            if upstream:
                accelerator.backward(loss)
            else:
                accelerator.backward(loss, is_final_micro_batch=final)
        if upstream and final:
            opt_first.step()
            opt_second.step()
            opt_first.zero_grad()
            opt_second.zero_grad()
        elif not upstream:
            accelerator.optimizer_step_and_zero_grad(opt_first, first)
            accelerator.optimizer_step_and_zero_grad(opt_second, second)
    return [p.detach().clone() for m in (first, second) for p in accelerator.unwrap_model(m).parameters()]


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        hidden = torch.tanh(self.trunk(x))
        return self.a(hidden) if branch == "a" else self.b(hidden)


def conditional_branches(cls, upstream: bool) -> list[torch.Tensor]:
    from accelerate.utils import DistributedDataParallelKwargs

    accelerator = _fresh(cls, gradient_accumulation_steps=3,
                         kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(0)
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    rank, index = accelerator.process_index, 0
    for window in (2, 1, 2):
        for k in range(window):
            final = k == window - 1
            branch = ("a" if rank == 0 else "b") if index == 0 else "a"
            if upstream:
                with contextlib.nullcontext() if final else accelerator.no_sync(model):
                    accelerator.backward(model(_batch(rank, index), branch).pow(2).mean())
                if final:
                    optimizer.step()
                    optimizer.zero_grad()
            else:
                with accelerator.accumulate(model):
                    accelerator.backward(model(_batch(rank, index), branch).pow(2).mean(), is_final_micro_batch=final)
                    accelerator.optimizer_step_and_zero_grad(optimizer, model)
            index += 1
    return [p.detach().clone() for p in accelerator.unwrap_model(model).parameters()]


LOOPS = {"two_optimizers": two_optimizers, "conditional_branches": conditional_branches}


def main(argv: list[str]) -> int:
    """``<loop>[,<loop>...] <module:attribute>``: each loop on the target against upstream's idiom."""
    import accelerate

    target, failed = _load(argv[1]), 0
    for name in argv[0].split(","):
        want = LOOPS[name](accelerate.Accelerator, upstream=True)
        got = LOOPS[name](target, upstream=False)
        worst = max(float((a - b).abs().max()) for a, b in zip(got, want))
        same = all(torch.equal(a, b) for a, b in zip(got, want))
        failed += not same
        print(f"{name} rank {os.environ.get('RANK', '0')}: {'same bytes as upstream' if same else 'DIFFERS'} "
              f"(max |Δ| {worst:.3g})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
