"""pytorch#196996 (open; the cast of PR #160279 is not in torch 2.13): FSDP2 gradient accumulation with
``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`` holds the gradients of the micro-batches without
sync upcast to fp32; a parameter that first gets a gradient on the final, synchronised micro-batch still has a fresh
bf16 one, and ``foreach_reduce`` refuses the mixed list ("FSDP reduce-scatter expects uniform gradient dtype").

Upstream only (torch). Two ranks on CPU (gloo):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/pytorch-196996.py
Exit 1 when the bug is present, 0 when absent.

What it measures: one ``fully_shard`` root over a trunk, a head and a branch (``h + tanh(branch(h))``), SGD, G = 4
micro-batches with ``set_requires_gradient_sync(False)`` on the first three (the loop sums the micro-batch losses, no
1/G, and so does the reference). Case "every": the branch runs on every
micro-batch (control). Case "last": the branch runs only on the last micro-batch (conditional computation: an MoE
expert, an auxiliary head). Each case must step, and its update must match plain PyTorch (bf16 compute: within 2 %).
The same cases with ``reduce_dtype=bfloat16`` (what accelerate's ``mixed_precision="bf16"`` builds) are the control.
"""
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

G, BATCH, WORLD, LR = 4, 2, 2, 0.1


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.branch, self.head = torch.nn.Linear(8, 16), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, x, use_branch):
        h = torch.tanh(self.trunk(x))
        if use_branch:
            h = h + torch.tanh(self.branch(h))
        return self.head(h)


def build():
    torch.manual_seed(0)
    return Net()


def micro_batch(rank, index):
    generator = torch.Generator().manual_seed(1000 * rank + index)
    return torch.randn(BATCH, 8, generator=generator), torch.randn(BATCH, 4, generator=generator)


def uses_branch(case, index):
    return case == "every" or index == G - 1


def reference_update(case):
    model = build().double()
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    loss = 0.0
    for rank in range(WORLD):
        for index in range(G):
            x, y = micro_batch(rank, index)
            loss = loss + torch.nn.functional.mse_loss(model(x.double(), uses_branch(case, index)), y.double()) / WORLD
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return -LR * torch.cat([g.flatten() for g in grads]), start


def fsdp_update(case, reduce_dtype, rank, mesh):
    model = build()
    fully_shard(model, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    try:
        for index in range(G):
            model.set_requires_gradient_sync(index == G - 1)
            x, y = micro_batch(rank, index)
            out = model(x, uses_branch(case, index))
            torch.nn.functional.mse_loss(out.float(), y).backward()
        optimizer.step()
    except Exception as exc:  # the bug: an AssertionError inside the final backward's reduce-scatter
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:110]}"
    return torch.cat([p.full_tensor().detach().double().flatten() for p in model.parameters()]), None


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (WORLD,))
    lines, present = [], False
    for reduce_dtype in (torch.float32, torch.bfloat16):
        for case in ("every", "last"):
            want, start = reference_update(case)
            params, error = fsdp_update(case, reduce_dtype, rank, mesh)
            name = f"reduce_dtype={str(reduce_dtype).split('.')[-1]:<8} branch on {case:<5} micro-batch(es)"
            if error:
                lines.append(f"{name}: expected a step matching PyTorch, got {error}")
                present |= reduce_dtype == torch.float32
                continue
            got = params - start
            ratio = float(got @ want / (want @ want))
            rel = float((got - want).norm() / want.norm())
            lines.append(f"{name}: update / PyTorch's: expected 1.00 (within 2 %), got {ratio:.4f} (relative error "
                         f"{rel:.2%})")
            present |= rel > 0.02 and reduce_dtype == torch.float32
    if rank == 0:
        print(f"versions: torch {torch.__version__}; FSDP2 fully_shard, 2 ranks (gloo), param_dtype bfloat16, SGD, "
              f"G={G}, set_requires_gradient_sync(False) off the last micro-batch")
        print("\n".join(lines))
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
