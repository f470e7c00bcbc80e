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
SCHEMA_VERSION = 1
OUTCOMES = ("pass", "fail", "error", "unsupported", "xfail", "xpass")
BAD_OUTCOMES = ("fail", "error", "unsupported", "xpass")


class ResultsError(ValueError):
    """A results file that cannot be read as this schema; the message says which file and why."""


@dataclass
class Outcome:
    scenario: str
    outcome: str
    seconds: float = 0.0
    axes: dict[str, Any] = field(default_factory=dict)
    properties: list[str] = field(default_factory=list)  # checked
    deviations: list[dict[str, str]] = field(default_factory=list)  # first few, as messages
    deviation_count: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # worst errors against the oracle, per quantity
    errors: dict[str, str] = field(default_factory=dict)  # rank -> traceback
    reason: str | None = None  # unsupported / xfail reason
    warnings: list[str] = field(default_factory=list)
    curves: dict[str, list[float | None]] = field(default_factory=dict)
    env: str | None = None  # which stack produced it, in merged files (versions and target)

    @property
    def bad(self) -> bool:
        return self.outcome in BAD_OUTCOMES


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

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": SCHEMA_VERSION, "created": self.created, "target": self.target,
            "selection": self.selection, "environment": self.environment, "wall_seconds": self.wall_seconds,
            "counts": self.counts(), "warnings": self.warnings,
            "scenarios": [dataclasses.asdict(o) for o in self.outcomes],
        }


SEVERITY = {"error": 5, "fail": 4, "xpass": 3, "unsupported": 2, "xfail": 1, "pass": 0}


def environment_label(results: "RunResults") -> str:
    """Names the stack a run came from, e.g. ``reference · accelerate 1.15.0 · deepspeed 0.19.8``."""
    caps = results.environment.get("capabilities", {})
    return f"{results.target} · accelerate {caps.get('accelerate')} · deepspeed {caps.get('deepspeed')}"


def environment() -> dict[str, Any]:
    from reference_impl.compat import capabilities

    return {"python": platform.python_version(), "platform": platform.platform(), "capabilities": capabilities()}


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
    lines = [f"# accumgate run · target `{results.target}`", "",
             f"{len(results.outcomes)} scenarios in {results.wall_seconds:.1f} s: "
             + ", ".join(f"{n} {name}" for name, n in counts.items() if n), ""]
    caps = results.environment.get("capabilities", {})
    if caps:
        lines += [f"torch {caps.get('torch')} · accelerate {caps.get('accelerate')} · deepspeed {caps.get('deepspeed')}", ""]
    bad = [o for o in results.outcomes if o.bad]
    if bad:
        lines += ["| scenario | outcome | first deviation / reason |", "|---|---|---|"]
        for o in bad:
            detail = o.deviations[0]["message"] if o.deviations else (o.reason or _first_line(
                "\n".join(o.errors.values()).strip().splitlines()[-1] if o.errors else ""))
            lines.append(f"| `{o.scenario}` | {o.outcome} | {detail.replace('|', '/').replace(chr(10), ' ')} |")
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
        names = {f.name for f in dataclasses.fields(Outcome)}
        outcomes = [Outcome(**{k: v for k, v in item.items() if k in names}) for item in data["scenarios"]]
        for o in outcomes:
            if o.outcome not in OUTCOMES:
                raise ValueError(f"scenario {o.scenario}: unknown outcome {o.outcome!r}")
        return RunResults(target=data["target"], outcomes=outcomes, environment=data.get("environment", {}),
                          selection=data.get("selection", {}), created=data.get("created", ""),
                          wall_seconds=float(data.get("wall_seconds", 0.0)), warnings=data.get("warnings", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{path}: malformed results ({exc})") from exc
