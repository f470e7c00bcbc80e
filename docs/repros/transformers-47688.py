"""transformers#47688 (open): the Trainer asks whether the model "accepts loss kwargs" by looking for ``**kwargs`` in
``forward``'s signature; when it does, the Trainer leaves the 1/G of gradient accumulation to the model's loss (through
``num_items_in_batch``). Heads such as ``GPT2ForSequenceClassification`` take ``**kwargs`` but compute their own mean
loss and never use ``num_items_in_batch``: nobody divides by G, and the gradients are G times too large.

Upstream only (torch, transformers, accelerate). One process on CPU:
    python docs/repros/transformers-47688.py
Exit 1 when the bug is present, 0 when absent. Under DeepSpeed (ZeRO-0; the Trainer then also sends
``scale_wrt_gas=False``): ``torchrun --nproc_per_node 1 docs/repros/transformers-47688.py deepspeed``.

What it measures: a tiny random GPT2ForSequenceClassification (1 layer, no dropout), the Trainer with SGD (lr 0.1,
constant, no clipping, no weight decay), one optimizer step over the same 8 samples as G = 4 micro-batches of 2 and
as G = 1 batch of 8, against plain PyTorch (the mean cross-entropy over the 8 samples, one SGD step). The ratio is
the projection of each run's update on the PyTorch update (1.0 = right).
"""
import os
import sys
import tempfile

if "deepspeed" in sys.argv[1:]:
    os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")  # before accelerate is imported

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2Config, GPT2ForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

VOCAB, SAMPLES, LENGTH, LR = 64, 8, 6, 0.1
DEEPSPEED = "deepspeed" in sys.argv[1:]


def build_model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, num_labels=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0, pad_token_id=0)
    return GPT2ForSequenceClassification(config)


def samples():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (SAMPLES, LENGTH), generator=generator)  # no pad token: the last token is read
    labels = torch.randint(0, 2, (SAMPLES,), generator=generator)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels[i]}
            for i in range(SAMPLES)]


def flat(model):
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def trainer_update(batch_size, accumulation):
    model = build_model()
    before = flat(model)
    extra = {}
    if DEEPSPEED:  # CPU: the process group must be gloo, and the Trainer must keep it (accelerate counts 1 otherwise)
        from accelerate import PartialState
        from accelerate.state import AcceleratorState

        PartialState(backend="gloo")
        AcceleratorState._reset_state()  # a second Trainer builds its own Accelerator with its own DeepSpeed plugin
        extra = {"deepspeed": {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": accumulation,
                               "train_batch_size": batch_size * accumulation, "gradient_clipping": 0.0,
                               "zero_optimization": {"stage": 0}, "zero_allow_untested_optimizer": True,
                               "steps_per_print": 10**6, "fp16": {"enabled": False}, "bf16": {"enabled": False}},
                 "accelerator_config": {"use_configured_state": True}}
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(output_dir=output, use_cpu=not DEEPSPEED, per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=LR, optim="sgd",
                                 lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                                 save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
                                 seed=0, dataloader_pin_memory=False, **extra)
        trainer = Trainer(model=model, args=args, train_dataset=samples())
        trainer.train()
        # Whether accelerate's backward divides by G as well (transformers 5.3-5.x built the Accelerator with
        # num_steps=G, transformers#45305, which masks this bug for these heads): 1 = only the Trainer scales.
        accepts = (trainer.model_accepts_loss_kwargs, trainer.accelerator.gradient_accumulation_steps)
    return flat(model) - before, accepts


def reference_update():
    model = build_model()
    before = flat(model)
    data = samples()
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    model(**batch).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return flat(model) - before


def main():
    reference = reference_update()
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}"
          + (f", deepspeed {__import__('deepspeed').__version__} (ZeRO-0, 1 rank)" if DEEPSPEED else ""))
    print("setup: GPT2ForSequenceClassification (1 layer, random, no dropout), Trainer, SGD lr 0.1, no clipping, "
          "one optimizer step over the same 8 samples")
    present = False
    for batch_size, accumulation in ((8, 1), (2, 4)):
        update, accepts = trainer_update(batch_size, accumulation)
        ratio = float(update @ reference / (reference @ reference))
        off = float((update - reference).abs().max())
        print(f"G={accumulation} x batch {batch_size}: model_accepts_loss_kwargs={accepts[0]}, accelerator's "
              f"gradient_accumulation_steps={accepts[1]}; first update / PyTorch's: "
              f"expected 1.0000, got {ratio:.4f} (max |Δ| {off:.3g})")
        present |= abs(ratio - 1.0) > 1e-4
    print("BUG PRESENT" if present else "bug absent")
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
