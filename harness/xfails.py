"""Known failures: a plain file, one line per known upstream bug (array-api-tests' habit), each naming its bug's
*signature* (the properties and the quantities it makes deviate), the versions it holds for and why:

    # comment
    ds0-[!p]*-adamw-bf16-*  P2:param,P5:param  [deepspeed>=0.18.6]  deepspeed#5104: AdamW's step counter starts at 1

Patterns are shell globs over scenario ids. The signature is a comma-separated list of items
``CODE:QUANTITY[|QUANTITY...][@STEPS]``: ``P2:param`` excuses the parameters P2 compares and nothing else of P2, so a
line cannot hide a loss or a gradient of the same verdict, let alone another property. ``@2-`` limits an item to
steps 2 onwards (``@1``, ``@1-3``; a deviation placed at no step is then not covered). A run that errors or finds the
target without the API is excused only by an item naming ``error`` or ``unsupported``; ``error~TEXT`` only when the
error's last line contains TEXT (no spaces), and then the code may be ``*`` (a crash every property's run meets).

A matching (scenario, property) whose every deviation lies inside the signatures of the lines that match it is
``xfail``; one that deviates outside them stays ``fail`` (``error``) and names the line: its known failure changed.
One that passes is ``xpass``, which fails the run: a fixed bug must leave the file or narrow its versions.

``[...]`` limits the line to the installed versions it names (pip requirements separated by ``;``); ``[*]`` says the
line holds on every version. The word ``nonstrict`` there is for a bug that strikes some runs and not others (a
race): a pass is then a pass. Its reason must say how often it struck, measured ("1 run in 10", "7 of 40", "18 %").

The shipped lines (``harness/known_bugs/``, package data) apply by default to the installed versions and the target
(``native`` has its own file); ``--no-known-bugs`` judges everything, ``--xfails FILE`` adds a vendor's own lines.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from packaging.requirements import InvalidRequirement, Requirement

from .stack import VERSIONED
from .stack import versions as installed_versions

NONSTRICT = "nonstrict"
EVERY_VERSION = "*"
ANY_PROPERTY = "*"
_CODE = re.compile(r"^P\d+(-[a-z]+)?$")
# A measured rate in a nonstrict line's reason: "1 run in 10", "7 of 40", "3/40", "18 %".
_RATE = re.compile(r"\d+\s*(?:runs?\s+|programs?\s+|scenarios?\s+)?(?:/|of|in|out of)\s*\d+|\d+(?:\.\d+)?\s*%")
_STEP = re.compile(r"\bstep (\d+) of \d+")

# What a deviation is about, read from its tensor label (``Deviation.tensor``): the vocabulary of signatures.
QUANTITIES = {
    "loss": "a micro-batch's or a window's loss",
    "grad": "the pre-clip gradients a step used",
    "param": "parameters after a step (teacher-forced or from the initial weights), or at the end",
    "norm": "a grad norm: returned by optimizer_step_and_zero_grad, clip_grad_norm_ or the engine",
    "lr": "the learning rate a step used",
    "steps": "where the optimizer stepped, and how often",
    "counters": "the engine's own counters (global_steps, micro_steps)",
    "sync": "what accelerator.sync_gradients reported",
    "comm": "gradient reductions: collectives counted, or ranks' gradients equal where they must differ",
    "leftover": "gradients left behind after the program",
    "outcome": "a probe's outcome or error (P9)",
    "client": "a client program's own assertion (accelerate's test_sync.py)",
    "ranks": "the number of ranks or runs compared",
    "other": "a deviation no other quantity names",
    # not deviations: what a verdict that gave no evidence was
    "error": "the run a property needs raised (error~TEXT: with TEXT in its last line)",
    "unsupported": "the target lacks the API",
}

__all__ = ["QUANTITIES", "VERSIONED", "Item", "Judgement", "Xfail", "XfailsError", "installed_versions", "judge",
           "load", "match", "match_all", "parse", "quantity", "requirements_met", "signature"]


class XfailsError(ValueError):
    """A malformed xfails file; the message names the file and line."""


def quantity(tensor: str) -> str:
    """The quantity of ``QUANTITIES`` a deviation is about, from its tensor label (``grad[fc1.weight]``,
    ``engine.get_global_grad_norm()``, ``accelerator.sync_gradients``; a ``not recorded: X`` deviation is about X)."""
    label = tensor.strip().lower()
    if "leftover" in label or "left behind" in label:
        return "leftover"
    if "norm" in label or "optimizer_step_and_zero_grad" in label:
        return "norm"
    if label.startswith("grad[") or label.startswith("pre-clip gradient"):
        return "grad"
    if label.startswith("param") or label.startswith("final param"):
        return "param"
    if "loss" in label:
        return "loss"
    if "sync_gradients" in label:
        return "sync"
    if label.startswith("lr") or "learning rate" in label:
        return "lr"
    if "collective" in label or label in ("gradients", "gradient digests"):
        return "comm"
    if label.startswith("engine") and "step" in label:
        return "counters"
    if "step" in label:
        return "steps"
    if label in ("outcome", "error"):
        return "outcome"
    if label.startswith("client"):
        return "client"
    if label.startswith("ranks"):
        return "ranks"
    return "other"


def step_of(where: str) -> int | None:
    """The optimizer step a deviation is placed at ("rank 0 · step 2 of 4 (micro-batch 3)" → 2), or None."""
    found = _STEP.search(where)
    return int(found.group(1)) if found else None


def signature(found: Iterable[tuple[str, str]], raw: str = "fail") -> dict[str, int]:
    """What a verdict shows, as counts by ``quantity`` or ``quantity@step``, from its deviations' (tensor, where);
    a verdict without evidence shows its outcome (``error``, ``unsupported``)."""
    if raw in ("error", "unsupported"):
        return {raw: 1}
    shown: dict[str, int] = {}
    for tensor, where in found:
        step = step_of(where)
        key = quantity(tensor) + (f"@{step}" if step is not None else "")
        shown[key] = shown.get(key, 0) + 1
    return shown


def _split_key(key: str) -> tuple[str, int | None]:
    name, _, step = key.partition("@")
    return name, int(step) if step.isdigit() else None


@dataclass(frozen=True)
class Item:
    """One part of a signature: a property (``*``: any, for an error's text only), the quantities, optionally the
    steps it covers and, for ``error``, the text its last line must contain."""

    code: str
    quantities: frozenset[str]
    first_step: int | None = None
    last_step: int | None = None
    error_text: str | None = None

    def covers(self, code: str, key: str, reason: str | None) -> bool:
        if self.code not in (code, ANY_PROPERTY):
            return False
        name, step = _split_key(key)
        if name not in self.quantities:
            return False
        if name == "error" and self.error_text is not None and self.error_text not in (reason or ""):
            return False
        if self.first_step is None and self.last_step is None:
            return True
        if step is None:
            return False
        return (self.first_step is None or step >= self.first_step) and (self.last_step is None or step <= self.last_step)

    def text(self) -> str:
        names = "|".join(sorted(self.quantities))
        if self.error_text is not None:
            names = f"error~{self.error_text}"
        steps = ""
        if self.first_step is not None or self.last_step is not None:
            lo, hi = self.first_step or 1, self.last_step
            steps = f"@{lo}" if lo == hi else f"@{lo}-{hi if hi is not None else ''}"
        return f"{self.code}:{names}{steps}"


@dataclass(frozen=True)
class Xfail:
    pattern: str
    items: tuple[Item, ...]
    reason: str
    line: int
    requires: tuple[str, ...] = field(default=())
    strict: bool = True  # False: the bug strikes intermittently, so a pass is not an xpass
    source: str = "<xfails>"

    @property
    def properties(self) -> tuple[str, ...]:
        """The property codes the line names (``*`` for any)."""
        return tuple(dict.fromkeys(item.code for item in self.items))

    @property
    def bug(self) -> str:
        """The thread the reason starts with (``deepspeed#5104`` of ``deepspeed#5104 (open): …``)."""
        thread = re.match(r"[\w.-]+#\d+", self.reason)
        return thread.group(0) if thread else re.split(r"[:(]", self.reason, maxsplit=1)[0].strip()

    def signature_text(self) -> str:
        return ",".join(item.text() for item in self.items)

    def names(self, code: str) -> bool:
        return any(item.code in (code, ANY_PROPERTY) for item in self.items)

    def applies(self, versions: Mapping[str, str | None]) -> bool:
        """Every named distribution is installed at a version the line names."""
        return requirements_met(self.requires, versions)

    def excuses(self, code: str, key: str, reason: str | None = None) -> bool:
        return any(item.covers(code, key, reason) for item in self.items)

    def text(self) -> str:
        where = f"{Path(self.source).name}:{self.line}" if self.source != "<xfails>" else f"line {self.line}"
        return f"{where} ({self.pattern} {self.signature_text()}): {self.reason}"


def requirements_met(requirements: Iterable[str], versions: Mapping[str, str | None]) -> bool:
    """Every pip requirement (``deepspeed>=0.16,<0.19``) names an installed distribution at a version it allows."""
    for text in requirements:
        requirement = Requirement(text)
        version = versions.get(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


@dataclass(frozen=True)
class Judgement:
    """What the lines matching a (scenario, property) make of what its run measured."""

    outcome: str
    lines: tuple[Xfail, ...] = ()
    beyond: dict[str, int] = field(default_factory=dict)  # shown outside every matching line's signature

    @property
    def known(self) -> str | None:
        """The text a verdict keeps: the lines, and where the run went beyond them (the known failure changed)."""
        if not self.lines:
            return None
        text = " | ".join(line.text() for line in self.lines)
        if self.outcome == "pass":
            text = f"passed this run; known intermittent: {text}"
        if self.beyond:
            shown = ", ".join(f"{key} ×{n}" for key, n in sorted(self.beyond.items()))
            text = f"known failure changed: the run also shows {shown}, outside the signature of {text}"
        return text


def judge(entries: Sequence[Xfail], scenario_id: str, code: str, raw: str, shown: Mapping[str, int] | None = None,
          reason: str | None = None, versions: Mapping[str, str | None] | None = None) -> Judgement:
    """The outcome the lines make of what a run measured (``raw``: pass, fail, error or unsupported; ``shown``: its
    ``signature``; ``reason``: the error's last line). A failure is excused only where every quantity it shows lies
    inside the signature of a matching line; anything else it shows keeps it a failure (with the lines named)."""
    lines = match_all(entries, scenario_id, code, versions)
    if not lines:
        return Judgement(raw)
    if raw == "pass":
        strict = [line for line in lines if line.strict]
        return Judgement("xpass", (strict[0],)) if strict else Judgement("pass", tuple(lines))
    shown = dict(shown) if shown else {raw if raw in ("error", "unsupported") else "unrecorded signature": 1}
    beyond = {key: n for key, n in shown.items() if not any(line.excuses(code, key, reason) for line in lines)}
    used = tuple(line for line in lines if any(line.excuses(code, key, reason) for key in shown)) or tuple(lines)
    return Judgement(raw if beyond else "xfail", used, beyond)


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


_ITEM = re.compile(r"^(?P<code>[^:]+):(?P<quantities>[^@]+)(?:@(?P<first>\d*)(?:(?P<dash>-)(?P<last>\d*))?)?$")


def _item(text: str, where: str) -> Item:
    found = _ITEM.match(text)
    if not found:
        code = text.split(":")[0]
        raise XfailsError(f"{where}: {text!r}: name the property and the quantity it excuses, e.g. {code}:param "
                          f"(quantities: {', '.join(QUANTITIES)})")
    code = found.group("code")
    if code != ANY_PROPERTY and not _CODE.match(code):
        raise XfailsError(f"{where}: {code} is not a property code (P1 … P10, P8-leak)")
    names, error_text = found.group("quantities").split("|"), None
    if len(names) == 1 and names[0].startswith("error~"):
        names, error_text = ["error"], names[0].removeprefix("error~")
        if not error_text:
            raise XfailsError(f"{where}: {text!r}: error~ needs the text the error's last line contains")
    unknown = [n for n in names if n not in QUANTITIES]
    if unknown:
        raise XfailsError(f"{where}: {', '.join(unknown)} is not a quantity ({', '.join(QUANTITIES)})")
    if code == ANY_PROPERTY and error_text is None:
        raise XfailsError(f"{where}: {text!r}: '*' stands for every property only with error~TEXT (a crash every run "
                          "meets); name the properties otherwise")
    first = last = None
    if found.group("first") is not None:
        first = int(found.group("first")) if found.group("first") else 1
        last = (int(found.group("last")) if found.group("last") else None) if found.group("dash") else first
        if first < 1 or (last is not None and last < first):
            raise XfailsError(f"{where}: {text!r}: steps count from 1, first ≤ last")
    return Item(code, frozenset(names), first, last, error_text)


def parse(text: str, source: str = "<xfails>") -> list[Xfail]:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[2].startswith("["):
            raise XfailsError(f"{where}: expected '<scenario-id pattern> <signature: P2:param,...> [<versions> or *] "
                              f"<reason>', got {line!r}")
        pattern = parts[0]
        if any(ch.isspace() for ch in pattern) or pattern.startswith("-"):
            raise XfailsError(f"{where}: bad pattern {pattern!r}")
        items = tuple(_item(part.strip(), where) for part in parts[1].split(",") if part.strip())
        condition, bracket, reason = parts[2][1:].partition("]")
        if not bracket or not reason.strip():
            raise XfailsError(f"{where}: expected '[<versions> or *] <reason>' after the signature, got {line!r}")
        if not condition.strip():
            raise XfailsError(f"{where}: empty version condition: name the versions, or '*' with the reason it "
                              "holds on every version")
        requires, strict = _conditions(condition, where)
        if not strict and not _RATE.search(reason):
            raise XfailsError(f"{where}: a nonstrict line is for an intermittent bug: say in its reason how often it "
                              "struck, measured (e.g. '1 run in 10', '7 of 40 programs')")
        entries.append(Xfail(pattern, items, reason.strip(), number, requires, strict, source))
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


def match_all(entries: Sequence[Xfail], scenario_id: str, code: str,
              versions: Mapping[str, str | None] | None = None) -> list[Xfail]:
    """Every line whose pattern matches the scenario, that names this property and whose versions are installed
    (``versions``: the installed ones unless given)."""
    found = []
    for entry in entries:
        if entry.names(code) and fnmatch.fnmatchcase(scenario_id, entry.pattern):
            if entry.requires and not entry.applies(versions if versions is not None else _installed()):
                continue
            found.append(entry)
    return found


def match(entries: Sequence[Xfail], scenario_id: str, code: str,
          versions: Mapping[str, str | None] | None = None) -> Xfail | None:
    """The first matching line (see ``match_all``)."""
    found = match_all(entries, scenario_id, code, versions)
    return found[0] if found else None


_INSTALLED: dict[str, str | None] | None = None


def _installed() -> dict[str, str | None]:
    global _INSTALLED
    if _INSTALLED is None:
        _INSTALLED = installed_versions()
    return _INSTALLED


# ------------------------------------------------------------------------------------ shipped with the package
SHIPPED = Path(__file__).resolve().parent / "known_bugs"
NATIVE = "native"


def shipped_file(target: str) -> Path:
    """The package's own lines for a target: upstream accelerate (``native``) has its own file; the reference and any
    other implementation of the API run on the same upstream DeepSpeed and accelerate, and meet the same bugs."""
    return SHIPPED / ("native.txt" if target == NATIVE else "reference.txt")


def for_run(target: str, extra: Sequence[str | Path] = (), known_bugs: bool = True,
            versions: Mapping[str, str | None] | None = None) -> tuple[list[Xfail], list[str]]:
    """The lines a run applies (the shipped ones for the target unless ``known_bugs`` is False, then each ``extra``
    file of a vendor's own) and one line per file saying which of them hold for the installed versions."""
    versions = dict(versions if versions is not None else _installed())
    entries: list[Xfail] = []
    said: list[str] = []
    files = ([shipped_file(target)] if known_bugs else []) + [Path(p) for p in extra]
    for path in files:
        lines = load(path)
        entries += lines
        live = [line for line in lines if line.applies(versions)]
        bugs = list(dict.fromkeys(line.bug for line in live))
        origin = "known upstream bugs (package data)" if path == shipped_file(target) and known_bugs else str(path)
        stack = ", ".join(f"{name} {versions.get(name)}" for name in ("accelerate", "deepspeed"))
        said.append(f"{origin}: {len(live)} of {len(lines)} lines hold for {stack}"
                    + (f": {', '.join(bugs)}" if bugs else ""))
    if not known_bugs:
        said.insert(0, "known upstream bugs: not applied (--no-known-bugs): every deviation is judged")
    return entries, said
