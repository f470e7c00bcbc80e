"""P9 fallbacks: where the feature cannot work, a clear error of the target's own, never a dependency's assert and
never silent wrong training; where it can, it trains as the model says. Probes change the stack for one run: an
engine without the boundary API (a DeepSpeed before 0.5.8, or a fork), and ``managed_gradient_accumulation: false``
(DeepSpeed 0.19.4+)."""
from __future__ import annotations

from dataclasses import replace

from ..compare import Deviation
from ..programs.model import Facts
from ..scenario import Scenario
from .base import SUBJECT, Evidence, Need, Property, register, subject
from .checks import oracle_deviations
from .faults import refusal_faults, training_faults

OLD_ENGINE, UNMANAGED = "old_engine", "unmanaged"
MANAGED_KEY = "managed_gradient_accumulation"
PROBED_STYLES = ("kwarg", "legacy", "auto", "set_boundary")


def _applies(scenario: Scenario, target: str) -> bool:
    """DeepSpeed MLP runs in fp32 of the probed styles, and every generated DeepSpeed program (mixed calls are where a
    fallback goes wrong: a schedule's boundary taken for the user's)."""
    return (scenario.is_deepspeed and scenario.api in PROBED_STYLES + ("program",) and scenario.precision == "fp32"
            and scenario.model == "mlp" and scenario.lr_schedule == "const")


def _needs(scenario: Scenario) -> list[Need]:
    needs = subject(scenario) + [Need(OLD_ENGINE, scenario, probe=OLD_ENGINE)]
    if scenario.api == "kwarg":
        needs.append(Need(UNMANAGED, scenario, probe=UNMANAGED))
    return needs


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith(" ")]
    ends = [line for line in lines if "Error" in line or "Exception" in line]
    return ends[-1] if ends else (lines[-1] if lines else "")


def _error_named(scenario: Scenario, role: str, evidence: Evidence, wanted: str) -> list[Deviation]:
    result = evidence.result(role)
    where = f"probe {role}"
    if result.status != "error":
        return [Deviation(scenario.id, P9.name, where, "outcome", f"{result.status}: want an error naming {wanted}")]
    last = _last_line(next(iter(result.errors.values()), ""))
    if wanted not in last or "AssertionError" in last:
        return [Deviation(scenario.id, P9.name, where, "error", f"{last!r}: want the target's own error naming "
                          f"{wanted}, never a dependency's assert")]
    return []


def _trains_right(scenario: Scenario, role: str, evidence: Evidence) -> list[Deviation]:
    result = evidence.result(role)
    if result.status == "error":
        last = _last_line(next(iter(result.errors.values()), ""))
        return [Deviation(scenario.id, P9.name, f"probe {role}", "outcome",
                          f"raised {last!r}: want training as the model says (no boundary the user gave "
                          "contradicts the engine)")]
    traces = evidence.traces(role)
    expectation = evidence.expectation(role)
    want_at = expectation.step_points
    found = [Deviation(scenario.id, P9.name, f"probe {role} · rank {t.rank}", "optimizer steps",
                       f"stepped during {[s.micro_step for s in t.steps]}, want {want_at}")
             for t in traces if [s.micro_step for s in t.steps] != want_at]
    return found + oracle_deviations(scenario, P9.name, traces, evidence.local(role), expectation, None)


def _judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    facts = Facts(**evidence.traces(SUBJECT)[0].facts)
    old = replace(facts, engine_boundary_api=False, engine_no_sync=False)
    expectation = evidence.expect(scenario, old)
    if expectation.error is not None:
        found = _error_named(scenario, OLD_ENGINE, evidence, "set_gradient_accumulation_boundary")
    else:
        found = _trains_right(scenario, OLD_ENGINE, evidence)
    if UNMANAGED in evidence.needs:
        if evidence.result(UNMANAGED).status == "error":
            found += _error_named(scenario, UNMANAGED, evidence, MANAGED_KEY)
        else:  # DeepSpeed < 0.19.4 ignores the key (versions.md): then it must simply train right
            found += _trains_right(scenario, UNMANAGED, evidence)
    return found


def _faults(scenario: Scenario, evidence: Evidence) -> list:
    """P9's own: where the target refused by name, a dependency's assert passed through instead, or training on; where
    it trained, a user's boundary silently ignored (the step moved), or a refusal."""
    found = []
    for role in (OLD_ENGINE, UNMANAGED):
        if role in evidence.needs:
            refusals = refusal_faults(scenario, evidence, role)
            if role == UNMANAGED:  # a DeepSpeed that ignores the key (< 0.19.4) may train instead: not a fault here
                refusals = [f for f in refusals if "trains on instead" not in f.name]
            found += refusals + training_faults(scenario, evidence, role)
    return found


P9 = register(Property(
    "P9", "fallbacks",
    "fallbacks: an engine without the boundary API follows its own counter and refuses only a user's boundary that "
    "contradicts it; the unmanaged mode is refused by name; never a dependency's assert, never silent wrong training",
    _applies, _needs, _judge, faults=_faults))
