"""The known-bug catalogue and the support matrix: data that loads, roles decided by versions, verdicts decided
by outcomes, and a README table that is the generated one (no world needed)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import replay
from harness.reports import support
from harness.reports.merge import Merged
from harness.results import Outcome, Verdict

ROOT = Path(__file__).resolve().parent.parent
OLD = {"accelerate": "1.7.0", "deepspeed": "0.15.4"}
NEW = {"accelerate": "1.15.0", "deepspeed": "0.19.8"}


@pytest.fixture(scope="module")
def bugs() -> dict[str, replay.KnownBug]:
    return {bug.id: bug for bug in replay.load()}


def test_catalogue_names_threads_versions_and_scenarios(bugs) -> None:
    assert {"accelerate#3552", "accelerate#3656", "deepspeed 0.18.9 ZeRO-1/2", "deepspeed#7985", "deepspeed#7837",
            "deepspeed#5104", "accelerate#3762"} <= set(bugs)
    for bug in bugs.values():
        assert bug.scenarios and bug.affected and bug.fixed_in
        assert bool(bug.fixed) == (bug.status == "fixed"), f"{bug.id}: an open bug has no fixed versions, a fixed one names them"
        assert bug.expect.startswith(("P", "error:")), bug.expect
        assert bug.reproducible or bug.why_not, f"{bug.id}: a bug kept as not reproducible must say why"


@pytest.mark.parametrize(("bug", "versions", "role"), [
    ("accelerate#3552", OLD, "affected"),
    ("accelerate#3552", NEW, "fixed"),
    ("accelerate#3656", {"accelerate": "1.8.1", "deepspeed": "0.19.8"}, "affected"),
    ("accelerate#3656", {"accelerate": "1.10.1", "deepspeed": "0.19.8"}, "fixed"),
    ("accelerate#3656", OLD, "neither"),  # deepspeed 0.15 has no engine no_sync: the bug cannot arise
    ("deepspeed 0.18.9 ZeRO-1/2", {"accelerate": "1.15.0", "deepspeed": "0.18.9"}, "affected"),
    ("deepspeed 0.18.9 ZeRO-1/2", {"accelerate": "1.15.0", "deepspeed": "0.18.2"}, "neither"),
    ("deepspeed#7837", {"accelerate": "1.15.0", "deepspeed": "0.18.2"}, "affected"),
])
def test_roles_follow_the_installed_versions(bugs, bug: str, versions: dict, role: str) -> None:
    assert bugs[bug].role(versions) == role


def _outcome(outcome: str, prop: str | None = None, error: str | None = None) -> Outcome:
    from harness.results import Verdict

    properties = {}
    if prop:
        properties[prop.split()[0]] = Verdict(prop.split()[0], prop, "fail", [{"prop": prop, "where": "", "tensor": "",
                                                                               "message": ""}], 1, raw="fail")
    return Outcome(scenario="ds0-auto-tail442-sgd-fp32-clip1-w2", outcome=outcome, properties=properties,
                   errors={"0": f"Traceback\nRuntimeError: {error}"} if error else {})


def test_verdicts_need_the_property_or_error_the_catalogue_names(bugs) -> None:
    steps, split = bugs["accelerate#3552"], bugs["deepspeed 0.18.9 ZeRO-1/2"]
    assert replay.verdict(steps, "affected", _outcome("fail", "P4 boundaries")) == "reproduced"
    assert replay.verdict(steps, "affected", _outcome("fail", "P2 backend≡oracle")) == "other fail"
    assert replay.verdict(steps, "affected", _outcome("pass")) == "NOT reproduced"
    assert replay.verdict(steps, "fixed", _outcome("pass")) == "fixed"
    assert replay.verdict(steps, "fixed", _outcome("fail", "P4 boundaries")) == "still fail"
    shown = _outcome("error", error="Output 0 of SplitBackward0 is a view and is being modified inplace.")
    assert replay.verdict(split, "affected", shown) == "reproduced"
    assert replay.verdict(split, "affected", _outcome("error", error="something else")) == "other error"


def test_table_puts_affected_and_fixed_runs_side_by_side(bugs) -> None:
    rows = [replay.ReplayRow("accelerate#3552", "ds0-auto-tail442-sgd-fp32-clip1-w2", "native", "affected", "fail",
                             "P4 boundaries", "reproduced", OLD),
            replay.ReplayRow("accelerate#3552", "ds0-auto-tail442-sgd-fp32-clip1-w2", "native", "fixed", "pass", "",
                             "fixed", NEW)]
    line = next(r for r in replay.table(list(bugs.values()), rows) if r["bug"] == "accelerate#3552")
    assert "accelerate 1.7.0 + deepspeed 0.15.4: ds0 fail → reproduced" in line["affected"]
    assert "accelerate 1.15.0 + deepspeed 0.19.8: ds0 pass → fixed" in line["fixed"]


def test_malformed_catalogue_names_the_bug(tmp_path) -> None:
    bad = tmp_path / "bugs.toml"
    bad.write_text('[[bug]]\nid = "x#1"\ntitle = "t"\naffected = "deepspeed<<1"\nfixed = "deepspeed>=1"\n'
                   'fixed_in = "1"\ntarget = "native"\nexpect = "P4 boundaries"\nscenarios = []\n')
    with pytest.raises(replay.CatalogueError, match=r"x#1"):
        replay.load(bad)


def test_support_matrix_rows_are_versions_and_backends_with_their_judged_share() -> None:
    """A cell counts (scenario, property) verdicts: a scenario with one failing property among passing ones is one
    fail and the passes, not one failed scenario. Each row says how many verdicts it judged and how many a known bug
    excused, and when it was measured; a row excusing more than 15 % without a note says so in bold."""
    env = "reference · accelerate 1.15.0 · deepspeed 0.19.8"

    def verdicts(**outcomes: str) -> dict[str, Verdict]:
        return {code: Verdict(code, code, outcome) for code, outcome in outcomes.items()}

    outcomes = [Outcome("ds3-auto-uni4-sgd-fp32-clip1-w2", "pass", axes={"backend": "ds3", "api": "auto"}, env=env,
                        properties=verdicts(P2="pass", P3="pass")),
                Outcome("ds3off-kwarg-uni4-sgd-fp32-clip1-w2", "fail", axes={"backend": "ds3off", "api": "kwarg"},
                        env=env, properties=verdicts(P2="fail", P5="pass")),
                Outcome("ddp-auto-uni4-sgd-fp32-clip1-w2", "xfail", axes={"backend": "ddp", "api": "auto"}, env=env,
                        properties=verdicts(P2="xfail", P7="pass"))]
    table = support.matrix_table(Merged(runs=[], outcomes=outcomes), notes=[], today="2026-12-06")
    assert "| 1.15.0 | 0.19.8 | ZeRO 3 | 2 · 0 (0%) | 2026-12-06 | ✔ 2 pass | · |  |" in table
    assert "| 1.15.0 | 0.19.8 | ZeRO 3 +offload | 2 · 0 (0%) | 2026-12-06 | · | ✘ 1 fail 1 pass |  |" in table
    assert "| 1.15.0 | 0.19.8 | ddp | 1 · 1 (50%) | 2026-12-06 | ✘ₓ 1 xfail 1 pass | · | **over 15% excused" in table
    old = {"rows": [{"accelerate": "1.7.0", "deepspeed": "0.15.4", "backend": "ZeRO 0", "cells": {"auto": "✔ 9 pass"},
                     "judged": 9, "excused": 0, "measured": "2026-11-26", "grammar": "properties"}]}
    kept = support.matrix_table(Merged(runs=[], outcomes=outcomes), old, notes=[{"backend": "ddp", "note": "why"}])
    assert "| 1.7.0 | 0.15.4 | ZeRO 0 | 9 · 0 (0%) | 2026-11-26 | ✔ 9 pass | · | not rerun since 2026-11-26" in kept
    assert kept.index("| 1.7.0 |") < kept.index("| 1.15.0 |") and "| why |" in kept


def test_readme_table_is_the_generated_one() -> None:
    """The README's block is rewritten by `tox -e report` together with docs/support-matrix.md: the same rows."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(support.README_START):readme.index(support.README_END)]
    generated = (ROOT / "docs" / "support-matrix.md").read_text()
    rows = [line for line in block.splitlines() if re.match(r"\| \d", line)]
    assert rows, "the README's support-matrix block has no version rows"
    for line in rows:
        assert line in generated, f"README row not in docs/support-matrix.md (hand-edited?): {line}"
    assert support.not_runnable_table() in block and support.not_runnable_table() in generated
