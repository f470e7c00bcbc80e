"""``docs/support-matrix.md`` and ``docs/known-bugs.md``: which versions the boundary-aware accumulation holds for,
and which upstream bugs it meets, from runs, not prose.

Rows are (accelerate, deepspeed, backend) as the merged ``results.json`` files recorded them (reference target only:
what this suite ships); columns are API styles; a cell is the worst outcome and the counts of (scenario, property)
verdicts. Each row says how many verdicts were judged and how many a known bug's xfails line excused, and when it was
measured: the matrix is filled over several rounds, so a row that was not rerun keeps its last measurement (from the
history file beside the page, ``support-matrix.json``) and says since when. A row whose excused share passes
``EXCUSED_LIMIT`` carries the note of ``conformance/support_notes.toml`` that explains it, or says that none does.
Pairings that cannot run here come from ``conformance/not_runnable.toml``, the known-bug replay from every env's
``replay.json`` (and the history). The README carries the same table between two markers, rewritten by the same
command, so the two cannot drift apart.
"""
from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path
from typing import Any

from packaging.version import Version

from ..results import SEVERITY
from ..scenario import API_STYLES
from .merge import Merged
from .render import SYMBOL, counts_text

NOT_RUNNABLE_IN_CHECKOUT = Path("conformance") / "not_runnable.toml"
NOTES_IN_CHECKOUT = Path("conformance") / "support_notes.toml"
HISTORY_SCHEMA = "accumgate.support-history"
EXCUSED_LIMIT = 0.15  # a row that excuses more than this share of its verdicts must say why (issue 22)
GITHUB = {"deepspeed": "deepspeedai/DeepSpeed", "accelerate": "huggingface/accelerate",
          "transformers": "huggingface/transformers", "pytorch": "pytorch/pytorch"}


def _checkout_file(relative: Path) -> Path:
    """The checkout's file (run from the repository root), else next to the source tree."""
    here = Path(__file__).resolve().parents[2] / relative
    return relative if relative.is_file() else here


def not_runnable_path() -> Path:
    return _checkout_file(NOT_RUNNABLE_IN_CHECKOUT)


README_START, README_END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


def backend_label(backend: str) -> str:
    """``ZeRO 1 +offload`` for ``ds1off``; the backend itself (single, ddp, fsdp) elsewhere."""
    if not backend.startswith("ds"):
        return backend
    return f"ZeRO {backend[2]}" + (" +offload" if backend.endswith("off") else "")


def _key(env: str) -> tuple[str, str] | None:
    match = re.match(r"reference · accelerate (\S+) · deepspeed (\S+)", env or "")
    return (match.group(1), match.group(2)) if match else None


def _version(text: str) -> Version:
    try:
        return Version(text)
    except Exception:
        return Version("0")


def _row_order(key: tuple[str, str, str]) -> tuple:
    backends = ("single", "ddp", "fsdp")
    return (_version(key[0]), _version(key[1]), (0, backends.index(key[2])) if key[2] in backends else (1, key[2]))


def grid(merged: Merged) -> dict[tuple[str, str, str], dict[str, Counter]]:
    """(accelerate, deepspeed, backend) -> api style -> (scenario, property) verdict counts by outcome, reference
    target: a known failure excuses only its signature, so the cell says how many verdicts each outcome had, not how
    many scenarios were touched by one."""
    cells: dict[tuple[str, str, str], dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for outcome in merged.outcomes:
        versions, backend = _key(outcome.env or ""), outcome.axes.get("backend")
        if versions is None or not backend:
            continue
        for verdict in outcome.properties.values():
            cells[(*versions, backend_label(backend))][outcome.axes.get("api", "?")][verdict.outcome] += 1
    return cells


def _cell(counts: Counter | None) -> str:
    if not counts:
        return "·"
    worst = max(counts, key=lambda o: SEVERITY[o])
    return f"{SYMBOL[worst]} {counts_text(counts)}"


def _measured_dates(merged: Merged) -> dict[tuple[str, str], str]:
    """(accelerate, deepspeed) -> the date its newest run was made."""
    from ..results import environment_label

    dates: dict[tuple[str, str], str] = {}
    for _, run in merged.runs:
        key = _key(environment_label(run))
        if key is not None and run.created:
            dates[key] = max(dates.get(key, ""), run.created[:10])
    return dates


# ------------------------------------------------------------------------------------------------ history, notes
def history_path(support_matrix: Path) -> Path:
    """The history beside the page: ``docs/support-matrix.json`` for ``docs/support-matrix.md``."""
    return support_matrix.with_suffix(".json")


def load_history(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {"schema": HISTORY_SCHEMA, "version": 1, "rows": [], "replay": []}
    data = json.loads(path.read_text())
    if data.get("schema") != HISTORY_SCHEMA:
        raise ValueError(f"{path}: not an accumgate support history")
    return data


def load_notes(path: Path | None = None) -> list[dict[str, str]]:
    path = path or _checkout_file(NOTES_IN_CHECKOUT)
    return tomllib.loads(path.read_text()).get("note", []) if path.is_file() else []


def note_for(row: dict[str, Any], notes: list[dict[str, str]]) -> str:
    found = [n["note"] for n in notes
             if all(fnmatch.fnmatchcase(str(row[k]), n.get(k, "*")) for k in ("accelerate", "deepspeed", "backend"))]
    return " ".join(found)


def rows(merged: Merged, history: dict[str, Any], today: str | None = None) -> list[dict[str, Any]]:
    """This round's rows (from the merged runs) and every earlier row not measured again, each with its counts of
    judged and excused verdicts and its date."""
    cells = grid(merged)
    dates = _measured_dates(merged)
    fresh: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, by_api in cells.items():
        total = Counter()
        for counts in by_api.values():
            total.update(counts)
        fresh[key] = {"accelerate": key[0], "deepspeed": key[1], "backend": key[2],
                      "cells": {api: _cell(counts) for api, counts in by_api.items()},
                      "judged": sum(n for o, n in total.items() if o != "xfail"), "excused": total.get("xfail", 0),
                      "measured": dates.get(key[:2], today or date.today().isoformat()), "source": "this round",
                      "grammar": "signatures"}
    out = dict(fresh)
    for row in history.get("rows", []):
        key = (row["accelerate"], row["deepspeed"], row["backend"])
        if key not in out:
            out[key] = dict(row, source=row.get("source", "an earlier round"))
    return [out[k] for k in sorted(out, key=_row_order)]


def share(row: dict[str, Any]) -> float:
    total = row["judged"] + row["excused"]
    return row["excused"] / total if total else 0.0


def _status(row: dict[str, Any], notes: list[dict[str, str]]) -> str:
    parts = []
    if row.get("source") != "this round":
        parts.append(f"not rerun since {row['measured']}"
                     + (" (judged then with whole-property lines, before signatures)" if row.get("grammar") == "properties"
                        else ""))
    note = note_for(row, notes)
    if note:
        parts.append(note)
    elif share(row) > EXCUSED_LIMIT:
        parts.append(f"**over {EXCUSED_LIMIT:.0%} excused and no note explains it**")
    return "; ".join(parts)


def matrix_table(merged: Merged, history: dict[str, Any] | None = None, notes: list[dict[str, str]] | None = None,
                 today: str | None = None) -> str:
    found = rows(merged, history or {}, today)
    notes = load_notes() if notes is None else notes
    apis = [a for a in API_STYLES if any(a in row["cells"] for row in found)]
    lines = ["| accelerate | deepspeed | backend | judged · excused | measured | " + " | ".join(apis) + " | note |",
             "|---" * (6 + len(apis)) + "|"]
    for row in found:
        counts = f"{row['judged']} · {row['excused']} ({share(row):.0%})"
        lines.append(f"| {row['accelerate']} | {row['deepspeed']} | {row['backend']} | {counts} | {row['measured']} | "
                     + " | ".join(row["cells"].get(a, "·") for a in apis) + f" | {_status(row, notes)} |")
    return "\n".join(lines)


def not_runnable_table(path: Path | None = None) -> str:
    entries = tomllib.loads((path or not_runnable_path()).read_text()).get("pairing", [])
    lines = ["| versions | stages | why it cannot run here | measured |", "|---|---|---|---|"]
    lines += [f"| {e['versions']} | {e['stages']} | {e['reason']} | {e['measured']} |" for e in entries]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ replay
def _replay_key(text: str) -> str:
    """``accelerate 1.7.0 + deepspeed 0.15.4: ds0`` of ``accelerate 1.7.0 + deepspeed 0.15.4: ds0 fail → reproduced``."""
    head, _, tail = text.partition(": ")
    return f"{head}: {tail.split()[0]}" if tail else head


def replay_cells(bug_rows: list[dict[str, str]], history: dict[str, Any], today: str | None = None) -> list[dict[str, str]]:
    """The replay table's lines with the runs of earlier rounds that this round did not repeat (dated)."""
    today = today or date.today().isoformat()
    out = []
    for row in bug_rows:
        row = dict(row)
        for role in ("affected", "fixed"):
            fresh = [t for t in row[role].split("; ") if " → " in t]
            seen = {_replay_key(t) for t in fresh}
            old = [f"{h['text']} ({h['measured']})" for h in history.get("replay", [])
                   if h["bug"] == row["bug"] and h["role"] == role and _replay_key(h["text"]) not in seen]
            texts = [f"{t} ({today})" for t in fresh] + old
            if texts:
                row[role] = "; ".join(texts)
        out.append(row)
    return out


def replay_table(bug_rows: list[dict[str, str]]) -> str:
    lines = ["| bug | must show | on an affected version | on a fixed version |", "|---|---|---|---|"]
    for row in bug_rows:
        note = f" ({row['note']})" if row["note"] else ""
        lines.append(f"| **{row['bug']}**: {row['title']}{note} | {row['expect']} | {row['affected']} | "
                     f"{row['fixed']} (fixed in {row['fixed_in']}) |")
    return "\n".join(lines)


def updated_history(merged: Merged, history: dict[str, Any], bug_rows: list[dict[str, str]],
                    today: str | None = None) -> dict[str, Any]:
    """The history with this round's rows and replay runs in place of the ones they measured again."""
    today = today or date.today().isoformat()
    replay = []
    for row in replay_cells(bug_rows, history, today):
        for role in ("affected", "fixed"):
            for part in row[role].split("; "):
                dated = re.match(r"(.*) \((\d{4}-\d\d-\d\d)\)$", part)
                if dated and " → " in dated.group(1):
                    replay.append({"bug": row["bug"], "role": role, "text": dated.group(1), "measured": dated.group(2)})
    return {"schema": HISTORY_SCHEMA, "version": 1, "note": history.get("note", ""),
            "rows": rows(merged, history, today), "replay": replay}


def readme_block(merged: Merged, history: dict[str, Any] | None = None) -> str:
    """What the README shows between its markers: the matrix and the pairings that cannot run."""
    return "\n".join([README_START, "", matrix_table(merged, history), "", "Not runnable here:", "",
                      not_runnable_table(), "", README_END])


# The stack tox.ini's default envs install (constraints.txt pins torch): what "live" is judged against.
DEFAULT_STACK = {"accelerate": "1.15.0", "deepspeed": "0.19.8", "transformers": "5.24.0", "torch": "2.13.0"}


def _short(title: str, limit: int = 170) -> str:
    """A title's first sentence, cut at ``limit`` characters, safe in a Markdown table cell."""
    first = title.split(". ")[0]
    return (first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + " …").replace("|", "\\|")


def live_table(bugs: list, bug_rows: list[dict[str, str]], stack: dict[str, str] | None = None) -> str:
    """Catalogue entries whose affected versions include the default stack (issue 24: what users run today), each
    with its upstream-only repro and this round's replay on that stack where one ran."""
    from packaging.requirements import Requirement

    from ..xfails import requirements_met

    stack = stack or DEFAULT_STACK
    replayed = {row["bug"]: row["affected"] for row in bug_rows}

    def on_default(bug: Any) -> bool:
        named = [a for a in bug.affected if Requirement(a).name in stack]
        return bool(named) and requirements_met(named, stack)

    live = [bug for bug in bugs if on_default(bug)]
    lines = ["Catalogue entries whose affected versions include the default stack ("
             + ", ".join(f"{k} {v}" for k, v in stack.items()) + "): each reproduces there, and its upstream-only "
             "script (no accumgate import) exits 1 there.", "",
             "| bug | what a user sees | status | upstream-only repro | replayed this round |", "|---|---|---|---|---|"]
    for bug in live:
        seen = replayed.get(bug.id, "")
        lines.append(f"| {thread_link(bug.id)} | {_short(bug.title)} | {bug.status} | "
                     f"{('`' + bug.repro + '`') if bug.repro else '—'} | {seen if ' → ' in seen else 'not replayed here'} |")
    return "\n".join(lines)


def render(merged: Merged, bug_rows: list[dict[str, str]], history: dict[str, Any] | None = None,
           today: str | None = None, bugs: list | None = None) -> str:
    history = history or {}
    sources = sorted({str(path.parent.name) for path, run in merged.runs if run.target == "reference"})
    return "\n".join([
        "# Support matrix",
        "",
        "Generated by `tox -e report` (`accumgate report … --support-matrix`) from the merged runs of: "
        + (", ".join(f"`{s}`" for s in sources) or "none this round")
        + ", and, for rows not measured again, the last measurement kept in `support-matrix.json`. Never edit by "
        "hand: rerun the envs and the report.",
        "",
        "Reference implementation on each (accelerate, deepspeed) pairing and backend; a column per API style; a cell "
        "is the worst outcome (✔ pass, ✘ fail, ⚠ error, ∅ unsupported, ✘ₓ known failure: a known upstream bug's "
        "signature, excused by a line of `harness/known_bugs/reference.txt`) and the counts of (scenario, property) "
        f"verdicts (P1–P10, P8-leak). *judged · excused* counts a row's verdicts; a row excusing more than "
        f"{EXCUSED_LIMIT:.0%} says why in its note. The bugs themselves: [known-bugs.md](known-bugs.md).",
        "",
        matrix_table(merged, history, today=today),
        "",
        "## Live on the default stack",
        "",
        live_table(bugs or [], bug_rows),
        "",
        "## Pairings that cannot run here",
        "",
        not_runnable_table(),
        "",
        "## Known upstream bugs, replayed (`accumgate replay`, catalogue `harness/known_bugs/catalogue.toml`)",
        "",
        replay_table(replay_cells(bug_rows, history, today)) if bug_rows else "No catalogue.",
        "",
    ])


def update_readme(readme: Path, merged: Merged, history: dict[str, Any] | None = None) -> bool:
    """Rewrite the block between the markers; False when the README has no markers (nothing written)."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < 0:
        return False
    readme.write_text(text[:start] + readme_block(merged, history) + text[end + len(README_END):])
    return True


# ------------------------------------------------------------------------------------------------ known bugs page
def thread_link(bug_id: str) -> str:
    """``[deepspeed#5104](https://github.com/deepspeedai/DeepSpeed/issues/5104)``; GitHub redirects an issue number
    to its pull request. An id without a thread stays text."""
    found = re.fullmatch(r"([\w.-]+)#(\d+)", bug_id)
    if not found or found.group(1) not in GITHUB:
        return bug_id
    return f"[{bug_id}](https://github.com/{GITHUB[found.group(1)]}/issues/{found.group(2)})"


def known_bugs_page(bugs: list, lines_by_file: dict[str, list], bug_rows: list[dict[str, str]],
                    history: dict[str, Any] | None = None, today: str | None = None) -> str:
    """One section per catalogue entry: thread, status, versions, the signature its xfails lines excuse (and where),
    its replay on an affected and a fixed version, and its standalone repro."""
    rows_by_bug = {row["bug"]: row for row in replay_cells(bug_rows, history or {}, today)}
    out = ["# Known upstream bugs", "",
           "Generated by `tox -e report` (`accumgate report … --known-bugs`) from the catalogue "
           "(`harness/known_bugs/catalogue.toml`), the xfails lines shipped with the package "
           "(`harness/known_bugs/*.txt`: applied by default for the installed versions, `--no-known-bugs` judges "
           "everything) and the replay runs (`accumgate replay`). A line excuses its bug's *signature*, the properties "
           "and quantities it makes deviate, and nothing else: anything else the same run shows is judged.", ""]
    claimed: set[tuple[str, int]] = set()
    for bug in bugs:
        row = rows_by_bug.get(bug.id)
        live = [t for t in (row["affected"].split("; ") if row else []) if "→ reproduced" in t]
        status = ((f"**open, live**: reproduced on {live[0]}" if live else "open") if bug.status == "open"
                  else f"fixed in {bug.fixed_in}")
        out += [f"## {thread_link(bug.id)}", "", bug.title, "",
                f"- **status**: {status}",
                f"- **affected**: `{'; '.join(bug.affected)}`" + (f" · **fixed**: `{'; '.join(bug.fixed)}`" if bug.fixed
                                                                    else ""),
                f"- **replayed as**: {bug.expect}" + (f", signature `{bug.signature}`" if bug.signature else "")
                + f" on {', '.join(f'`{s.id}`' for s in bug.scenarios)} (target {bug.target})"]
        mine = [(name, line) for name, lines in lines_by_file.items() for line in lines if line.bug == bug.id]
        if mine:
            out.append("- **excused** (xfails lines):")
            for name, line in mine:
                claimed.add((name, line.line))
                out.append(f"  - `{name}:{line.line}` `{line.pattern}` → `{line.signature_text()}` "
                           f"on `{'; '.join(line.requires) or 'every version'}`" + ("" if line.strict else " (nonstrict)"))
        else:
            out.append("- **excused**: no xfails line (the suite shows it only where replayed)")
        if row:
            out.append(f"- **on an affected version**: {row['affected']}")
            out.append(f"- **on a fixed version**: {row['fixed']}")
        if not bug.reproducible:
            out.append(f"- **not reproducible here**: {bug.why_not}")
        out.append(f"- **repro**: [{bug.repro}](../{bug.repro})" if bug.repro else "- **repro**: none yet")
        out.append("")
    orphans = [(name, line) for name, lines in lines_by_file.items() for line in lines
               if (name, line.line) not in claimed]
    if orphans:
        out += ["## Lines without a catalogue entry", ""]
        out += [f"- `{name}:{line.line}` `{line.pattern}` → `{line.signature_text()}`: {line.reason[:200]}"
                for name, line in orphans]
        out.append("")
    return "\n".join(out)
