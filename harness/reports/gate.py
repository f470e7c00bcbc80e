"""The regression gate: compare a current run with a baseline, one (scenario, property) verdict at a time, and fail
on what a CI pipeline must not let through. A verdict that passed in the baseline and is now anything else (a
failure, an error, unsupported, newly xfailed, or missing altogether) is a regression: adding an xfails line or
dropping a scenario cannot turn a red gate green. So are an unexpected pass, a known failure whose deviation
changed (the same xfail, but it now fails somewhere else), a new scenario that does not pass, and an error metric
grown beyond its tolerance band. Verdicts are matched by (accelerate and DeepSpeed versions, scenario id, property),
not by target, so a fork's run is gated against a baseline made from the reference."""
from __future__ import annotations

from dataclasses import dataclass

from ..results import Outcome, RunResults, Verdict

# A metric (worst |Δ| against the oracle) may move with reduction order; it regresses when it grows past
# both GROWTH × its baseline and an absolute floor of the precision's noise.
GROWTH = 4.0
FLOOR = {"fp32": 1e-7, "bf16": 1e-3}
NOT_PASSING = ("fail", "error", "unsupported", "xfail", "xpass")


@dataclass(frozen=True)
class Change:
    scenario: str
    prop: str
    env: str
    kind: str
    before: str
    after: str
    detail: str = ""
    regression: bool = True

    def line(self) -> str:
        """One line a person acts on: what changed, where, and the first thing to look at."""
        detail = f" — {self.detail}" if self.detail else ""
        return f"{self.kind}: {self.scenario} · {self.prop} ({self.before} → {self.after}) on {self.env}{detail}"


def _stack(outcome: Outcome) -> str:
    env = outcome.env or ""
    return env.split(" · ", 1)[1] if " · " in env else env


def _deviation_key(verdict: Verdict) -> tuple[str, str] | None:
    """Where a known failure fails: the property's first deviation's place and tensor (its numbers may move)."""
    if not verdict.deviations:
        return None
    first = verdict.deviations[0]
    return (first.get("where", ""), first.get("tensor", ""))


def _verdict_changes(was: Verdict | None, now: Verdict | None) -> list[tuple[str, str, bool]]:
    before = was.outcome if was else "absent"
    after = now.outcome if now else "absent"
    if now is None:
        return [("missing", "not in the current run", before == "pass")]
    detail = now.first_line()[:300]
    if after == "xpass":
        return [("unexpected pass", now.known or "", True)]
    if before == "pass" and after != "pass":
        kind = {"fail": "new failure", "error": "new error", "unsupported": "newly unsupported",
                "xfail": "newly xfailed"}.get(after, f"now {after}")
        return [(kind, detail, True)]
    if was is None and after in NOT_PASSING:
        return [(f"new scenario {after}", detail, True)]
    if was is not None and before in ("fail", "xfail") and after in ("fail", "xfail"):
        if _deviation_key(was) != _deviation_key(now):
            return [("changed deviation", f"was {was.first_line()[:150]!r}; now {detail[:150]!r}", True)]
    if was is not None and before in ("fail", "error", "unsupported", "xfail") and after == "pass":
        return [("fixed", "", False)]
    return []


def _metric_changes(old: Outcome, outcome: Outcome) -> list[tuple[str, str, bool]]:
    if outcome.outcome not in ("pass", "xfail") or not old.metrics:
        return []
    floor = FLOOR.get(outcome.axes.get("precision", "fp32"), 1e-7)
    found = []
    for name, value in outcome.metrics.items():
        base = old.metrics.get(name)
        if base is not None and value > max(GROWTH * base, floor):
            found.append(("metric grew", f"{name} {base:.2e} → {value:.2e} (band: ×{GROWTH:g}, floor {floor:g})", True))
    return found


def compare(baseline: RunResults, current: RunResults) -> list[Change]:
    before = {(_stack(o), o.scenario): o for o in baseline.outcomes}
    changes: list[Change] = []
    for outcome in current.outcomes:
        key = (_stack(outcome), outcome.scenario)
        old = before.pop(key, None)
        codes = list(outcome.properties) + [c for c in (old.properties if old else {}) if c not in outcome.properties]
        for code in codes:
            was = old.properties.get(code) if old else None
            now = outcome.properties.get(code)
            for kind, detail, regression in _verdict_changes(was, now):
                changes.append(Change(outcome.scenario, code, key[0], kind, was.outcome if was else "absent",
                                      now.outcome if now else "absent", detail, regression))
        if old is not None:
            for kind, detail, regression in _metric_changes(old, outcome):
                changes.append(Change(outcome.scenario, "metrics", key[0], kind, old.outcome, outcome.outcome,
                                      detail, regression))
    for (env, scenario), old in before.items():
        for code, was in old.properties.items():
            changes.append(Change(scenario, code, env, "missing", was.outcome, "absent", "scenario not in the current run",
                                  was.outcome == "pass"))
    return changes


def table(changes: list[Change]) -> str:
    if not changes:
        return "no change against the baseline"
    rows = [("", "change", "scenario · property", "stack", "before → after", "detail")]
    for c in sorted(changes, key=lambda c: (not c.regression, c.kind, c.scenario, c.prop)):
        rows.append(("✘" if c.regression else "·", c.kind, f"{c.scenario} · {c.prop}", c.env,
                     f"{c.before} → {c.after}", c.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5] for r in rows)


def explain(changes: list[Change]) -> str:
    """Each regression in one line."""
    lines = [c.line() for c in sorted(changes, key=lambda c: (c.scenario, c.prop)) if c.regression]
    return "\n".join(lines) if lines else "no regression"
