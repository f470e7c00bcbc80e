"""transformers#38837 (fixed by PR #39659, in 4.55.0): for a model that does not take loss kwargs, the Trainer divides
each micro-batch loss by ``gradient_accumulation_steps`` itself, and before the fix it did so in the last window of an
epoch too, when that window holds fewer micro-batches: its update was len/G of the right one.

Upstream only (torch, transformers, accelerate). One process on CPU:
    python docs/repros/transformers-38837.py
Exit 1 when the bug is present, 0 when absent. Under DeepSpeed (ZeRO-0; the Trainer sends ``scale_wrt_gas=False``
and does the scaling itself): ``torchrun --nproc_per_node 1 docs/repros/transformers-38837.py deepspeed``.

What it measures: a small MLP whose ``forward(x, labels)`` has no ``**kwargs`` (so the Trainer scales by G), 20
samples, batch 2, G = 4: one epoch is 10 micro-batches, windows 4, 4, 2. SGD (lr 0.1, constant, no clipping). Every
micro-batch the Trainer feeds is recorded, and each optimizer step is compared with plain PyTorch from the parameters
the step started from: the mean loss over the window's micro-batches, one SGD step. The ratio is the projection of the
Trainer's update on PyTorch's (1.0 = right; the bug gives 2/4 = 0.5 on the last window).
"""
import os
import sys
import tempfile

if "deepspeed" in sys.argv[1:]:
    os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")  # before accelerate is imported

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

SAMPLES, BATCH, G, LR = 20, 2, 4, 0.1
DEEPSPEED = "deepspeed" in sys.argv[1:]


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x, labels=None):  # no **kwargs: the Trainer divides by G itself
        out = self.fc2(torch.tanh(self.fc1(x)))
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Samples(torch.utils.data.Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(SAMPLES, 8, generator=generator), torch.randn(SAMPLES, 4, generator=generator)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def flat(model):
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


class Recorder(TrainerCallback):
    def __init__(self, log):
        self.log = log

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.log["params"].append(flat(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.log["params"].append(flat(model))
        self.log["windows"].append(self.log["pending"])
        self.log["pending"] = []


class RecordingTrainer(Trainer):
    def training_step(self, model, inputs, *args, **kwargs):
        self.record["pending"].append({k: v.detach().clone() for k, v in inputs.items()})
        return super().training_step(model, inputs, *args, **kwargs)


def reference_update(start, window):
    model = Regressor().double()
    torch.nn.utils.vector_to_parameters(start, model.parameters())
    loss = sum(model(b["x"].double(), b["labels"].double())["loss"] for b in window) / len(window)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return -LR * torch.cat([g.flatten() for g in grads])


def main():
    torch.manual_seed(0)
    model = Regressor()
    log = {"params": [], "windows": [], "pending": []}
    extra = {}
    if DEEPSPEED:  # CPU: the process group must be gloo, and the Trainer must keep it (accelerate counts 1 otherwise)
        from accelerate import PartialState

        PartialState(backend="gloo")
        extra = {"deepspeed": {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": G,
                               "train_batch_size": BATCH * G, "gradient_clipping": 0.0, "zero_optimization": {"stage": 0},
                               "zero_allow_untested_optimizer": True, "steps_per_print": 10**6,
                               "fp16": {"enabled": False}, "bf16": {"enabled": False}},
                 "accelerator_config": {"use_configured_state": True}}
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(output_dir=output, use_cpu=not DEEPSPEED, per_device_train_batch_size=BATCH,
                                 gradient_accumulation_steps=G, num_train_epochs=1, learning_rate=LR, optim="sgd",
                                 lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                                 save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
                                 seed=0, dataloader_pin_memory=False, **extra)
        trainer = RecordingTrainer(model=model, args=args, train_dataset=Samples(), callbacks=[Recorder(log)])
        trainer.record = log
        trainer.train()
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}"
          + (f", deepspeed {__import__('deepspeed').__version__} (ZeRO-0, 1 rank)" if DEEPSPEED else ""))
    print(f"setup: MLP without **kwargs (model_accepts_loss_kwargs={trainer.model_accepts_loss_kwargs}), Trainer, "
          f"SGD lr {LR}, {SAMPLES} samples, batch {BATCH}, G={G}, one epoch")
    windows = [len(w) for w in log["windows"]]
    print(f"windows (micro-batches per optimizer step): expected [4, 4, 2], got {windows}")
    present = windows != [4, 4, 2]
    for k, window in enumerate(log["windows"]):
        want = reference_update(log["params"][k], window)
        got = log["params"][k + 1] - log["params"][k]
        ratio = float(got @ want / (want @ want))
        print(f"step {k + 1} ({len(window)} micro-batches): update / PyTorch's mean-loss update: expected 1.0000, "
              f"got {ratio:.4f} (max |Δ| {float((got - want).abs().max()):.3g})")
        present |= abs(ratio - 1.0) > 1e-4
    print("BUG PRESENT" if present else "bug absent")
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
