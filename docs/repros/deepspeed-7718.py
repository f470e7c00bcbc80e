"""deepspeed#7718 (open; also accelerate#3877, trl#4540, trl#4631): ZeRO-2 gradient accumulation computes wrong gradients
from deepspeed 0.17.6 (the thread: lower grad norms, higher loss); the threads say 0.18.3 fixed it (per-tensor gradient
scaling, #7665).

Upstream only (torch, deepspeed). Two ranks on CPU (gloo):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/deepspeed-7718.py
Exit 1 when the bug is present, 0 when absent.

What it measures: the raw engine's own loop (``engine(x)``, ``engine.backward``, ``engine.step``) at ZeRO-2, and
ZeRO-1 as the control, fp32, torch SGD (lr 0.1), no clipping, G = 4, two windows. Each window's update and the
engine's reported grad norm are compared with plain PyTorch from the parameters the window started from (all ranks'
data, each micro-batch loss / G, averaged over ranks): the update ratio is its projection on PyTorch's (1.0 = right),
and the share of each micro-batch in the update is fitted by least squares on the per-micro-batch gradients (all 1 =
right).
"""
import os
import sys

import torch
import torch.distributed as dist

G, BATCH, WORLD, LR, WINDOWS = 4, 2, 2, 0.1, 2


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def micro_batch(rank, index):
    generator = torch.Generator().manual_seed(1000 * rank + index)
    return torch.randn(BATCH, 8, generator=generator), torch.randn(BATCH, 4, generator=generator)


def gradient(flat_params, indices):
    model = build_model().double()
    torch.nn.utils.vector_to_parameters(flat_params, model.parameters())
    loss = 0.0
    for rank in range(WORLD):
        for index in indices:
            x, y = micro_batch(rank, index)
            loss = loss + torch.nn.functional.mse_loss(model(x.double()), y.double()) / G / WORLD
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def run(stage, rank):
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": G, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**6}
    model = build_model()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)

    def params():
        return torch.cat([p.detach().double().flatten().clone() for p in engine.module.parameters()])

    rows = []
    for window in range(WINDOWS):
        start = params()
        for index in range(window * G, (window + 1) * G):
            x, y = micro_batch(rank, index)
            engine.backward(torch.nn.functional.mse_loss(engine(x), y))
            engine.step()
        indices = range(window * G, (window + 1) * G)
        want = gradient(start, indices)
        got = -(params() - start) / LR
        norm = engine.get_global_grad_norm()
        # Which micro-batches the step applied: got = sum_i c_i g_i (least squares; c_i = 1 for all is right).
        per_micro_batch = torch.stack([gradient(start, [i]) for i in indices], dim=1)
        shares = torch.linalg.lstsq(per_micro_batch, got.unsqueeze(1)).solution.flatten().tolist()
        rows.append((float(got @ want / (want @ want)), float((got - want).abs().max() * LR),
                     None if norm is None else float(norm) / float(want.norm()), shares))
    engine.destroy()
    return rows


def main():
    os.environ.setdefault("LOCAL_SIZE", "2")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    table = {stage: run(stage, rank) for stage in (1, 2)}
    present = any(abs(row[0] - 1.0) > 1e-4 for row in table[2])
    if rank == 0:
        import deepspeed

        print(f"versions: torch {torch.__version__}, deepspeed {deepspeed.__version__}; raw engine, 2 ranks (gloo), fp32, "
              f"SGD lr {LR}, G={G}")
        for stage, rows in table.items():
            for window, (ratio, off, norm, shares) in enumerate(rows):
                norm_text = "none" if norm is None else f"{norm:.4f}"
                print(f"ZeRO-{stage}{' (control)' if stage == 1 else ''} step {window + 1}: update / PyTorch's: expected "
                      f"1.0000, got {ratio:.4f} (max |Δ| {off:.3g}); grad norm / PyTorch's: expected 1.0000, got "
                      f"{norm_text}; share of each micro-batch applied: expected [1, 1, 1, 1], got "
                      f"[{', '.join(f'{c:.3f}' for c in shares)}]")
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()  # the process group stays up: the engines' __del__ at exit still talks to it
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
