"""P3 backward compatibility: code that uses none of the new API trains to the bytes the installed upstream
accelerate gives, on every accelerate version (DESIGN §3: "existing code continues to work unchanged")."""
from __future__ import annotations

from ..compare import Deviation
from ..scenario import Scenario
from .base import SUBJECT, Evidence, Need, Property, register
from .checks import same_run
from .faults import client_assertion, declared, micro_batch_dropped, rounded_differently, step_moved

UPSTREAM = "upstream"
NATIVE = "native"


def _applies(scenario: Scenario, target: str) -> bool:
    """Untouched code on any target but upstream itself (which would be compared with itself)."""
    return target != NATIVE and scenario.untouched


def _needs(scenario: Scenario) -> list[Need]:
    return [Need(SUBJECT, scenario), Need(UPSTREAM, scenario, target=NATIVE)]


def _judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    if scenario.is_client:
        return _client_judge(scenario, evidence)
    return same_run(scenario, P3.name, evidence.traces(SUBJECT), evidence.traces(UPSTREAM), "upstream accelerate")


def _client_judge(scenario: Scenario, evidence: Evidence) -> list[Deviation]:
    """A client program the suite did not write (accelerate's test_sync.py) runs through on the target as it does on
    upstream: every rank, no assertion."""
    found = []
    upstream = {t.rank: t.client_failure for t in evidence.traces(UPSTREAM)}
    for trace in evidence.traces(SUBJECT):
        if trace.client_failure:
            also = " (upstream fails it too)" if upstream.get(trace.rank) else " (upstream passes it)"
            lines = trace.client_failure.strip().splitlines()
            last = next((line for line in lines if line.startswith("AssertionError")), lines[-1])
            found.append(Deviation(scenario.id, P3.name, f"rank {trace.rank}", f"client {scenario.api}",
                                   f"{last}{also}\n{trace.client_failure}"))
    return found


P3 = register(Property(
    "P3", "backward compatibility",
    "untouched code (accumulate() loops, plain backward, the user's own no_sync, accelerate's own test_sync.py) on "
    "the target matches the installed upstream accelerate bit for bit",
    _applies, _needs, _judge, clients=True,
    faults=lambda s, e: declared(s, e, (client_assertion,) if s.is_client
                                 else (rounded_differently, micro_batch_dropped, step_moved))))
