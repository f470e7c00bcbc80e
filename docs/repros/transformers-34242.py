"""transformers#34242 (fixed by PR #34373 behind ``average_tokens_across_devices``, default True from 4.54 by PR
#39395): with several ranks, the Trainer normalised each rank's causal-LM loss by that rank's own token count, then
DDP averaged the ranks: a per-rank token mean, not the token mean of the global batch. A rank with few tokens weighs as
much as one with many.

Upstream only (torch, transformers, accelerate). Two ranks on CPU (gloo):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 docs/repros/transformers-34242.py
Exit 1 when the bug is present with the Trainer's default arguments, 0 when absent.

What it measures: a tiny random GPT-2 (1 layer, no dropout), one optimizer step, SGD (lr 0.1, no clipping), batch 2
per rank, G = 1, a sequential sampler: rank 0 gets two rows with 3 real tokens (padded to 8), rank 1 two rows of 8.
Label position 0 is -100 in every row: never a target after the causal shift, so the token count is the same whether
the Trainer counts before or after the shift (transformers#46204 is a separate bug). Every input the Trainer feeds
is recorded on every rank; the reference is plain PyTorch: the cross-entropy summed over all counted tokens of both
ranks divided by their number, one SGD step. It also prints how far the per-rank mean (what the bug computes) is.
"""
import dataclasses
import sys
import tempfile

import torch
import torch.distributed as dist
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

VOCAB, LENGTH, LR = 64, 8, 0.1
SHORT, LONG = 3, 8


def build_model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=VOCAB - 1,
                        eos_token_id=VOCAB - 1)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    return model


def samples():
    generator = torch.Generator().manual_seed(1)
    rows = []
    for real in (SHORT, SHORT, LONG, LONG):  # sequential: rows 0-1 to rank 0, rows 2-3 to rank 1
        ids = torch.randint(0, VOCAB - 1, (LENGTH,), generator=generator)
        mask = (torch.arange(LENGTH) < real).long()
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        labels[0] = -100
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


def flat(model):
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def token_loss_sum(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100,
                                             reduction="sum"), int(labels.ne(-100).sum())


def expected_updates(per_rank_batches):
    """(global token mean, mean over ranks of each rank's token mean): one SGD step from the same start."""
    updates = []
    for per_rank in (False, True):
        model = build_model()
        before = flat(model)
        sums = [token_loss_sum(model, b) for b in per_rank_batches]
        if per_rank:
            loss = sum(s / n for s, n in sums) / len(sums)
        else:
            loss = sum(s for s, _ in sums) / sum(n for _, n in sums)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
        updates.append(flat(model) - before)
    return updates


class RecordingTrainer(Trainer):
    def training_step(self, model, inputs, *args, **kwargs):
        self.fed.append({k: v.detach().clone().cpu() for k, v in inputs.items()})
        return super().training_step(model, inputs, *args, **kwargs)

    def _get_train_sampler(self, *args, **kwargs):  # transformers < 5.x: no train_sampling_strategy argument
        return torch.utils.data.SequentialSampler(self.train_dataset)


def run(**extra):
    model = build_model()
    before = flat(model)
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in fields:
        extra["train_sampling_strategy"] = "sequential"
    with tempfile.TemporaryDirectory() as output:
        args = TrainingArguments(output_dir=output, use_cpu=True, per_device_train_batch_size=2,
                                 gradient_accumulation_steps=1, max_steps=1, learning_rate=LR, optim="sgd",
                                 lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                                 save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True,
                                 seed=0, dataloader_pin_memory=False, **extra)
        trainer = RecordingTrainer(model=model, args=args, train_dataset=samples())
        trainer.fed = []
        trainer.train()
    fed = [None] * dist.get_world_size()
    dist.all_gather_object(fed, trainer.fed)
    batches = [b for rank_batches in fed for b in rank_batches]
    return flat(model) - before, batches, trainer.args.average_tokens_across_devices


def main():
    present = False
    lines = []
    for label, extra in (("default arguments", {}), ("average_tokens_across_devices=False", {
            "average_tokens_across_devices": False}), ("average_tokens_across_devices=True", {
            "average_tokens_across_devices": True})):
        update, batches, setting = run(**extra)
        global_mean, per_rank_mean = expected_updates(batches)
        ratio = float(update @ global_mean / (global_mean @ global_mean))
        off = float((update - global_mean).abs().max())
        off_rank = float((update - per_rank_mean).abs().max())
        tokens = [int(b["labels"][:, 1:].ne(-100).sum()) for b in batches]
        lines.append(f"{label} (average_tokens_across_devices={setting}): tokens per rank {tokens}; update / global "
                     f"token mean's: expected 1.0000, got {ratio:.4f}; max |Δ| vs global mean {off:.3g}, vs per-rank "
                     f"mean {off_rank:.3g}")
        if label == "default arguments":
            present = off > 1e-6 * float(global_mean.abs().max()) + 1e-7
    if dist.get_rank() == 0:
        print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, 2 ranks (gloo)")
        print("setup: tiny GPT-2, Trainer, SGD lr 0.1, batch 2 per rank, G=1, one optimizer step, unequal tokens")
        print("\n".join(lines))
        print("BUG PRESENT" if present else "bug absent")
    dist.barrier()
    sys.exit(1 if present else 0)


if __name__ == "__main__":
    main()
