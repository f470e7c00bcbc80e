"""Numbers reports keep besides verdicts: the worst errors against the oracle (watched by the gate even when within
tolerance), the curves people would rather look at than read, the batch-split drift. Measures, never judges."""
from __future__ import annotations

from typing import Sequence

from .oracle import OracleTrace
from .trace import Trace


def oracle_errors(traces: Sequence[Trace], local: OracleTrace) -> dict[str, float]:
    """Worst absolute error per quantity against the teacher-forced oracle (the step from the run's own weights)."""
    worst = {"loss_max_abs": 0.0, "grad_max_abs": 0.0, "param_max_abs": 0.0}
    for trace in traces:
        for got, want in zip(trace.losses, local.losses[trace.rank] if trace.rank < len(local.losses) else []):
            worst["loss_max_abs"] = max(worst["loss_max_abs"], abs(got - want))
        for step, want_step in zip(trace.steps, local.steps):
            pairs = [("grad", step.grads or {}, want_step.grads), ("param", step.params, want_step.params or {})]
            for quantity, got_tensors, want_tensors in pairs:
                for name, got in got_tensors.items():
                    if name in want_tensors and got.shape == want_tensors[name].shape:
                        err = float((got.double() - want_tensors[name]).abs().max())
                        worst[f"{quantity}_max_abs"] = max(worst[f"{quantity}_max_abs"], err)
    return worst


def curves(traces: Sequence[Trace], free: OracleTrace) -> dict[str, list[float | None]]:
    """What reports plot: rank 0's losses and step norms beside the free-running oracle's."""
    trace = traces[0]
    returned = [trace.returned[i] for i in sorted(trace.returned) if trace.returned[i] is not None]
    engine = [s.engine_grad_norm for s in trace.steps]
    return {
        "loss": list(trace.losses),
        "oracle_loss": list(free.losses[0]) if free.losses else [],
        "grad_norm": returned or engine,
        "oracle_grad_norm": [s.pre_clip_norm for s in free.steps],
    }
