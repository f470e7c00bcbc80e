"""deepspeed#5104 (open PR "Remove optimizer step on initialization"): ZeRO-0 with bf16 wraps a torch optimizer in
FP16_UnfusedOptimizer, whose constructor calls ``optimizer.step()`` once on zero gradients to create the state. For
AdamW that step counts: the user's first real update runs with the bias correction of step 2, so it is 0.744·lr
instead of lr (and weight decay has been applied once before training).

Upstream only (torch, accelerate, deepspeed). Run on CPU:
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/deepspeed-5104.py
Exit 1 when the bug is present, 0 when absent. An optional argument picks the ZeRO stage (default 0; the PR says
ZeRO 1-3 stepped on initialisation too, which deepspeed 0.19.8 no longer does: `... deepspeed-5104.py 1` is the control).

What it measures: accelerate's own ``accumulate()`` loop, ZeRO-0, bf16, torch AdamW (weight_decay 0, eps 1e-12),
G = 2, one optimizer step. Adam's first update is exactly ``-lr * sign(g)`` for every element with a gradient, so
``|Δ master weight| / lr`` must be 1.0 everywhere; and the AdamW state must say step 1 after one step.
"""
import os
import sys

os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")  # before accelerate is imported

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator, PartialState  # noqa: E402
from accelerate.utils import DeepSpeedPlugin  # noqa: E402

G, BATCH, LR = 2, 2, 1e-2
STAGE = int(sys.argv[1]) if len(sys.argv) > 1 else 0


def state_steps(optimizer):
    steps = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            steps.append(None if step is None else float(step))
    return steps


def main():
    state = PartialState(backend="gloo")
    rank = state.process_index
    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": G, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": STAGE}, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**6}
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config), gradient_accumulation_steps=G)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, eps=1e-12)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = model.optimizer.optimizer  # the torch AdamW, holding the fp32 master weights (flat partitions at ZeRO 1-2)
    steps_at_prepare = state_steps(inner)
    before = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(G):
        x = torch.randn(BATCH, 8, generator=generator).to(torch.bfloat16)
        y = torch.randn(BATCH, 4, generator=generator).to(torch.bfloat16)
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x).float(), y.float())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    after = [p.detach().clone() for g in inner.param_groups for p in g["params"]]
    ratios = torch.cat([((a - b).abs() / LR).flatten() for a, b in zip(after, before)])
    moved = ratios[ratios > 0]
    steps_after = state_steps(inner)
    worst = float((moved - 1.0).abs().max())
    present = worst > 1e-3 or any(s != 1.0 for s in steps_after)
    if rank == 0:
        import accelerate
        import deepspeed

        print(f"versions: torch {torch.__version__}, accelerate {accelerate.__version__}, deepspeed {deepspeed.__version__}")
        print(f"setup: ZeRO-{STAGE}, bf16, torch AdamW(lr=1e-2, weight_decay=0, eps=1e-12), 2 ranks, G=2, one optimizer step")
        print(f"AdamW state step after prepare: expected none (no step taken), got {sorted(set(steps_at_prepare), key=str)}")
        print(f"AdamW state step after one optimizer step: expected [1.0], got {sorted(set(steps_after), key=str)}")
        print(f"first update |Δw|/lr over {moved.numel()} elements: expected 1.0000, got min {float(moved.min()):.4f} "
              f"median {float(moved.median()):.4f} max {float(moved.max()):.4f} (Adam at step 2 after a zero-gradient "
              "step 1 gives 0.1/0.19 / sqrt(0.001/0.001999) = 0.7441)")
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()
    dist.destroy_process_group()
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
