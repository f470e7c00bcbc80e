"""Known failures: a plain file, one scenario-id pattern and its reason per line (array-api-tests' habit).

    # comment
    ds1-*-bf16-*-w2   deepspeed#7985: bf16 ZeRO-1 drops the boundary micro-batch's gradient (< 0.19.0)

Patterns are shell globs over scenario ids. A matching scenario that fails is ``xfail``; one that passes is
``xpass``, which fails the run: a fixed bug must leave the file.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path


class XfailsError(ValueError):
    """A malformed xfails file; the message names the file and line."""


@dataclass(frozen=True)
class Xfail:
    pattern: str
    reason: str
    line: int


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
        entries.append(Xfail(pattern, reason, number))
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


def match(entries: list[Xfail], scenario_id: str) -> Xfail | None:
    for entry in entries:
        if fnmatch.fnmatchcase(scenario_id, entry.pattern):
            return entry
    return None
