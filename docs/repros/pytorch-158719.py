"""pytorch#158719 (open; the opt-in set_reduce_scatter_unused_params exists): FSDP2 (``fully_shard``): a parameter
used on some ranks only is reduce-scattered against ANOTHER parameter's gradient.

Upstream only (torch + accelerate; no accumgate). A trunk and two same-shaped heads; each micro-batch goes through one
head, chosen per (rank, micro-batch). FSDP2's post-backward reduce-scatters only the parameters that hold a gradient on
*this* rank (``FSDPParamGroup.post_backward``), packed in order: when rank 0 used head_a and rank 1 head_b, the
reduce-scatter sums rank 0's head_a with rank 1's head_b, silently (same shapes, so no size mismatch to trip on), and
each rank writes the sum into the head it used. torch 2.13 has the opt-in remedy,
``model.set_reduce_scatter_unused_params(True)`` (zeros for the unused parameters, like DDP's
``find_unused_parameters=True``); accelerate 1.15 does not set it. With the user's own ``no_sync`` on held micro-batches
(accelerate's ``no_sync`` = ``set_requires_gradient_sync(False)``) only the synchronising micro-batch reduces, with
whatever each rank accumulated since: the sets differ when the ranks' windows used different heads.

FSDP2 on CPU through accelerate in the arrangement of accumgate's notes: ``Accelerator(cpu=True, fsdp_plugin=...)``,
then the state's distributed type set to FSDP before ``prepare``. SGD without momentum, no clipping, fp32: this script
compares every parameter after every step with float64 (mean over ranks of each rank's gradient of loss / G, zero
where a rank did not use the parameter), prints expected vs got and exits 1 when they differ (0 when they agree).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/pytorch-158719.py
    options: --gas G (G-1 micro-batches under accelerator.no_sync, then one that syncs)  --route disjoint|harness|same
             --reduce-unused (model.set_reduce_scatter_unused_params(True): must pass)  --bf16  --steps N

Exit 1 when the bug is present, 0 when absent.
"""
from __future__ import annotations

import argparse
import sys

import torch

IN, HIDDEN, OUT, BATCH, LR = 8, 16, 4, 2, 0.05


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(IN, HIDDEN)
        self.head_a = torch.nn.Linear(HIDDEN, OUT)
        self.head_b = torch.nn.Linear(HIDDEN, OUT)

    def forward(self, x: torch.Tensor, route: int) -> torch.Tensor:
        hidden = torch.tanh(self.trunk(x))
        return self.head_b(hidden) if route == 1 else self.head_a(hidden)


def route_of(kind: str, rank: int, index: int) -> int:
    if kind == "disjoint":
        return rank % 2
    if kind == "harness":
        return 1 if (index + rank) % 4 == 1 else 0
    return index % 2  # "same": every rank uses the same head on a micro-batch


def batch(rank: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_007 * rank + index)
    return torch.randn(BATCH, IN, generator=g), 4.0 * torch.randn(BATCH, OUT, generator=g)


def initial_model() -> TwoHeads:
    torch.manual_seed(0)
    return TwoHeads()


def float64_steps(args: argparse.Namespace, world: int) -> list[dict[str, torch.Tensor]]:
    model = initial_model().double()
    out = []
    for step in range(args.steps):
        summed = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for rank in range(world):
            for m in range(step * args.gas, (step + 1) * args.gas):
                x, y = batch(rank, m)
                loss = torch.nn.functional.mse_loss(model(x.double(), route_of(args.route, rank, m)), y.double())
                grads = torch.autograd.grad(loss / args.gas, list(model.parameters()), allow_unused=True)
                for (n, _), g in zip(model.named_parameters(), grads):
                    if g is not None:
                        summed[n] += g
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= LR * summed[n] / world
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gas", type=int, default=1)
    parser.add_argument("--route", choices=("disjoint", "harness", "same"), default="disjoint")
    parser.add_argument("--reduce-unused", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # torchrun ends rank 0 as soon as rank 1 exits 1: print before that

    import accelerate
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = PartialState(backend="gloo", cpu=True)
    rank, world = state.process_index, state.num_processes
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin, gradient_accumulation_steps=args.gas,
                              mixed_precision="bf16" if args.bf16 else "no")
    # accelerate enables FSDP only on GPU-class types; on CPU set it before prepare (accumgate's measured arrangement).
    PartialState().distributed_type = DistributedType.FSDP
    AcceleratorState().distributed_type = DistributedType.FSDP
    AcceleratorState().fsdp_plugin = plugin
    model = initial_model()
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR))
    assert type(model).__name__.startswith("FSDP"), f"not a fully_shard module: {type(model)}"
    if args.reduce_unused:
        model.set_reduce_scatter_unused_params(True)

    got = []
    for step in range(args.steps):
        for m in range(step * args.gas, (step + 1) * args.gas):
            x, y = batch(rank, m)
            held = m != (step + 1) * args.gas - 1
            if held:  # the user's own no_sync on the held micro-batches
                with accelerator.no_sync(model):
                    loss = torch.nn.functional.mse_loss(model(x, route_of(args.route, rank, m)).float(), y)
                    accelerator.backward(loss)  # accelerate divides by G itself
            else:
                loss = torch.nn.functional.mse_loss(model(x, route_of(args.route, rank, m)).float(), y)
                accelerator.backward(loss)  # accelerate divides by G itself
        optimizer.step()
        optimizer.zero_grad()
        got.append({n: p.full_tensor().detach().double() for n, p in model.named_parameters()})

    want = float64_steps(args, world)
    initial = {n: t.double() for n, t in initial_model().state_dict().items()}
    rtol, atol = (2e-2, 5e-3) if args.bf16 else (1e-5, 1e-6)
    bad = 0
    for step in range(args.steps):
        for name in want[step]:
            if not torch.allclose(got[step][name], want[step][name], rtol=rtol, atol=atol):
                bad += 1
                if rank == 0 and bad <= 6:
                    got_before = got[step - 1][name] if step else initial[name]
                    want_before = want[step - 1][name] if step else initial[name]
                    # SGD without clipping: the gradient a step applied is (before - after) / lr.
                    applied = ((got_before - got[step][name]) / LR).flatten().tolist()
                    wanted = ((want_before - want[step][name]) / LR).flatten().tolist()
                    print(f"step {step + 1} {name}: applied gradient got {[round(v, 4) for v in applied[-4:]]} "
                          f"want {[round(v, 4) for v in wanted[-4:]]} (last 4 elements)")
    stack = (f"FSDP2 {'bf16' if args.bf16 else 'fp32'}, {world} ranks (gloo), route {args.route}, G = {args.gas}"
             f"{' (G-1 under no_sync)' if args.gas > 1 else ''}, reduce_scatter_unused_params "
             f"{args.reduce_unused}, torch {torch.__version__}, accelerate {accelerate.__version__}")
    if rank == 0:
        print(f"{stack}: {'BUG PRESENT' if bad else 'ok'} ({bad} mismatches)")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 1 if bad else 0


if __name__ == "__main__":
    present = main()
    sys.exit(1 if present else 0)
