"""Seeded models built in code (never downloaded), identical in every rank and in the oracle.

``mlp``: a two-layer perceptron with an MSE loss. ``gpt2``: a tiny randomly initialised transformers GPT-2
with tied input/output embeddings (what ZeRO-3 must gather correctly) and a token-level causal-LM loss on
padded, variable-length sequences. ``twomodels``: the same perceptron as two models, each prepared with its own
optimizer (a GAN's generator and discriminator, an actor and a critic): what "each optimizer steps once per
boundary" is about. ``twoheads``: a shared trunk and two heads, each micro-batch routed to one head by (rank,
micro-batch) — conditional computation, where ranks hold gradients for different parameters (a mixture of experts,
multi-task heads). ``gpt2cls``: the tiny GPT-2 under transformers' sequence-classification head (two classes, the
last non-padding token read), whose own loss is the mean cross-entropy over its samples — the head whose ``forward``
takes ``**kwargs`` but never reads ``num_items_in_batch`` (transformers#47688). ``lastbranch``: the perceptron with a
residual branch that only every fourth micro-batch (the last of each window of 4) takes, on every rank — a parameter
that first gets a gradient on a window's last micro-batch (an auxiliary loss, an MoE expert; pytorch#196996). Dropout
is off: every rank and the oracle compute the same function.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

IN_FEATURES, HIDDEN, OUT_FEATURES = 8, 16, 4
GPT2_VOCAB, GPT2_POSITIONS, GPT2_EMBED, GPT2_LAYERS, GPT2_HEADS = 64, 16, 16, 1, 2
GPT2_CLASSES = 2
GPT2_PAD_ID = 0  # the padding token (data.PAD_ID): the classification head reads the last token before it


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(IN_FEATURES, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, OUT_FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class TwoModels(torch.nn.Module):
    """The oracle's view of the two-model scenario: ``second(tanh(first(x)))``. The harness prepares each part as a
    model of its own with an optimizer of its own (``PARTS``); the oracle trains them as one function, clipping and
    measuring each part's gradients apart, as ``optimizer_step_and_zero_grad(optimizer, model)`` does per model."""

    PARTS = ("first", "second")

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(IN_FEATURES, HIDDEN)
        self.second = torch.nn.Linear(HIDDEN, OUT_FEATURES)

    @staticmethod
    def compose(first: Any, second: Any, x: torch.Tensor) -> torch.Tensor:
        return second(torch.tanh(first(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose(self.first, self.second, x)


class TwoHeads(torch.nn.Module):
    """A trunk and two heads; ``route`` (0 or 1, one per micro-batch) picks the head. A head a rank did not route to
    gets no gradient on that rank: DDP needs ``find_unused_parameters=True``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = torch.nn.Linear(IN_FEATURES, HIDDEN)
        self.head_a = torch.nn.Linear(HIDDEN, OUT_FEATURES)
        self.head_b = torch.nn.Linear(HIDDEN, OUT_FEATURES)

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.trunk(x))
        return self.head_b(hidden) if int(route) == 1 else self.head_a(hidden)


class LastBranch(torch.nn.Module):
    """``fc2(h + branch(h))`` on the micro-batches whose ``route`` is 1, ``fc2(h)`` on the others (h = tanh(fc1(x)))."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(IN_FEATURES, HIDDEN)
        self.branch = torch.nn.Linear(HIDDEN, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, OUT_FEATURES)

    def forward(self, x: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.fc1(x))
        if int(route) == 1:
            hidden = hidden + self.branch(hidden)
        return self.fc2(hidden)


class ModelParts:
    """Prepared parts of a model the user prepares piece by piece (``TwoModels``): called as the whole, iterated as
    the parts (each with its optimizer, context and clipping). Its parameters are named ``<part>.<name>``, the names
    the oracle's whole module gives them."""

    def __init__(self, compose: Any, parts: dict[str, Any]) -> None:
        self.compose, self.parts = compose, parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose(*self.parts.values(), x)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        for part in self.parts.values():
            yield from part.parameters()


def parts_of(name: str) -> tuple[str, ...]:
    """The parts a model is prepared as, each with its own optimizer (one part: the model itself)."""
    return TwoModels.PARTS if name == "twomodels" else ("",)


def _tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # Token ids inside the tiny vocabulary and the loss named: transformers otherwise warns on every build.
    config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=GPT2_POSITIONS, n_embd=GPT2_EMBED, n_layer=GPT2_LAYERS,
                        n_head=GPT2_HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=True, bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # read from the model, not its config, by transformers 5
    return model


def _tiny_gpt2_classifier() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=GPT2_POSITIONS, n_embd=GPT2_EMBED, n_layer=GPT2_LAYERS,
                        n_head=GPT2_HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                        num_labels=GPT2_CLASSES, pad_token_id=GPT2_PAD_ID, bos_token_id=GPT2_VOCAB - 1,
                        eos_token_id=GPT2_VOCAB - 1)
    return GPT2ForSequenceClassification(config)


def build_model(name: str, seed: int) -> torch.nn.Module:
    """Same seed, same bytes: the fork of the RNG keeps the caller's global RNG stream untouched."""
    builders = {"mlp": MLP, "gpt2": _tiny_gpt2, "twomodels": TwoModels, "twoheads": TwoHeads,
                "gpt2cls": _tiny_gpt2_classifier, "lastbranch": LastBranch}
    if name not in builders:
        raise ValueError(f"model {name!r}: expected one of {', '.join(builders)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builders[name]()


@contextlib.contextmanager
def _float64_default(model: Any) -> Iterator[None]:
    """transformers 4.4x builds GPT-2's causal mask with torch.full(..., finfo(float64).min) in the default dtype,
    which overflows float32: a float64 model's forward runs with float64 as the default dtype."""
    default = torch.get_default_dtype()
    if next(model.parameters()).dtype == torch.float64:
        torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def forward_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The micro-batch loss a user would backpropagate: MSE for the MLP, token-mean cross-entropy for GPT-2, the
    classification head's own mean cross-entropy over the micro-batch's samples for ``gpt2cls``."""
    if "route" in batch:
        return torch.nn.functional.mse_loss(model(batch["inputs"], batch["route"]), batch["targets"])
    if "inputs" in batch:
        return torch.nn.functional.mse_loss(model(batch["inputs"]), batch["targets"])
    with _float64_default(model):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def forward_token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """GPT-2's causal-LM cross-entropy summed over the counted tokens (the user divides by the window's count)."""
    with _float64_default(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1, :].float() if logits.dtype == torch.bfloat16 else logits[:, :-1, :]
    return torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]),
                                             batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
