"""Known failures: a plain file, one scenario-id pattern and its reason per line (array-api-tests' habit).

    # comment
    ds1-*-bf16-*-w2  [deepspeed<0.19.0]  deepspeed#7985: bf16 ZeRO-1 drops the boundary micro-batch's gradient

Patterns are shell globs over scenario ids. An optional ``[...]`` after the pattern limits the line to the
installed versions it names (requirements separated by ``;``, e.g. ``[deepspeed==0.18.9; accelerate>=1.8]``):
one file serves the whole version matrix, and a line whose versions are not installed is inert. A matching
scenario that fails is ``xfail``; one that passes is ``xpass``, which fails the run: a fixed bug must leave the
file (or narrow its versions). The word ``nonstrict`` among the conditions is for a bug that strikes some runs
and not others (a race): a pass is then a pass, not an xpass, and a failure still an xfail.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement

NONSTRICT = "nonstrict"


class XfailsError(ValueError):
    """A malformed xfails file; the message names the file and line."""


@dataclass(frozen=True)
class Xfail:
    pattern: str
    reason: str
    line: int
    requires: tuple[str, ...] = field(default=())
    strict: bool = True  # False: the bug strikes intermittently, so a pass is not an xpass

    def applies(self, versions: Mapping[str, str | None]) -> bool:
        """Every named distribution is installed at a version the line names."""
        return requirements_met(self.requires, versions)


# The distributions whose versions decide a known failure (xfails lines, the replay catalogue, recorded runs).
VERSIONED = ("accelerate", "deepspeed", "torch", "transformers")


def requirements_met(requirements: Iterable[str], versions: Mapping[str, str | None]) -> bool:
    """Every pip requirement (``deepspeed>=0.16,<0.19``) names an installed distribution at a version it allows."""
    for text in requirements:
        requirement = Requirement(text)
        version = versions.get(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def judge(raw: str, known: "Xfail | None") -> tuple[str, str | None]:
    """The outcome and reason an xfails line makes of what a run measured (``pass``, ``fail`` or ``error``)."""
    if known is None:
        return raw, None
    if raw != "pass":
        return "xfail", known.reason
    if known.strict:
        return "xpass", known.reason
    return "pass", f"passed this run; known intermittent: {known.reason}"


def installed_versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _requirements(text: str, where: str) -> tuple[str, ...]:
    found = []
    for part in (p.strip() for p in text.split(";")):
        if part == NONSTRICT:
            continue
        try:
            Requirement(part)
        except InvalidRequirement as exc:
            raise XfailsError(f"{where}: bad version condition {part!r} ({exc})") from exc
        found.append(part)
    return tuple(found)


def parse(text: str, source: str = "<xfails>") -> list[Xfail]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            raise XfailsError(f"{source}:{number}: expected '<scenario-id pattern> <reason>', got {raw.strip()!r}")
        pattern, reason = parts[0], parts[1].strip()
        if any(ch.isspace() for ch in pattern) or pattern.startswith("-"):
            raise XfailsError(f"{source}:{number}: bad pattern {pattern!r}")
        requires: tuple[str, ...] = ()
        if reason.startswith("["):
            condition, bracket, rest = reason[1:].partition("]")
            if not bracket or not rest.strip():
                raise XfailsError(f"{source}:{number}: expected '<pattern> [<versions>] <reason>', got {raw.strip()!r}")
            requires, reason = _requirements(condition, f"{source}:{number}"), rest.strip()
            strict = NONSTRICT not in (p.strip() for p in condition.split(";"))
        else:
            strict = True
        entries.append(Xfail(pattern, reason, number, requires, strict))
    return entries


def load(path: str | Path) -> list[Xfail]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise XfailsError(f"--xfails {str(path)!r}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise XfailsError(f"--xfails {str(path)!r}: not a text file") from exc
    return parse(text, str(path))


def match(entries: list[Xfail], scenario_id: str, versions: Mapping[str, str | None] | None = None) -> Xfail | None:
    """The first line whose pattern matches and whose versions are installed (``versions``: the installed ones
    unless given)."""
    for entry in entries:
        if fnmatch.fnmatchcase(scenario_id, entry.pattern):
            if entry.requires and not entry.applies(versions if versions is not None else _installed()):
                continue
            return entry
    return None


_INSTALLED: dict[str, str | None] | None = None


def _installed() -> dict[str, str | None]:
    global _INSTALLED
    if _INSTALLED is None:
        _INSTALLED = installed_versions()
    return _INSTALLED
