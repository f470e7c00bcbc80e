"""The two faces are one engine: ``accumgate run -k EXPR`` and ``pytest conformance -k EXPR`` on the same selection
write the same per-property verdicts in their results.json, because both only ask the runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli

pytestmark = [pytest.mark.world, pytest.mark.harness]

# Untouched code (P3 against upstream), a manual style (P1 against accumulate()), a dynamic schedule (P5), a ZeRO-0
# run (P6, P7, P8, P9 probes) and DDP (P7 digests): every kind of run a property can need.
EXPR = "(ds0 or ddp) and (uni4 or dyn3142) and (auto or kwarg) and not hold"


def _verdicts(path: Path) -> dict[str, dict[str, tuple[str, int]]]:
    data = json.loads(path.read_text())
    return {s["scenario"]: {code: (v["outcome"], v["deviation_count"]) for code, v in s["properties"].items()}
            for s in data["scenarios"]}


# A named style over two backends; and a client program (judged by fewer properties: the pytest face once
# parametrized it with every property, and P7 failed on a trace that had no schedule).
SELECTIONS = [("quick", EXPR, 8), ("ci", "ddp and testsync", 1)]


@pytest.mark.parametrize(("profile", "expr", "scenarios"), SELECTIONS, ids=["styles", "client"])
def test_cli_and_pytest_give_the_same_verdicts(tmp_path: Path, profile: str, expr: str, scenarios: int) -> None:
    assert cli.main(["run", "--profile", profile, "-k", expr, "--report-dir", str(tmp_path / "cli")]) == 0
    done = subprocess.run([sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", "-k", expr,
                           "--accumgate-profile", profile, "--accumgate-report-dir", str(tmp_path / "pytest")],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert done.returncode == 0, done.stdout[-3000:]
    by_cli, by_pytest = _verdicts(tmp_path / "cli" / "results.json"), _verdicts(tmp_path / "pytest" / "results.json")
    assert len(by_cli) == scenarios and sum(len(v) for v in by_cli.values()) >= scenarios
    assert by_cli == by_pytest
