"""accelerate#2951 (open; also #3291, closed): under DeepSpeed, ``accelerator.backward`` runs the engine's ``step()`` at
the boundary and ``optimizer.step()`` is a no-op, so a learning rate the user sets between ``backward`` and
``optimizer.step()`` -- the place PyTorch code sets it -- is not the one the step uses: it applies one step late.

Upstream only (torch, accelerate, deepspeed). Two ranks on CPU (gloo):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/accelerate-2951.py
Exit 1 when the bug is present, 0 when absent.

What it measures: accelerate's ``accumulate()`` loop on DeepSpeed ZeRO-0, fp32, torch SGD built with lr 0.1, G = 2,
three windows; in window k the loop sets ``param_groups[0]["lr"] = LRS[k]`` after ``accelerator.backward(loss)`` and
before ``optimizer.step()``, once per optimizer step (``if accelerator.sync_gradients:``, the usual place for per-step
work). Control: ``... accelerate-2951.py every`` sets it after every micro-batch's backward instead; at G > 1 the set
after micro-batch 1 then lands before the boundary's backward, and the bug hides (it shows again at G = 1). The lr
each step really used is read from the update: Δ = -lr·g, with g the window's gradient from plain PyTorch (all ranks'
data, each micro-batch loss / G, averaged over ranks) at the parameters the step started from. PyTorch semantics:
the lr set before ``optimizer.step()`` is the one it uses.
"""
import os
import sys

os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")  # before accelerate is imported

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator, PartialState  # noqa: E402
from accelerate.utils import DeepSpeedPlugin  # noqa: E402

G, BATCH, WORLD = 2, 2, 2
INITIAL_LR, LRS = 0.1, (0.05, 0.2, 0.02)
EVERY_MICRO_BATCH = "every" in sys.argv[1:]


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def micro_batch(rank, index):
    generator = torch.Generator().manual_seed(1000 * rank + index)
    return torch.randn(BATCH, 8, generator=generator), torch.randn(BATCH, 4, generator=generator)


def window_gradient(flat_params, window):
    model = build_model().double()
    torch.nn.utils.vector_to_parameters(flat_params.double(), model.parameters())
    loss = 0.0
    for rank in range(WORLD):
        for index in range(window * G, (window + 1) * G):
            x, y = micro_batch(rank, index)
            loss = loss + torch.nn.functional.mse_loss(model(x.double()), y.double()) / G / WORLD
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def main():
    state = PartialState(backend="gloo")
    rank = state.process_index
    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": G, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": 0}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**6}
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config), gradient_accumulation_steps=G)
    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=INITIAL_LR)
    model, optimizer = accelerator.prepare(model, optimizer)

    def params():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.module.parameters())):
            return torch.cat([p.detach().double().flatten().clone() for p in model.module.parameters()])

    used = []
    for window, lr in enumerate(LRS):
        start = params()
        for index in range(window * G, (window + 1) * G):
            x, y = micro_batch(rank, index)
            with accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients or EVERY_MICRO_BATCH:
                    for group in optimizer.param_groups:  # the user's lr for this step, set before optimizer.step()
                        group["lr"] = lr
                optimizer.step()
                optimizer.zero_grad()
        g = window_gradient(start, window)
        used.append(float(-(params() - start) @ g / (g @ g)))
    present = any(abs(u - lr) > 1e-5 * lr for u, lr in zip(used, LRS))  # fp32 steps: the lr read to ~1e-7
    if rank == 0:
        import accelerate
        import deepspeed

        print(f"versions: torch {torch.__version__}, accelerate {accelerate.__version__}, deepspeed {deepspeed.__version__}")
        where = "every micro-batch" if EVERY_MICRO_BATCH else "the boundary micro-batch"
        print(f"setup: ZeRO-0, fp32, SGD built with lr {INITIAL_LR}, 2 ranks, G={G}, accumulate(); lr set on {where}, "
              "after backward, before optimizer.step()")
        for window, (want, got) in enumerate(zip(LRS, used)):
            print(f"step {window + 1}: lr the step used: expected {want:.4f} (set before optimizer.step()), got {got:.4f}")
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
