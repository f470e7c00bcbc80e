"""The regression gate: compare a current run with a baseline, one (scenario, property) verdict at a time, and fail
on what a CI pipeline must not let through:

- a verdict that passed and is now anything else (a failure, an error, unsupported, newly xfailed, or missing): adding
  an xfails line or dropping a scenario cannot turn a red gate green;
- any verdict that vanished (a scenario or a property no longer judged), whatever it was;
- a failure that became an error or an error that became a failure (what the run measured, before any xfails line);
- a known failure whose signature changed (other quantities or steps, another first deviation) or whose deviation
  count grew, or that now deviates beyond its xfails line (``fail`` with the line named);
- a margin (worst |Δ| ÷ tolerance) that grew past ``MARGIN_GROWTH`` × its baseline and above ``MARGIN_FLOOR``;
  a margin missing on either side is not compared, and the gate says how many;
- an unexpected pass, a new scenario that does not pass, an error metric grown past its band.

Verdicts are matched by (accelerate and DeepSpeed versions, scenario id, property), not by target, so a fork's run is
gated against a baseline made from the reference. A baseline is a results file, slimmed (``slim``): one line per
scenario with what the gate compares, so that it can be committed and its diffs read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..results import SCHEMA, SCHEMA_VERSION, Outcome, RunResults, Verdict

# A metric (worst |Δ| against the oracle) may move with reduction order; it regresses when it grows past
# both GROWTH × its baseline and an absolute floor of the precision's noise.
GROWTH = 4.0
FLOOR = {"fp32": 1e-7, "bf16": 1e-3}
# A margin is |Δ| ÷ tolerance (1 = at the tolerance). Runs are deterministic on one machine, but another CPU may sum
# in another order: a margin regresses when it more than doubles *and* passes a quarter of its tolerance, so noise
# far below the tolerance never fails the gate while a pass drifting toward its limit does (docs/decisions.md).
MARGIN_GROWTH = 2.0
MARGIN_FLOOR = 0.25
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


@dataclass(frozen=True)
class MarginCoverage:
    """How many verdicts present on both sides had their margins compared, and why the others were not."""

    compared: int = 0
    missing_in_baseline: int = 0
    missing_in_current: int = 0

    def line(self) -> str:
        total = self.compared + self.missing_in_baseline + self.missing_in_current
        if not total:
            return "margins: no verdict present in both runs"
        text = f"margins: {self.compared} of {total} verdicts compared (band ×{MARGIN_GROWTH:g} above {MARGIN_FLOOR:g})"
        if self.missing_in_baseline or self.missing_in_current:
            text += (f"; not compared: {self.missing_in_baseline} without a margin in the baseline, "
                     f"{self.missing_in_current} without one in the current run")
        return text


def _stack(outcome: Outcome) -> str:
    env = outcome.env or ""
    return env.split(" · ", 1)[1] if " · " in env else env


def _raw(verdict: Verdict) -> str:
    return verdict.raw or {"xfail": "fail", "xpass": "pass"}.get(verdict.outcome, verdict.outcome)


def _first_place(verdict: Verdict) -> tuple[str, str] | None:
    """Where a failure starts: its first deviation's place and tensor (the numbers may move)."""
    if not verdict.deviations:
        return None
    first = verdict.deviations[0]
    return (first.get("where", ""), first.get("tensor", ""))


def _margin(verdict: Verdict) -> float | None:
    value = getattr(verdict, "margin", None)  # recorded by the property's judge where it compared with a tolerance
    return float(value) if isinstance(value, (int, float)) else None


def _known_failure_changes(was: Verdict, now: Verdict) -> list[tuple[str, str, bool]]:
    """Both runs failed the same (scenario, property) the same way round (both known, or both not): did the failure
    itself change?"""
    found = []
    if was.signature and now.signature and set(was.signature) != set(now.signature):
        gone, new = sorted(set(was.signature) - set(now.signature)), sorted(set(now.signature) - set(was.signature))
        found.append(("known failure changed", f"signature {', '.join(new) or '—'} new, {', '.join(gone) or '—'} gone", True))
    elif _first_place(was) != _first_place(now):
        found.append(("known failure changed", f"was {was.first_line()[:150]!r}; now {now.first_line()[:150]!r}", True))
    if now.deviation_count > was.deviation_count:
        found.append(("deviation count grew", f"{was.deviation_count} → {now.deviation_count} deviations", True))
    return found


def _verdict_changes(was: Verdict | None, now: Verdict | None) -> list[tuple[str, str, bool]]:
    before = was.outcome if was else "absent"
    after = now.outcome if now else "absent"
    if now is None:
        return [("missing", "not judged in the current run", True)]
    detail = now.first_line()[:300]
    if after == "xpass":
        return [("unexpected pass", now.known or "", True)]
    if was is None:
        return [(f"new scenario {after}", detail, True)] if after in NOT_PASSING else []
    if before == "pass" and after != "pass":
        kind = {"fail": "new failure", "error": "new error", "unsupported": "newly unsupported",
                "xfail": "newly xfailed"}.get(after, f"now {after}")
        return [(kind, detail, True)]
    raw_before, raw_after = _raw(was), _raw(now)
    if {raw_before, raw_after} == {"fail", "error"}:
        return [(f"{raw_before} → {raw_after}", detail, True)]
    if before == "xfail" and after == "fail" and now.known:
        return [("known failure changed", detail, True)]
    if before in ("fail", "xfail") and after in ("fail", "xfail"):
        return _known_failure_changes(was, now)
    if before in ("fail", "error", "unsupported", "xfail") and after == "pass":
        return [("fixed", "", False)]
    return []


def _margin_change(was: Verdict, now: Verdict) -> tuple[str, str, bool] | None:
    old, new = _margin(was), _margin(now)
    if old is None or new is None or now.outcome not in ("pass", "xfail"):
        return None
    if new > max(MARGIN_GROWTH * old, MARGIN_FLOOR):
        return ("margin grew", f"worst |Δ|/tolerance {old:.3g} → {new:.3g} (band: ×{MARGIN_GROWTH:g}, floor "
                f"{MARGIN_FLOOR:g})", True)
    return None


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
            found = _verdict_changes(was, now)
            if was is not None and now is not None:
                margin = _margin_change(was, now)
                found += [margin] if margin else []
            for kind, detail, regression in found:
                changes.append(Change(outcome.scenario, code, key[0], kind, was.outcome if was else "absent",
                                      now.outcome if now else "absent", detail, regression))
        if old is not None:
            for kind, detail, regression in _metric_changes(old, outcome):
                changes.append(Change(outcome.scenario, "metrics", key[0], kind, old.outcome, outcome.outcome,
                                      detail, regression))
    for (env, scenario), old in before.items():
        for code, was in old.properties.items():
            changes.append(Change(scenario, code, env, "missing", was.outcome, "absent", "scenario not in the current run"))
    return changes


def coverage(baseline: RunResults, current: RunResults) -> str:
    """How much of the current run the baseline covers: a verdict it lacks is judged only as pass or not (a new
    scenario that does not pass fails the gate), never compared; said, not left silent."""
    before = {(_stack(o), o.scenario): o for o in baseline.outcomes}
    total = new = 0
    for outcome in current.outcomes:
        old = before.get((_stack(outcome), outcome.scenario))
        for code in outcome.properties:
            total += 1
            new += old is None or code not in old.properties
    return (f"compared {total - new} of {total} verdicts with the baseline"
            + (f"; {new} not in it (new: they fail the gate only if they do not pass)" if new else ""))


def margin_coverage(baseline: RunResults, current: RunResults) -> MarginCoverage:
    before = {(_stack(o), o.scenario): o for o in baseline.outcomes}
    compared = missing_before = missing_now = 0
    for outcome in current.outcomes:
        old = before.get((_stack(outcome), outcome.scenario))
        for code, now in outcome.properties.items():
            was = old.properties.get(code) if old else None
            if was is None:
                continue
            if _margin(was) is None:
                missing_before += 1
            elif _margin(now) is None:
                missing_now += 1
            else:
                compared += 1
    return MarginCoverage(compared, missing_before, missing_now)


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


# ------------------------------------------------------------------------------------------------ the baseline
_KEPT_VERDICT = ("code", "name", "outcome", "raw", "deviation_count", "signature", "margin", "known", "reason")


def _slim_verdict(verdict: Verdict) -> dict[str, Any]:
    data = {key: getattr(verdict, key, None) for key in _KEPT_VERDICT}
    data = {k: v for k, v in data.items() if v not in (None, {}, 0) or k in ("code", "name", "outcome")}
    for key in ("known", "reason"):
        if key in data:
            data[key] = str(data[key])[:200]
    if verdict.deviations:  # the first deviation only: where the failure starts (the gate compares its place)
        first = verdict.deviations[0]
        data["deviations"] = [{k: str(first.get(k, ""))[:300] for k in ("prop", "where", "tensor", "message")}]
    return data


def slim(results: RunResults) -> str:
    """A committed baseline: the results schema with what the gate compares and nothing else (no curves, traces or
    tracebacks), one scenario per line, sorted, so a diff names the verdicts that changed."""
    rows = []
    for outcome in sorted(results.outcomes, key=lambda o: (o.env or "", o.scenario)):
        row = {"scenario": outcome.scenario, "outcome": outcome.outcome, "env": outcome.env,
               "axes": {k: v for k, v in outcome.axes.items() if k in ("backend", "api", "precision")},
               "metrics": outcome.metrics,
               "properties": {code: _slim_verdict(v) for code, v in outcome.properties.items()}}
        rows.append(json.dumps(row, ensure_ascii=False, separators=(",", ":"), sort_keys=True))
    head = {"schema": SCHEMA, "version": SCHEMA_VERSION, "created": results.created, "target": results.target,
            "selection": results.selection, "environment": {"baseline_of": sorted(results.environment.get("merged", {}))},
            "wall_seconds": round(results.wall_seconds, 1)}
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    return text + ',\n "scenarios": [\n' + ",\n".join(rows) + "\n ]\n}\n"
