"""accelerate#3789 (closed without a fix; PR #4294 open): ``Accelerator.clip_grad_norm_`` under FSDP raises for any
prepared model but the first one.

Upstream only (torch + accelerate; no accumgate). Two models, each prepared with an optimizer of its own (a GAN's
generator and discriminator, an actor and a critic), under FSDP2. ``clip_grad_norm_(second.parameters(), ...)`` looks
for the prepared model that owns the parameters with ``parameters == [p for p in model.parameters()]``, i.e. a list
comparison that calls ``DTensor.__eq__`` element by element against the FIRST model's parameters whenever the two
models have the same number of parameter tensors: shapes that differ raise "Attempting to broadcast a dimension of
length ...", equal shapes raise "Boolean value of Tensor with more than one value is ambiguous". The first model's call
works (identical objects short-circuit ``==``). Models with different numbers of parameter tensors hide the bug.

FSDP2 on CPU through accelerate in the arrangement of accumgate's notes (the state's distributed type set to FSDP
before ``prepare``), 2 ranks over gloo. The script clips both models after one backward and compares each returned
norm with float64 (the norm of the mean over ranks of each rank's gradient); it prints what happened and exits 1 when
the call raises or a norm is wrong (0 when both calls return the right norm).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/accelerate-3789.py
    options: --same-shapes (the second model shaped like the first: the "ambiguous" message)
             --extra-param (the second model gets a third parameter tensor: lists differ in length, no error)

Exit 1 when the bug is present, 0 when absent.
"""
from __future__ import annotations

import argparse
import sys

import torch

IN, HIDDEN, OUT, BATCH = 8, 16, 4, 2


class Second(torch.nn.Module):
    def __init__(self, fan_in: int, fan_out: int, extra: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(fan_in, fan_out)
        self.scale = torch.nn.Parameter(torch.ones(fan_out)) if extra else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out * self.scale if self.scale is not None else out


def models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    width = IN if args.same_shapes else HIDDEN
    first = torch.nn.Linear(IN, width)
    second = Second(width, IN if args.same_shapes else OUT, args.extra_param)
    return first, second


def batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_007 * rank)
    return torch.randn(BATCH, IN, generator=g), 4.0 * torch.randn(BATCH, OUT, generator=g)


def loss_of(first: torch.nn.Module, second: torch.nn.Module, rank: int) -> torch.Tensor:
    x, y = batch(rank)
    out = second(torch.tanh(first(x.to(next(first.parameters()).dtype))))
    return torch.nn.functional.mse_loss(out[:, :OUT].float(), y)


def float64_norms(args: argparse.Namespace, world: int) -> list[float]:
    first, second = (m.double() for m in models(args))
    grads: dict[int, list[torch.Tensor]] = {}
    for rank in range(world):
        parts = list(first.parameters()) + list(second.parameters())
        for i, g in enumerate(torch.autograd.grad(loss_of(first, second, rank), parts)):
            grads.setdefault(i, []).append(g / world)
    mean = [sum(gs) for gs in grads.values()]
    split = len(list(first.parameters()))
    return [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in part])))
            for part in (mean[:split], mean[split:])]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--same-shapes", action="store_true")
    parser.add_argument("--extra-param", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # torchrun ends rank 0 as soon as rank 1 exits 1: print before that

    import accelerate
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = PartialState(backend="gloo", cpu=True)
    rank, world = state.process_index, state.num_processes
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
    # accelerate enables FSDP only on GPU-class types; on CPU set it before prepare (accumgate's measured arrangement).
    PartialState().distributed_type = DistributedType.FSDP
    AcceleratorState().distributed_type = DistributedType.FSDP
    AcceleratorState().fsdp_plugin = plugin
    first, second = models(args)
    first, first_optimizer = accelerator.prepare(first, torch.optim.SGD(first.parameters(), lr=0.05))
    second, second_optimizer = accelerator.prepare(second, torch.optim.SGD(second.parameters(), lr=0.05))
    assert accelerator.is_fsdp2 and type(second).__name__.startswith("FSDP"), "not FSDP2 modules"

    accelerator.backward(loss_of(first, second, rank))
    want = float64_norms(args, world)
    bad = 0
    for index, (name, model) in enumerate((("first", first), ("second", second))):
        try:
            norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm=1e9))
        except Exception as error:  # noqa: BLE001 - what the user sees is the point
            bad += 1
            if rank == 0:
                print(f"clip_grad_norm_({name}.parameters()) raised {type(error).__name__}: {str(error)[:160]}")
            continue
        ok = abs(norm - want[index]) <= 1e-6 + 1e-5 * want[index]
        bad += 0 if ok else 1
        if rank == 0:
            print(f"clip_grad_norm_({name}.parameters()) returned {norm:.6f}, float64 says {want[index]:.6f}"
                  f"{'' if ok else '  WRONG'}")
    stack = (f"FSDP2, two prepared models ({'same shapes' if args.same_shapes else 'different shapes'}, "
             f"{'different' if args.extra_param else 'equal'} parameter counts), {world} ranks (gloo), "
             f"torch {torch.__version__}, accelerate {accelerate.__version__}")
    if rank == 0:
        print(f"{stack}: {'BUG PRESENT' if bad else 'ok'}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 1 if bad else 0


if __name__ == "__main__":
    present = main()
    sys.exit(1 if present else 0)
