"""Outcomes of a run and the files that carry them: ``results.json`` (versioned schema), ``junit.xml``,
``summary.md``. Every write is atomic (temp file in the same directory, then rename), so an interrupted
write leaves the previous file intact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = "accumgate.results"
# 2: one verdict per (scenario, property) under "properties"; the scenario's outcome is the worst of them.
SCHEMA_VERSION = 2
OUTCOMES = ("pass", "fail", "error", "unsupported", "xfail", "xpass")
BAD_OUTCOMES = ("fail", "error", "unsupported", "xpass")
SEVERITY = {"error": 5, "fail": 4, "xpass": 3, "unsupported": 2, "xfail": 1, "pass": 0}


class ResultsError(ValueError):
    """A results file that cannot be read as this schema; the message says which file and why."""


@dataclass
class Verdict:
    """One property on one scenario: the unit every report, xfails line and gate decision is about."""

    code: str  # "P2"
    name: str  # "P2 backend≡oracle"
    outcome: str
    deviations: list[dict[str, str]] = field(default_factory=list)  # first few: prop, where, tensor, message
    deviation_count: int = 0
    reason: str | None = None  # why the run gave no evidence (error, unsupported)
    known: str | None = None  # the xfails line that judged it (xfail, xpass, or a nonstrict pass)
    raw: str | None = None  # what the run measured before any xfails line judged it (pass, fail, error, unsupported)
    # What the run showed, by quantity (and step): {"param@2": 3, "loss": 1}, or {"error": 1}; every deviation
    # counted, not only the ones kept. An xfails line excuses a signature; the gate compares them (xfails.signature).
    signature: dict[str, int] = field(default_factory=dict)
    # Worst |Δ| ÷ tolerance over every tolerance-bound comparison the verdict made, passes included (0.0: everything
    # compared was exactly equal; None: nothing tolerance-bound was compared).
    margin: float | None = None
    # [where, margin] per location compared ("step 2 of 4"), in order, the worst over tensors and ranks there.
    margins: list[list] = field(default_factory=list)
    # The synthetic faults the property declared for this scenario, and those the re-judging of the recorded runs caught
    # (None: results written before verdicts recorded them; reports say "proof —" rather than "none declared").
    faults: list[str] | None = None
    proven: list[str] | None = None
    notes: list[str] = field(default_factory=list)  # what was not compared, and the named fact that says why

    @property
    def bad(self) -> bool:
        return self.outcome in BAD_OUTCOMES

    def first_line(self) -> str:
        known = f" · xfails {self.known}" if self.known else ""
        if self.deviations:
            return self.deviations[0]["message"].replace("\n", " ") + known
        return (self.reason or "") + known


@dataclass
class Outcome:
    scenario: str
    outcome: str  # the worst of its properties' outcomes
    seconds: float = 0.0
    axes: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Verdict] = field(default_factory=dict)  # code -> verdict
    metrics: dict[str, float] = field(default_factory=dict)  # worst errors against the oracle, per quantity
    errors: dict[str, str] = field(default_factory=dict)  # rank -> traceback (the scenario's own run)
    reason: str | None = None  # unsupported / xfail reason of the worst property
    warnings: list[str] = field(default_factory=list)
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    env: str | None = None  # which stack produced it, in merged files (versions and target)
    program: str | None = None  # a generated program, as the Python it stands for

    @property
    def bad(self) -> bool:
        return self.outcome in BAD_OUTCOMES

    @property
    def deviations(self) -> list[dict[str, str]]:
        """Every property's first deviations, worst property first (what summaries and pages show)."""
        ordered = sorted(self.properties.values(), key=lambda v: -SEVERITY[v.outcome])
        return [d for verdict in ordered for d in verdict.deviations]

    @property
    def deviation_count(self) -> int:
        return sum(v.deviation_count for v in self.properties.values())

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["properties"] = {code: dataclasses.asdict(v) for code, v in self.properties.items()}
        return data

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> "Outcome":
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in item.items() if k in names}
        data["properties"] = {code: Verdict(**v) for code, v in item.get("properties", {}).items()}
        return cls(**data)


def worst(outcomes: list[str]) -> str:
    return max(outcomes, key=lambda o: SEVERITY[o]) if outcomes else "pass"


@dataclass
class RunResults:
    target: str
    outcomes: list[Outcome]
    environment: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    wall_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {name: 0 for name in OUTCOMES}
        for outcome in self.outcomes:
            counts[outcome.outcome] += 1
        return counts

    def property_counts(self) -> dict[str, int]:
        """Outcomes of every (scenario, property) verdict."""
        counts = {name: 0 for name in OUTCOMES}
        for outcome in self.outcomes:
            for verdict in outcome.properties.values():
                counts[verdict.outcome] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": SCHEMA_VERSION, "created": self.created, "target": self.target,
            "selection": self.selection, "environment": self.environment, "wall_seconds": self.wall_seconds,
            "counts": self.counts(), "property_counts": self.property_counts(), "warnings": self.warnings,
            "scenarios": [o.to_json() for o in self.outcomes],
        }




def environment_label(results: "RunResults") -> str:
    """Names the stack a run came from, e.g. ``reference · accelerate 1.15.0 · deepspeed 0.19.8``."""
    caps = results.environment.get("capabilities", {})
    return f"{results.target} · accelerate {caps.get('accelerate')} · deepspeed {caps.get('deepspeed')}"


def environment(target: str | None = None) -> dict[str, Any]:
    """The installed stack as the harness reads it, and what the target says of itself where it says anything (a
    ``capabilities()`` function in the target's module): reached through the target string, never imported."""
    from .stack import capabilities
    from .targets import target_capabilities

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "capabilities": capabilities()}
    if target is not None:
        env["target_capabilities"] = target_capabilities(target)
    return env


# ------------------------------------------------------------------------------------------------ writing
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; reports are for everyone the umask allows
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def junit_xml(results: RunResults) -> str:
    """JUnit XML as common CI readers expect it: one testsuite, a testcase per scenario, failure/error/skipped."""
    counts = results.counts()
    suite = ET.Element("testsuite", name=f"accumgate[{results.target}]", tests=str(len(results.outcomes)),
                       failures=str(counts["fail"] + counts["xpass"] + counts["unsupported"]),
                       errors=str(counts["error"]), skipped=str(counts["xfail"]),
                       time=f"{results.wall_seconds:.3f}", timestamp=results.created)
    for outcome in results.outcomes:
        case = ET.SubElement(suite, "testcase", classname=f"accumgate.{outcome.axes.get('backend', 'scenario')}",
                             name=outcome.scenario, time=f"{outcome.seconds:.3f}")
        ET.SubElement(ET.SubElement(case, "properties"), "property", name="verdicts",
                      value=" ".join(f"{code}={v.outcome}" for code, v in outcome.properties.items()))
        if outcome.outcome == "fail":
            text = "\n\n".join(d["message"] for d in outcome.deviations)
            ET.SubElement(case, "failure", message=_first_line(text), type="deviation").text = text
        elif outcome.outcome == "xpass":
            ET.SubElement(case, "failure", message=f"unexpected pass (xfail: {outcome.reason})", type="xpass")
        elif outcome.outcome == "unsupported":
            ET.SubElement(case, "failure", message=f"unsupported: {outcome.reason}", type="unsupported")
        elif outcome.outcome == "error":
            text = "\n".join(f"--- rank {rank}\n{tb}" for rank, tb in sorted(outcome.errors.items()))
            ET.SubElement(case, "error", message=_first_line(text.strip().splitlines()[-1] if text else "error"),
                          type="error").text = text
        elif outcome.outcome == "xfail":
            ET.SubElement(case, "skipped", message=f"xfail: {outcome.reason}")
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def summary_md(results: RunResults) -> str:
    counts = results.counts()
    verdicts = results.property_counts()
    lines = [f"# accumgate run · target `{results.target}`", "",
             f"{len(results.outcomes)} scenarios in {results.wall_seconds:.1f} s: "
             + ", ".join(f"{n} {name}" for name, n in counts.items() if n),
             f"{sum(verdicts.values())} (scenario, property) verdicts: "
             + ", ".join(f"{n} {name}" for name, n in verdicts.items() if n), ""]
    caps = results.environment.get("capabilities", {})
    if caps:
        lines += [f"torch {caps.get('torch')} · accelerate {caps.get('accelerate')} · deepspeed {caps.get('deepspeed')}", ""]
    bad = [(o, v) for o in results.outcomes for v in o.properties.values() if v.bad]
    if bad:
        lines += ["| scenario | property | outcome | first deviation / reason |", "|---|---|---|---|"]
        for o, v in bad:
            detail = v.first_line() or _first_line("\n".join(o.errors.values()).strip().splitlines()[-1]
                                                   if o.errors else "")
            lines.append(f"| `{o.scenario}` | {v.code} | {v.outcome} | {detail.replace('|', '/')} |")
    else:
        lines.append("Every scenario passed or failed as expected.")
    for warning in results.warnings:
        lines.append(f"\n> warning: {warning}")
    return "\n".join(lines) + "\n"


def write_all(results: RunResults, report_dir: Path) -> None:
    write_atomic(report_dir / "results.json", json.dumps(results.to_json(), indent=1, sort_keys=False) + "\n")
    write_atomic(report_dir / "junit.xml", junit_xml(results))
    write_atomic(report_dir / "summary.md", summary_md(results))


def check_writable(report_dir: Path) -> None:
    """Fail before running anything when the report directory cannot be written (usage error)."""
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=report_dir, prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ResultsError(f"--report-dir {str(report_dir)!r}: not writable ({exc.strerror or exc})") from exc


# ------------------------------------------------------------------------------------------------ reading
def load(path: str | Path) -> RunResults:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not an accumgate results file (schema {data.get('schema') if isinstance(data, dict) else None!r})")
    if data.get("version") != SCHEMA_VERSION:
        raise ResultsError(f"{path}: schema version {data.get('version')!r}, this accumgate reads {SCHEMA_VERSION}")
    try:
        outcomes = [Outcome.from_json(item) for item in data["scenarios"]]
        for o in outcomes:
            for found in [o.outcome] + [v.outcome for v in o.properties.values()]:
                if found not in OUTCOMES:
                    raise ValueError(f"scenario {o.scenario}: unknown outcome {found!r}")
        return RunResults(target=data["target"], outcomes=outcomes, environment=data.get("environment", {}),
                          selection=data.get("selection", {}), created=data.get("created", ""),
                          wall_seconds=float(data.get("wall_seconds", 0.0)), warnings=data.get("warnings", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{path}: malformed results ({exc})") from exc
