"""deepspeed#2343 (and #1186; closed: 'not supported'): ZeRO-1/2: a parameter used on some ranks only is reduced
against ANOTHER parameter's gradient.

Upstream only (torch + accelerate + deepspeed; no accumgate). A trunk and two same-shaped heads; each micro-batch
goes through one head, chosen per (rank, micro-batch). When the ranks use different heads in the same backward
(rank 0 head_a, rank 1 head_b), ZeRO-2 packs each rank's gradients into its reduction bucket in the order its hooks
fire and reduces the buckets position by position (``reduce_independent_p_g_buckets_and_remove_grads`` →
``average_tensor``): rank 0's head_a gradient is summed with rank 1's head_b gradient, and the parameters train
wrongly (stage 1 does the same at the boundary, ``reduce_gradients`` skipping parameters without ``.grad``).
DDP (``find_unused_parameters=True``) and a float64 computation agree on what the step must be: the mean over ranks
of each rank's gradient, zero where a rank did not use the parameter.

Each micro-batch is a boundary (G = 1), SGD without momentum, no clipping, fp32: the step applied to each parameter
is ``-lr × gradient``; this script compares every parameter after every step, and the engine's global grad norm,
with float64, prints expected vs got and exits 1 when they differ (0 when they agree).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/deepspeed-2343.py --stage 2
    options: --stage 0|1|2  --offload  --bf16  --route disjoint|harness|same  --steps N  --gas G

``--route disjoint``: rank r uses head r on every micro-batch (the minimal trigger); ``harness``: head_b iff
(micro-batch + rank) % 4 == 1 (accumgate's twoheads); ``same``: both ranks use head_a on even micro-batches and
head_b on odd ones (control: every rank uses the same parameters, must pass).

Exit 1 when the bug is present, 0 when absent.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    return index % 2  # "same"


def batch(rank: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_007 * rank + index)
    return torch.randn(BATCH, IN, generator=g), 4.0 * torch.randn(BATCH, OUT, generator=g)


def initial_model() -> TwoHeads:
    torch.manual_seed(0)
    return TwoHeads()


def float64_steps(args: argparse.Namespace, world: int) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """Parameters after each step and each step's pre-clip global norm: mean over ranks of each rank's gradient of
    loss / G (zero where a rank's forward did not reach a parameter), SGD."""
    model = initial_model().double()
    params, norms = [], []
    for step in range(args.steps):
        summed = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for rank in range(world):
            for m in range(step * args.gas, (step + 1) * args.gas):
                x, y = batch(rank, m)
                loss = torch.nn.functional.mse_loss(model(x.double(), route_of(args.route, rank, m)), y.double())
                names = [n for n, _ in model.named_parameters()]
                grads = torch.autograd.grad(loss / args.gas, list(model.parameters()), allow_unused=True)
                for n, g in zip(names, grads):
                    if g is not None:
                        summed[n] += g
        mean = {n: g / world for n, g in summed.items()}
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in mean.values()]))))
        with torch.no_grad():
            for n, p in model.named_parameters():
                p -= LR * mean[n]
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return params, norms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--route", choices=("disjoint", "harness", "same"), default="disjoint")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gas", type=int, default=1)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # torchrun ends rank 0 as soon as rank 1 exits 1: print before that

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # no 1-2 min shm op build
    import deepspeed
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DeepSpeedPlugin

    state = PartialState(backend="gloo")
    rank, world = state.process_index, state.num_processes
    zero: dict = {"stage": args.stage}
    config: dict = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": args.gas,
                    "gradient_clipping": 0.0, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
                    "steps_per_print": 10**9}
    if args.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        config["zero_force_ds_cpu_optimizer"] = False  # keep torch's SGD
    if args.bf16:
        config["bf16"] = {"enabled": True}
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config),
                              gradient_accumulation_steps=args.gas)
    model = initial_model()
    engine, _ = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR))

    def full_param(p: torch.nn.Parameter) -> torch.Tensor:
        return (deepspeed.utils.safe_get_full_fp32_param(p) if args.stage > 0 else p.detach()).double()

    dtype = torch.bfloat16 if args.bf16 else torch.float32  # the engine's parameters are bf16 under bf16
    got_params, got_norms = [], []
    for step in range(args.steps):
        for m in range(step * args.gas, (step + 1) * args.gas):
            x, y = batch(rank, m)
            with accelerator.accumulate(engine):
                loss = torch.nn.functional.mse_loss(engine(x.to(dtype), route_of(args.route, rank, m)).float(), y)
                accelerator.backward(loss)
        got_params.append({n: full_param(p) for n, p in engine.module.named_parameters()})
        got_norms.append(engine.get_global_grad_norm())

    want_params, want_norms = float64_steps(args, world)
    rtol, atol = (2e-2, 5e-3) if args.bf16 else (1e-5, 1e-6)
    stack = (f"ZeRO-{args.stage}{' + CPU offload' if args.offload else ''}, {'bf16' if args.bf16 else 'fp32'}, "
             f"{world} rank(s), route {args.route}, G = {args.gas}, deepspeed {deepspeed.__version__}")
    initial = {n: t.double() for n, t in initial_model().state_dict().items()}
    bad = 0
    for step, (got, want) in enumerate(zip(got_params, want_params)):
        got_before = got_params[step - 1] if step else initial
        want_before = want_params[step - 1] if step else initial
        for name in want:
            if not torch.allclose(got[name], want[name], rtol=rtol, atol=atol):
                bad += 1
                if rank == 0 and bad <= 6:
                    # SGD without clipping: the gradient a step applied is (before - after) / lr.
                    applied = ((got_before[name] - got[name]) / LR).flatten()[:4]
                    wanted = ((want_before[name] - want[name]) / LR).flatten()[:4]
                    print(f"step {step + 1} {name}: applied gradient got {[round(v, 4) for v in applied.tolist()]} "
                          f"want {[round(v, 4) for v in wanted.tolist()]}")
        if got_norms[step] is not None and abs(got_norms[step] - want_norms[step]) > atol + rtol * want_norms[step]:
            bad += 1
            if rank == 0:
                print(f"step {step + 1} engine.get_global_grad_norm(): got {got_norms[step]:.6f} "
                      f"want {want_norms[step]:.6f}")
    if rank == 0:
        print(f"{stack}: {'BUG PRESENT' if bad else 'ok'} ({bad} mismatches)")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 1 if bad else 0


if __name__ == "__main__":
    present = main()
    sys.exit(1 if present else 0)
