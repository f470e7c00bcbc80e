"""Conditional computation on FSDP2 (``twoheads``): the harness asks FSDP2 to reduce parameters a rank did not use, as
it asks DDP to find them, so that what it judges is accumulation and not FSDP2's SPMD assumption.

Without the opt-in FSDP2 reduce-scatters head_a of one rank against head_b of the other (pytorch#158719,
docs/repros/pytorch-158719.py), and these scenarios fail P2 and P8; with it, a head no rank used in a window
gets zeros and AdamW steps it (decay), which the oracle must then expect too (``backends.steps_parameters_no_rank_used``).
"""
from __future__ import annotations

import pytest

from harness.runner import Runner, WorldPool
from harness.scenario import Scenario

pytestmark = [pytest.mark.world, pytest.mark.harness]

SCENARIOS = [
    # Every micro-batch reduces: micro-batch 0 routes rank 0 to head_a and rank 1 to head_b (mixed without the opt-in);
    # micro-batches 2 and 3 route both ranks to head_a, so head_b gets zeros there and AdamW steps it (the oracle's part).
    Scenario("fsdp", "kwarg", "every1", optimizer="adamw", model="twoheads"),
    # The user's own no_sync: every window's union of heads agrees across ranks, but the P8 probe micro-batch routes
    # rank 0 to head_a and rank 1 to head_b at a reducing backward (the anomaly the ci profile showed).
    Scenario("fsdp", "ddp_native", "forced4264", precision="bf16", clip=None, lr_schedule="warmup", model="twoheads"),
]


@pytest.fixture(scope="module")
def pool():
    pool = WorldPool()
    yield pool
    pool.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_fsdp2_trains_conditional_computation_as_the_oracle_says(pool, scenario: Scenario) -> None:
    outcome = Runner("reference", pool=pool).outcome(scenario)
    verdicts = {code: verdict.outcome for code, verdict in outcome.properties.items()}
    assert {"P8", "P2" if scenario.is_uniform else "P5"} <= set(verdicts), verdicts
    assert outcome.outcome == "pass", {code: verdict.first_line() for code, verdict in outcome.properties.items()
                                       if verdict.outcome != "pass"}
