"""deepspeed#6554 (open PR "Improve consistency of zero_grad"): a ``zero_grad()`` called inside an accumulation window
does something different at each ZeRO stage. ZeRO-1/2's optimizer clears .grad and its accumulated partitions,
ZeRO-3's clears .grad and resets ``micro_step_id`` (whether the next reduction overwrites or adds), the engine's own
``zero_grad`` clears .grad only. None of them warns.

Upstream only (torch, deepspeed). Two ranks on CPU (gloo):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/deepspeed-6554.py
Exit 1 when the bug is present (the stages disagree for the same call, or a later window trains wrong), 0 when absent.

What it measures: the raw engine's own loop (``engine(x)``, ``engine.backward``, ``engine.step``) at ZeRO 0-3, fp32,
torch SGD, G = 4, two windows; after micro-batch 2 of window 1 the loop calls ``engine.zero_grad()`` or
``engine.optimizer.zero_grad()``. Each window's update is compared with plain PyTorch (all ranks' data, each
micro-batch loss / G, averaged over ranks): Δ = -lr·(c·g₁₂ + g₃₄), where g₁₂ is the gradient of micro-batches 1-2
(before the zero_grad) and g₃₄ that of 3-4. c = 0 is PyTorch's meaning of zero_grad (they are discarded), c = 1 the
PR's proposal (a zero_grad off the boundary is ignored, with a warning). Window 2 has no zero_grad: it must be c = 1.
"""
import os
import sys

import torch
import torch.distributed as dist

G, BATCH, WORLD, LR = 4, 2, 2, 0.1
CALLS = ("engine.zero_grad()", "engine.optimizer.zero_grad()")


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


def fit(update, early, late):
    """c and the relative residual of -update/lr = c·early + late (least squares)."""
    rest = -update / LR - late
    c = float(rest @ early / (early @ early))
    residual = float((rest - c * early).norm() / (-update / LR).norm())
    return c, residual


def run(stage, call, rank):
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": G, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**6}
    model = build_model()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)

    def params():
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            return torch.cat([p.detach().double().flatten().clone() for p in engine.module.parameters()])

    results = []
    for window in range(2):
        start = params()
        first = window * G
        for index in range(first, first + G):
            x, y = micro_batch(rank, index)
            engine.backward(torch.nn.functional.mse_loss(engine(x), y))
            engine.step()
            if window == 0 and index == first + 1:
                (engine.zero_grad if call == CALLS[0] else engine.optimizer.zero_grad)()
        early, late = gradient(start, range(first, first + 2)), gradient(start, range(first + 2, first + G))
        results.append(fit(params() - start, early, late))
    steps = engine.global_steps
    engine.destroy()
    return results, steps


def main():
    os.environ.setdefault("LOCAL_SIZE", "2")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    table = {(stage, call): run(stage, call, rank) for stage in range(4) for call in CALLS}
    present = False
    for call in CALLS:
        kept = {round(table[(stage, call)][0][0][0], 4) for stage in range(4)}
        present |= len(kept) > 1  # the same call means different things at different stages
    for windows, steps in table.values():
        (_, r1), (c2, r2) = windows
        present |= r1 > 1e-4 or abs(c2 - 1.0) > 1e-4 or r2 > 1e-4 or steps != 2
    if rank == 0:
        import deepspeed

        print(f"versions: torch {torch.__version__}, deepspeed {deepspeed.__version__}; 2 ranks (gloo), fp32, SGD, G={G}")
        for (stage, call), (windows, steps) in table.items():
            (c1, r1), (c2, r2) = windows
            print(f"ZeRO-{stage} {call:<30} after micro-batch 2: share of micro-batches 1-2 kept c = {c1:+.4f} "
                  f"(residual {r1:.1e}); next window c = {c2:+.4f} (expected +1.0000, residual {r2:.1e}); "
                  f"engine steps {steps} (expected 2)")
        print("expected: one meaning per call at every stage (c = 0, PyTorch's, or c = 1, the PR's), later windows "
              "untouched")
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()  # the process group stays up: the engines' __del__ at exit still talks to it
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
