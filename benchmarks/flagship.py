"""The flagship as a new user meets it: a fresh clone, ``python3 -m tox -e ds-zero3``, timed end to end (env creation
included), with how much it prints and how many (scenario, property) verdicts it gave.

    python benchmarks/flagship.py --label after [--commit HEAD] [--out benchmarks/results/flagship.json]
    python benchmarks/flagship.py --label before --from-log saved.log     # a run made earlier, same format

Each label is one row of the results file (a later run of the same label replaces it). Targets (issue 16; never
asserted in a test): <= 2 min 30 s wall, the pytest phase <= 90 s, at least as many verdicts as before.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.results import write_atomic  # noqa: E402

TOX_LINE = re.compile(r"ds-zero3: OK \((?P<total>[\d.]+)=setup\[(?P<setup>[\d.]+)\]\+cmd\[(?P<cmds>[\d., ]+)\]")
PYTEST_LINE = re.compile(r"=+ (?P<summary>.*\d+ passed.*) in (?P<seconds>[\d.]+)s")
DEEPSPEED_WARNING = "untested optimizer"


def parse(log: str, wall: float | None) -> dict:
    """What a person sees: the phases tox reports, pytest's summary, how many lines and DeepSpeed warnings."""
    row: dict = {"output_lines": len(log.splitlines()),
                 "deepspeed_warning_lines": sum(DEEPSPEED_WARNING in line for line in log.splitlines())}
    if wall is None:
        real = re.search(r"^real\s+(\d+)m([\d.]+)s", log, re.MULTILINE)
        wall = int(real.group(1)) * 60 + float(real.group(2)) if real else None
    row["wall_seconds"] = wall
    tox = TOX_LINE.search(log)
    if tox:
        commands = [float(c) for c in tox.group("cmds").split(",")]
        row |= {"tox_seconds": float(tox.group("total")), "setup_seconds": float(tox.group("setup")),
                "pytest_seconds": commands[0], "replay_seconds": commands[1] if len(commands) > 1 else None}
    pytest_summary = PYTEST_LINE.search(log)
    if pytest_summary:
        row["pytest_summary"] = pytest_summary.group("summary")
        row["pytest_reported_seconds"] = float(pytest_summary.group("seconds"))
        row["pytest_items_run"] = sum(int(n) for n, what in re.findall(r"(\d+) (\w+)", pytest_summary.group("summary"))
                                      if what in ("passed", "failed", "xfailed", "xpassed", "error", "errors"))
    return row


def verdicts(results: Path) -> dict | None:
    """(scenario, property) verdicts by outcome, from the run's results.json (schema 2); None for older schemas."""
    if not results.exists():
        return None
    data = json.loads(results.read_text())
    counts: dict[str, int] = {}
    for scenario in data.get("scenarios", []):
        properties = scenario.get("properties", {})
        if not isinstance(properties, dict):  # an older schema (verdicts per scenario): not comparable
            return None
        for verdict in properties.values():
            counts[verdict["outcome"]] = counts.get(verdict["outcome"], 0) + 1
    return counts or None


def run(commit: str) -> tuple[str, float, dict | None]:
    with tempfile.TemporaryDirectory() as where:
        clone = Path(where) / "accumgate"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", commit], check=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tox", "-e", "ds-zero3"], cwd=clone, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        return done.stdout + done.stderr, wall, verdicts(clone / "reports" / "ds-zero3" / "results.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--from-log", default=None, help="parse a saved run's output instead of running")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "flagship.json"))
    args = parser.parse_args()
    if args.from_log:
        log, wall, counted = Path(args.from_log).read_text(), None, None
        commit = args.commit
    else:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.commit], check=True,
                                capture_output=True, text=True).stdout.strip()
        log, wall, counted = run(commit)
    row = {"label": args.label, "commit": commit, **parse(log, wall), "verdicts": counted}
    out = Path(args.out)
    rows = [r for r in (json.loads(out.read_text())["rows"] if out.exists() else []) if r["label"] != args.label]
    write_atomic(out, json.dumps({"benchmark": "flagship", "command": "python3 -m tox -e ds-zero3 (fresh clone)",
                                  "rows": rows + [row]}, indent=1) + "\n")
    print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
