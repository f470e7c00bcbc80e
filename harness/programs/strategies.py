"""Hypothesis strategies that build only valid programs (DESIGN §3's model decides validity as they are drawn, so
nothing is thrown away by ``assume``) and shrink toward the plainest code: fewer micro-batches, no override, no
context, a plain backward, nothing after it.

A program is drawn micro-batch by micro-batch: the candidates are every combination of the four choices, ordered
plainest first (Hypothesis shrinks ``sampled_from`` toward the front), kept when the model accepts the program with
it (a step on gradients some rank never all-reduced, or DeepSpeed stepping inside its own ``no_sync()``, trains
wrongly on upstream too and is never generated).
"""
from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import strategies as st

from ..scenario import PROGRAM, Scenario
from .model import BACKEND_FACTS, Facts, InvalidProgram, expect
from .program import AFTERS, CONTEXTS, NO_CALL, MicroBatch, Program

EXPLORED_BACKENDS = tuple(BACKEND_FACTS)
MAX_MICRO_BATCHES = 8

# Plainest first: Hypothesis shrinks a sampled_from toward its first element.
CANDIDATES = [MicroBatch(set_boundary=b, context=c, backward=k, after=a)
              for b, c, k, a in itertools.product((NO_CALL, None, True, False), CONTEXTS, (None, True, False), AFTERS)]


def _facts(backend: str, accelerate_forwards_boundary: bool) -> Facts:
    return replace(BACKEND_FACTS[backend], accelerate_forwards_boundary=accelerate_forwards_boundary)


def _accepts(prefix: list[MicroBatch], candidate: MicroBatch, facts: Facts, g: int, clip: float | None,
             dataloader: bool, total: int) -> bool:
    micro = prefix + [candidate]
    # With a DataLoader the last micro-batch of the whole program ends it; a prefix is checked without that end.
    program = Program(tuple(micro), dataloader=dataloader and len(micro) == total)
    try:
        expect(program, facts, g, clip)
    except InvalidProgram:
        return False
    return True


@st.composite
def programs(draw: st.DrawFn, backend: str, accelerate_forwards_boundary: bool = True,
             max_micro_batches: int = MAX_MICRO_BATCHES) -> Scenario:
    """A generated program on ``backend`` as a scenario (api ``program``, schedule ``g<G>``)."""
    facts = _facts(backend, accelerate_forwards_boundary)
    g = draw(st.integers(1, 4), label="configured G")
    clip = draw(st.sampled_from((1.0, None)), label="clip")
    optimizer = draw(st.sampled_from(("sgd", "adamw")), label="optimizer")
    precision = draw(st.sampled_from(("fp32", "bf16")), label="precision")
    user_scaled = facts.deepspeed and draw(st.booleans(), label="the user divides by G (scale_wrt_gas=False)")
    total = draw(st.integers(1, max_micro_batches), label="micro-batches")
    dataloader = draw(st.booleans(), label="from a prepared DataLoader")
    micro: list[MicroBatch] = []
    for _ in range(total):
        valid = [c for c in CANDIDATES if _accepts(micro, c, facts, g, clip, dataloader, total)]
        micro.append(draw(st.sampled_from(valid), label=f"micro-batch {len(micro)}"))
    return Scenario(backend, PROGRAM, f"g{g}", optimizer=optimizer, precision=precision, clip=clip,
                    world_size=facts.world_size, loss_norm="user" if user_scaled else "mean",
                    generated=Program(tuple(micro), dataloader=dataloader))
