"""Known-bug replay: run the catalogue's scenarios on the installed versions and say, per bug, whether an affected
version shows the bug where the catalogue says it must and whether a fixed version passes.

The catalogue is data shipped with the package (``harness/known_bugs/catalogue.toml``); this module only reads it,
decides each bug's role for the installed versions, runs through the ordinary ``Runner`` (no xfails: the raw outcome
is the point) and turns outcomes into verdicts. ``replay.json`` files from many envs merge into one table: bug →
affected → fixed. A bug may name its signature (``P2:param``): then an affected version reproduces it only where the
deviations lie inside it, as the xfails line that excuses it says.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .results import write_atomic
from .scenario import Scenario
from .xfails import SHIPPED, installed_versions, parse, requirements_met

CATALOGUE = SHIPPED / "catalogue.toml"


def default_catalogue() -> Path:
    """The catalogue shipped inside the package (the same file in a checkout and in an installed wheel)."""
    return CATALOGUE
SCHEMA = "accumgate.replay"
# Verdicts: what a row says. The first two are the catalogue holding; the rest need a person.
GOOD_VERDICTS = ("reproduced", "fixed", "not reproducible here", "fixed; other fail", "fixed; other error")
# "reproduced beyond its signature": the bug shows, and more than its xfails line excuses (the line must grow).


class CatalogueError(ValueError):
    """A malformed catalogue; the message names the file and the bug."""


@dataclass(frozen=True)
class KnownBug:
    id: str
    title: str
    affected: tuple[str, ...]
    fixed: tuple[str, ...]
    fixed_in: str
    target: str
    expect: str
    scenarios: tuple[Scenario, ...]
    reproducible: bool = True
    why_not: str = ""
    seeds: int = 1  # an intermittent bug is run under this many seeds: reproduced if any shows it
    seeds_when_fixed: int = 1  # on a fixed version: a pass of the race this many times says "fixed" (cheaper)
    signature: str = ""  # "P2:param": what the bug makes deviate (xfails grammar); empty: any deviation of `expect`
    repro: str = ""  # a standalone upstream-only script that shows it (repository path), for its thread
    status: str = "fixed"  # "open" when no release fixes it (then `fixed` is empty and no version is "fixed")

    @property
    def code(self) -> str:
        """The one property a replay judges: the one the bug must show, or, for a crash, the subject's P4 (any
        property needs the run; P4 asks for nothing else)."""
        return "P4" if self.expect.startswith("error:") else self.expect.split()[0]

    def seeds_for(self, role: str) -> int:
        return self.seeds if role == "affected" else min(self.seeds, self.seeds_when_fixed)

    def role(self, versions: Mapping[str, str | None]) -> str:
        """``affected``, ``fixed`` or ``neither`` for these installed versions."""
        if requirements_met(self.affected, versions):
            return "affected"
        if self.fixed and requirements_met(self.fixed, versions):
            return "fixed"
        return "neither"

    def signature_items(self) -> list:
        """The signature as xfails items (empty: any deviation of the expected property)."""
        if not self.signature:
            return []
        return list(parse(f"* {self.signature} [*] {self.id}", f"catalogue {self.id}")[0].items)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(";") if part.strip())


def load(path: str | Path | None = None) -> list[KnownBug]:
    from packaging.requirements import InvalidRequirement, Requirement

    path = Path(path) if path is not None else default_catalogue()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{path}: {exc}") from exc
    bugs = []
    for number, entry in enumerate(data.get("bug", []), start=1):
        name = entry.get("id", f"bug {number}")
        try:
            for key in ("affected", "fixed"):
                for text in _split(entry[key]):
                    Requirement(text)
            status = entry.get("status", "fixed")
            if status not in ("fixed", "open") or (status == "open") != (not _split(entry["fixed"])):
                raise ValueError(f"status {status!r} with fixed {entry['fixed']!r}: an open bug has no fixed versions "
                                 "(fixed = \"\"), a fixed one names them")
            scenarios = tuple(Scenario(**{"world_size": 1 if axes.get("backend") == "single" else 2} | axes)
                              for axes in entry["scenarios"])
            bugs.append(KnownBug(
                id=entry["id"], title=entry["title"], affected=_split(entry["affected"]), fixed=_split(entry["fixed"]),
                fixed_in=entry["fixed_in"], target=entry["target"], expect=entry["expect"], scenarios=scenarios,
                reproducible=entry.get("reproducible", True), why_not=entry.get("why_not", ""),
                seeds=int(entry.get("seeds", 1)), seeds_when_fixed=int(entry.get("seeds_when_fixed", 10)),
                signature=entry.get("signature", ""), repro=entry.get("repro", ""), status=status))
            bugs[-1].signature_items()  # a malformed signature is the catalogue's error, said now
        except KeyError as exc:
            raise CatalogueError(f"{path}: {name}: missing key {exc}") from exc
        except (InvalidRequirement, TypeError, ValueError) as exc:
            raise CatalogueError(f"{path}: {name}: {exc}") from exc
    return bugs


@dataclass
class ReplayRow:
    bug: str
    scenario: str
    target: str
    role: str
    outcome: str
    shows: str  # the properties that deviated, or the error's last line
    verdict: str
    versions: dict[str, str | None] = field(default_factory=dict)


def shows_expected(expect: str, outcome: Any, items: list | None = None) -> bool:
    """Whether an outcome (``results.Outcome``) shows the bug the way the catalogue says it must: the property fails,
    and where the bug names its signature (``items``), every deviation lies inside it."""
    if expect.startswith("error:"):
        text = expect.removeprefix("error:").strip()
        return outcome.outcome == "error" and any(text in tb for tb in outcome.errors.values())
    code = expect.split()[0]
    failing = [v for v in outcome.properties.values() if v.code == code and v.raw == "fail"]
    if not items:
        return bool(failing)
    return any(v.signature and all(any(i.covers(code, key, v.reason) for i in items) for key in v.signature)
               for v in failing)


def what_it_shows(outcome: Any) -> str:
    if outcome.outcome == "error":
        # The traceback's last line (the exception), not the rank's printed output that follows it.
        text = next(iter(outcome.errors.values()), "").split("\n--- what the rank printed")[0]
        last = text.strip().splitlines()
        return last[-1][:160] if last else "error"
    if outcome.outcome == "fail":
        return ", ".join(f"{v.name} ({', '.join(sorted(v.signature))})" if v.signature else v.name
                         for v in outcome.properties.values() if v.raw == "fail")
    return outcome.reason or ""


def verdict(bug: KnownBug, role: str, outcome: Any) -> str:
    """On an affected version the bug must show as the catalogue says; on a fixed version it must not show.
    A fixed version failing some *other* way says so ("fixed; other fail"): the conformance run reports that
    failure under its own name, and it does not make the bug unfixed."""
    items = bug.signature_items()
    if role == "affected":
        if not bug.reproducible:
            return "not reproducible here"
        if shows_expected(bug.expect, outcome, items):
            return "reproduced"
        if items and shows_expected(bug.expect, outcome):
            return "reproduced beyond its signature"
        return "NOT reproduced" if outcome.outcome == "pass" else f"other {outcome.outcome}"
    if outcome.outcome == "pass":
        return "fixed"
    return f"still {outcome.outcome}" if shows_expected(bug.expect, outcome) else f"fixed; other {outcome.outcome}"


def replay(bugs: Iterable[KnownBug], backends: Iterable[str] | None = None,
           versions: Mapping[str, str | None] | None = None, job_timeout_s: float = 120.0) -> list[ReplayRow]:
    """Run every scenario of every bug whose role here is affected or fixed (and whose backend is selected)."""
    from .runner import Runner, WorldPool

    versions = dict(versions or installed_versions())
    keep = set(backends) if backends else None
    pool = WorldPool(job_timeout_s)
    runners: dict[str, Runner] = {}
    rows = []
    try:
        for bug in bugs:
            role = bug.role(versions)
            if role == "neither":
                continue
            for scenario in bug.scenarios:
                if keep is not None and scenario.backend not in keep:
                    continue
                runner = runners.setdefault(bug.target, Runner(bug.target, pool=pool, run_not_runnable=True))
                seeds = bug.seeds_for(role)
                outcomes = [runner.outcome(dataclasses.replace(scenario, seed=seed), codes=[bug.code])
                            for seed in range(seeds)]
                verdicts = [verdict(bug, role, o) for o in outcomes]
                # One row per scenario: the first run that shows the bug (or the first non-pass) speaks for all.
                pick = next((k for k, v in enumerate(verdicts) if v in ("reproduced", "still fail", "still error")),
                            next((k for k, o in enumerate(outcomes) if o.outcome != "pass"), 0))
                shows = what_it_shows(outcomes[pick])
                if seeds > 1:
                    struck = sum(shows_expected(bug.expect, o, bug.signature_items()) for o in outcomes)
                    shows = f"{struck}/{seeds} seeds show it" + (f"; {shows}" if shows else "")
                rows.append(ReplayRow(bug.id, scenario.id, bug.target, role, outcomes[pick].outcome, shows,
                                      verdicts[pick], versions))
    finally:
        pool.close()
    return rows


def write(rows: list[ReplayRow], directory: str | Path) -> Path:
    path = Path(directory) / "replay.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"schema": SCHEMA, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return path


def read_all(directories: Iterable[str | Path]) -> list[ReplayRow]:
    """Every ``replay.json`` under the given directories (each env writes its own)."""
    rows = []
    for directory in directories:
        for path in sorted(Path(directory).rglob("replay.json")):
            data = json.loads(path.read_text())
            if data.get("schema") != SCHEMA:
                raise CatalogueError(f"{path}: not an accumgate replay file")
            rows += [ReplayRow(**row) for row in data["rows"]]
    return rows


def _pair(versions: Mapping[str, str | None], bug: KnownBug) -> str:
    """accelerate and DeepSpeed, and any other distribution the bug's versions name (transformers for the Trainer's
    threads): a reader must see the version that decided the verdict."""
    from packaging.requirements import Requirement

    named = {Requirement(text).name for text in (*bug.affected, *bug.fixed)} - {"accelerate", "deepspeed"}
    return " + ".join(f"{name} {versions.get(name)}" for name in ("accelerate", "deepspeed", *sorted(named)))


def table(bugs: list[KnownBug], rows: list[ReplayRow]) -> list[dict[str, str]]:
    """One line per bug: every run on an affected version and on a fixed version, with verdicts."""
    out = []
    for bug in bugs:
        mine = [r for r in rows if r.bug == bug.id]
        cells = {}
        for role in ("affected", "fixed"):
            seen = sorted({f"{_pair(r.versions, bug)}: {r.scenario.split('-')[0]} {r.outcome} → {r.verdict}"
                           for r in mine if r.role == role})
            cells[role] = "; ".join(seen) if seen else "not run"
        if bug.status == "open" and cells["fixed"] == "not run":
            cells["fixed"] = "no fixed release (open)"
        out.append({"bug": bug.id, "title": bug.title, "expect": bug.expect + (f" ({bug.signature})" if bug.signature
                                                                                else ""),
                    "fixed_in": bug.fixed_in, "affected": cells["affected"], "fixed": cells["fixed"],
                    "note": "" if bug.reproducible else bug.why_not, "repro": bug.repro, "status": bug.status})
    return out
