"""P7 communication, measured: gradient reductions counted as the process group ran them, and (DDP) whether the
ranks' local gradients agree after each backward, against what the model of DESIGN §3 says the backend promises."""
from __future__ import annotations

from ..compare import Deviation
from ..scenario import Scenario
from .base import Evidence, Property, register, subject
from .checks import lengths
from .faults import declared, extra_reduction, missing_reduction

GRADIENT_COLLECTIVES = ("all_reduce", "reduce_scatter", "reduce", "allreduce")


def gradient_collectives(counts: dict[str, int]) -> int:
    return sum(n for kind, n in counts.items() if kind in GRADIENT_COLLECTIVES)


def applies(scenario: Scenario, target: str = "") -> bool:
    """Where a backend promises when it reduces: DDP (its reducer runs at backward iff sync was on at forward) and
    DeepSpeed ZeRO 0/1 (only at the boundary). ZeRO 2/3 reduce into partitions every micro-batch by design."""
    return scenario.world_size > 1 and scenario.backend in ("ddp", "fsdp", "ds0", "ds1")


def _judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    traces = evidence.traces()
    expectation = evidence.expectation()
    want = [mb.reduces for mb in expectation.micro_batches]
    name = P7.name
    found: list[Deviation] = []
    for trace in traces:
        rank = f"rank {trace.rank}"
        found += lengths(scenario, name, rank, "collective counts per micro-batch", len(trace.collectives), len(want))
        for index, (counts, promised) in enumerate(zip(trace.collectives, want)):
            if promised is None:
                continue
            reductions = gradient_collectives(counts)
            where = f"{rank} · micro-batch {index}"
            if promised and not reductions:
                found.append(Deviation(scenario.id, name, f"{where} (reduces)", "collectives",
                                       f"no gradient reduction ran ({counts or 'none'})"))
            elif not promised and reductions:
                found.append(Deviation(scenario.id, name, f"{where} (holds back)", "collectives",
                                       f"{reductions} gradient reduction(s) where none may run: {counts}"))
    if scenario.backend == "ddp":
        found += _digests(scenario, traces, want)
    return found


def _digests(scenario: Scenario, traces, want) -> list[Deviation]:
    """Ranks train on different data, so their local gradients agree after a backward only if it all-reduced."""
    first, found = traces[0], []
    for trace in traces[1:]:
        found += lengths(scenario, P7.name, f"rank {trace.rank}", "gradient digests", len(trace.grad_digests), len(want))
        for index, (mine, theirs, promised) in enumerate(zip(trace.grad_digests, first.grad_digests, want)):
            if promised is None:
                continue
            synced = mine == theirs
            if promised and not synced:
                found.append(Deviation(scenario.id, P7.name, f"micro-batch {index} (reduces)", "gradients",
                                       f"rank {trace.rank} Σgrad {mine!r} ≠ rank {first.rank} {theirs!r}: not all-reduced"))
            elif not promised and synced:
                found.append(Deviation(scenario.id, P7.name, f"micro-batch {index} (holds back)", "gradients",
                                       f"ranks hold identical gradients (Σ {mine!r}): an all-reduce ran"))
    return found


P7 = register(Property(
    "P7", "communication",
    "communication: no gradient all-reduce on non-final micro-batches where the backend promises it, one at every "
    "boundary",
    applies, subject, _judge, count_collectives=True,
    faults=lambda s, e: declared(s, e, (extra_reduction, missing_reduction))))
