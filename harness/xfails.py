"""Known failures: a plain file, one line per known failure (array-api-tests' habit), each naming the properties it
excuses and the versions it holds for:

    # comment
    ds1-*-bf16-*-w2  P2,P5  [deepspeed<0.19.0]  deepspeed#7985: bf16 ZeRO-1 drops the boundary micro-batch's gradient

Patterns are shell globs over scenario ids. The codes (``P2``, ``P8-leak``; several joined by ``,``) are the only
properties the line excuses: a line cannot hide another property's failure of the same scenario. The ``[...]``
limits the line to the installed versions it names (pip requirements separated by ``;``); ``[*]`` says the line
holds on every version, and its reason must say why. A line whose versions are not installed is inert. A matching
(scenario, property) that fails is ``xfail``; one that passes is ``xpass``, which fails the run: a fixed bug must
leave the file (or narrow its versions). The word ``nonstrict`` among the conditions is for a bug that strikes some
runs and not others (a race): a pass is then a pass, and a failure still an xfail.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement

from .stack import VERSIONED
from .stack import versions as installed_versions

NONSTRICT = "nonstrict"
EVERY_VERSION = "*"
_CODE = re.compile(r"^P\d+(-[a-z]+)?$")

__all__ = ["VERSIONED", "Xfail", "XfailsError", "installed_versions", "judge", "load", "match", "parse",
           "requirements_met"]


class XfailsError(ValueError):
    """A malformed xfails file; the message names the file and line."""


@dataclass(frozen=True)
class Xfail:
    pattern: str
    properties: tuple[str, ...]
    reason: str
    line: int
    requires: tuple[str, ...] = field(default=())
    strict: bool = True  # False: the bug strikes intermittently, so a pass is not an xpass

    def applies(self, versions: Mapping[str, str | None]) -> bool:
        """Every named distribution is installed at a version the line names."""
        return requirements_met(self.requires, versions)

    def text(self) -> str:
        return f"line {self.line} ({self.pattern} {','.join(self.properties)}): {self.reason}"


def requirements_met(requirements: Iterable[str], versions: Mapping[str, str | None]) -> bool:
    """Every pip requirement (``deepspeed>=0.16,<0.19``) names an installed distribution at a version it allows."""
    for text in requirements:
        requirement = Requirement(text)
        version = versions.get(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def judge(raw: str, known: "Xfail | None") -> tuple[str, str | None]:
    """The outcome and reason an xfails line makes of what a run measured (``pass``, ``fail``, ``error`` or
    ``unsupported``)."""
    if known is None:
        return raw, None
    if raw != "pass":
        return "xfail", known.reason
    if known.strict:
        return "xpass", known.reason
    return "pass", f"passed this run; known intermittent: {known.reason}"


def _conditions(text: str, where: str) -> tuple[tuple[str, ...], bool]:
    found, strict = [], True
    for part in (p.strip() for p in text.split(";")):
        if part == NONSTRICT:
            strict = False
            continue
        if part == EVERY_VERSION:
            continue
        try:
            Requirement(part)
        except InvalidRequirement as exc:
            raise XfailsError(f"{where}: bad version condition {part!r} ({exc})") from exc
        found.append(part)
    return tuple(found), strict


def parse(text: str, source: str = "<xfails>") -> list[Xfail]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[2].startswith("["):
            raise XfailsError(f"{where}: expected '<scenario-id pattern> <P-codes> [<versions> or *] <reason>', "
                              f"got {line!r}")
        pattern, codes = parts[0], tuple(code.strip() for code in parts[1].split(","))
        if any(ch.isspace() for ch in pattern) or pattern.startswith("-"):
            raise XfailsError(f"{where}: bad pattern {pattern!r}")
        bad = [code for code in codes if not _CODE.match(code)]
        if bad:
            raise XfailsError(f"{where}: {', '.join(bad)} is not a property code (P1 … P10, P8-leak)")
        condition, bracket, reason = parts[2][1:].partition("]")
        if not bracket or not reason.strip():
            raise XfailsError(f"{where}: expected '[<versions> or *] <reason>' after the codes, got {line!r}")
        if not condition.strip():
            raise XfailsError(f"{where}: empty version condition: name the versions, or '*' with the reason it "
                              "holds on every version")
        requires, strict = _conditions(condition, where)
        entries.append(Xfail(pattern, codes, reason.strip(), number, requires, strict))
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


def match(entries: list[Xfail], scenario_id: str, code: str,
          versions: Mapping[str, str | None] | None = None) -> Xfail | None:
    """The first line whose pattern matches the scenario, that names this property and whose versions are installed
    (``versions``: the installed ones unless given)."""
    for entry in entries:
        if code in entry.properties and fnmatch.fnmatchcase(scenario_id, entry.pattern):
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
