"""pytorch (no upstream thread found), found by accumgate's live scenarios (issue 24): on FSDP2 (``fully_shard``) a
``zero_grad()`` cannot discard what backwards run with ``set_requires_gradient_sync(False)`` accumulated. Those
gradients live on FSDP2's *unsharded* parameters (``FSDPParam.unsharded_param.grad``, or ``unsharded_accumulated_grad``
under a reduce dtype), out of reach of both ``optimizer.zero_grad()`` and ``model.zero_grad()``, which see the sharded
parameters only; the next backward with sync on adds them to its own and reduce-scatters the sum. DDP's ``no_sync()``
accumulates into ``param.grad``, which ``zero_grad()`` clears: the same loop discards them there, as PyTorch's
``zero_grad()`` means. Nothing warns.

Upstream only (torch). Two ranks on CPU (gloo):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/pytorch-unfiled-fsdp2-zero-grad-unsynced.py
Exit 1 when the bug is present (FSDP2 keeps the discarded micro-batches), 0 when absent.

What it measures: an MLP, SGD, fp32, one window of 3 micro-batches per rank: micro-batches 1 and 2 run without
gradient sync (FSDP2 ``set_requires_gradient_sync(False)``; DDP ``no_sync()``), then ``zero_grad()`` (the optimizer's,
or the module's), then micro-batch 3 with sync, then ``optimizer.step()``. c is the share of micro-batches 1-2 in the
step, fitted by least squares against plain PyTorch's gradients (all ranks' data, float64): c = 0 is zero_grad's
meaning (they are discarded), c = 1 means the zero_grad was ignored.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

BATCH, WORLD, LR = 2, 2, 0.1


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def micro_batch(rank, index):
    generator = torch.Generator().manual_seed(1000 * rank + index)
    return torch.randn(BATCH, 8, generator=generator), 4 * torch.randn(BATCH, 4, generator=generator)


def flat(tensors):
    return torch.cat([t.detach().double().flatten() for t in tensors])


def reference_gradient(indices):
    """Plain PyTorch in float64: the sum over ``indices`` of each micro-batch's mean loss, averaged over the ranks."""
    model = build().double()
    loss = 0.0
    for rank in range(WORLD):
        for index in indices:
            x, y = micro_batch(rank, index)
            loss = loss + torch.nn.functional.mse_loss(model(x.double()), y.double()) / WORLD
    return flat(torch.autograd.grad(loss, list(model.parameters())))


def loop(kind, call, rank):
    """The window: micro-batches 0 and 1 without sync, zero_grad, micro-batch 2 with sync, step. The update / -lr."""
    model = build()
    if kind == "fsdp2":
        fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
        before = flat(p.full_tensor() for p in model.parameters())
    else:
        before = flat(model.parameters())
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for index in range(3):
        x, y = micro_batch(rank, index)
        if kind == "fsdp2":
            model.set_requires_gradient_sync(index == 2)
            torch.nn.functional.mse_loss(model(x), y).backward()
        elif index < 2:
            with model.no_sync():
                torch.nn.functional.mse_loss(model(x), y).backward()
        else:
            torch.nn.functional.mse_loss(model(x), y).backward()
        if index == 1:
            (optimizer.zero_grad if call == "optimizer.zero_grad()" else model.zero_grad)()
    optimizer.step()
    after = flat(p.full_tensor() for p in model.parameters()) if kind == "fsdp2" else flat(model.parameters())
    return (before - after) / LR


def share_discarded(update):
    """Least squares: update ≈ c·g₀₁ + g₂ (c = 0: discarded; c = 1: kept), and the relative residual."""
    early, late = reference_gradient([0, 1]), reference_gradient([2])
    c = float((update - late) @ early / (early @ early))
    residual = float((update - c * early - late).norm() / update.norm())
    return c, residual


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}
    for kind in ("ddp", "fsdp2"):
        for call in ("optimizer.zero_grad()", "model.zero_grad()"):
            results[(kind, call)] = share_discarded(loop(kind, call, rank))
    if rank == 0:
        print(f"versions: torch {torch.__version__}; 2 ranks, gloo, fp32, SGD; one window of 3 micro-batches, the first "
              "two without gradient sync, then zero_grad(), then one with sync, then step")
        for (kind, call), (c, residual) in results.items():
            print(f"{kind:5} {call:22}: share of the micro-batches before zero_grad in the step: expected 0.0000 "
                  f"(discarded), got {c:.4f} (relative residual of the fit {residual:.1e})")
    present = any(abs(c) > 1e-4 for (kind, _), (c, _) in results.items() if kind == "fsdp2")
    if rank == 0:
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
