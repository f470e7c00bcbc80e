"""The regression gate: compare a current run with a baseline and fail on what a CI pipeline must not let
through: a new failure or error, a scenario newly unsupported, an error metric grown beyond its tolerance
band, an unexpected pass. Scenarios are matched by (accelerate and DeepSpeed versions, scenario id), not by
target, so a fork's run is gated against a baseline made from the reference."""
from __future__ import annotations

from dataclasses import dataclass

from ..results import Outcome, RunResults

# A metric (worst |Δ| against the oracle) may move with reduction order; it regresses when it grows past
# both GROWTH × its baseline and an absolute floor of the precision's noise.
GROWTH = 4.0
FLOOR = {"fp32": 1e-7, "bf16": 1e-3}
FAILING = ("fail", "error")


@dataclass(frozen=True)
class Change:
    scenario: str
    env: str
    kind: str
    before: str
    after: str
    detail: str = ""
    regression: bool = True


def _key(outcome: Outcome) -> tuple[str, str]:
    """(stack without the target, scenario id): a vendor's fork is gated against the reference's baseline."""
    env = outcome.env or ""
    stack = env.split(" · ", 1)[1] if " · " in env else env
    return (stack, outcome.scenario)


def _verdicts(old: Outcome | None, outcome: Outcome) -> list[tuple[str, str, bool]]:
    """(kind, detail, is_regression) for one scenario seen before as ``old`` (None: new) and now."""
    was, now = (old.outcome if old else "absent"), outcome.outcome
    found: list[tuple[str, str, bool]] = []
    if now == "xpass":
        found.append(("unexpected pass", outcome.reason or "", True))
    elif now in FAILING and was not in FAILING:
        first = outcome.deviations[0]["message"].splitlines()[0] if outcome.deviations else ""
        found.append(("new failure" if now == "fail" else "new error", first, True))
    elif now == "unsupported" and was != "unsupported":
        found.append(("newly unsupported", outcome.reason or "", True))
    elif old is not None and now == "pass" and was in FAILING + ("unsupported", "xfail"):
        found.append(("fixed", "", False))
    if old is not None and now in ("pass", "xfail") and old.metrics:
        floor = FLOOR.get(outcome.axes.get("precision", "fp32"), 1e-7)
        for name, value in outcome.metrics.items():
            base = old.metrics.get(name)
            if base is not None and value > max(GROWTH * base, floor):
                found.append(("metric grew", f"{name} {base:.2e} → {value:.2e} (band: ×{GROWTH:g}, floor {floor:g})", True))
    return found


def compare(baseline: RunResults, current: RunResults) -> list[Change]:
    before = {_key(o): o for o in baseline.outcomes}
    changes: list[Change] = []
    for outcome in current.outcomes:
        key = _key(outcome)
        old = before.pop(key, None)
        was = old.outcome if old else "absent"
        for kind, detail, regression in _verdicts(old, outcome):
            changes.append(Change(outcome.scenario, key[0], kind, was, outcome.outcome, detail, regression))
    for (env, scenario), old in before.items():
        changes.append(Change(scenario, env, "missing", old.outcome, "absent", "not in the current run", False))
    return changes


def table(changes: list[Change]) -> str:
    if not changes:
        return "no change against the baseline"
    rows = [("", "change", "scenario", "stack", "before → after", "detail")]
    for c in sorted(changes, key=lambda c: (not c.regression, c.kind, c.scenario)):
        rows.append(("✘" if c.regression else "·", c.kind, c.scenario, c.env, f"{c.before} → {c.after}", c.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)
