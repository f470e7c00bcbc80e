"""The command line's contract (exit codes, one-line errors) and the report files (atomic, valid, loadable)."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import cli, results, xfails
from harness.results import Outcome, ResultsError, RunResults, Verdict


@pytest.mark.parametrize("argv, message", [
    (["run", "--target", "nope"], "expected 'module:attribute'"),
    (["run", "--target", "no_such_module:Accelerator"], "cannot import"),
    (["run", "--target", "reference_impl:Nope"], "has no attribute"),
    (["run", "--profile", "quick", "-k", "ds3 and ("], "-k"),
])
def test_usage_errors_are_one_line_and_exit_2(argv, message, capsys) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_malformed_xfails_and_unwritable_report_dir_exit_2(tmp_path, capsys) -> None:
    bad = tmp_path / "xfails.txt"
    bad.write_text("ds3-*  P2:param\n")
    assert cli.main(["run", "--xfails", str(bad)]) == cli.EXIT_USAGE
    assert f"{bad}:1" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["run", "--report-dir", str(blocker / "sub")]) == cli.EXIT_USAGE
    assert "not writable" in capsys.readouterr().err


def test_list_selects_with_k(capsys) -> None:
    assert cli.main(["list", "--profile", "quick", "-k", "ds3 and uni4 and kwarg and not hold"]) == 0
    assert capsys.readouterr().out.split() == ["ds3-kwarg-uni4-sgd-fp32-clip1-w2"]


def test_env_prints_capabilities_as_json(capsys) -> None:
    assert cli.main(["env", "--json"]) == 0
    caps = json.loads(capsys.readouterr().out)
    assert caps["accelerate"] and "engine_boundary_api" in caps
    assert "target: grad_norm_source_zero0" in caps  # what the reference says of itself, through the target string


def test_xfails_parse_and_match_per_property() -> None:
    entries = xfails.parse("# c\n\nds1-*-bf16-*  P2:grad,P5:grad  [*]  deepspeed#7985: dropped gradient\n")
    assert xfails.match(entries, "ds1-kwarg-uni4-sgd-bf16-clip1-w2", "P2").reason == "deepspeed#7985: dropped gradient"
    assert xfails.match(entries, "ds1-kwarg-uni4-sgd-bf16-clip1-w2", "P4") is None  # a line excuses what it names
    assert xfails.match(entries, "ds2-kwarg-uni4-sgd-bf16-clip1-w2", "P2") is None


@pytest.mark.parametrize("line, message", [
    ("ds1-*  deepspeed#7985", "expected '<scenario-id pattern> <signature"),
    ("ds1-*  P2:grad  no versions given", "expected '<scenario-id pattern> <signature"),
    ("ds1-*  Q2:grad  [*]  reason", "is not a property code"),
    ("ds1-*  P2:grad  []  reason", "empty version condition"),
    ("ds1-*  P2  [*]  reason", "name the property and the quantity it excuses, e.g. P2:param"),
    ("ds1-*  P2:weights  [*]  reason", "weights is not a quantity"),
    ("ds1-*  *:param  [*]  reason", "only with error~TEXT"),
    ("ds1-*  P2:grad@3-1  [*]  reason", "first ≤ last"),
    ("ds1-*  P2:grad  [*; nonstrict]  a race", "how often it struck"),
])
def test_an_xfails_line_must_name_properties_and_versions(line: str, message: str) -> None:
    with pytest.raises(xfails.XfailsError, match=message):
        xfails.parse(line)


def _verdict(code: str, outcome: str, message: str = "", reason: str | None = None) -> Verdict:
    deviations = [{"prop": code, "where": "w", "tensor": "t", "message": message}] if message else []
    return Verdict(code, f"{code} name", outcome, deviations, len(deviations), reason)


def _results() -> RunResults:
    return RunResults(target="reference", wall_seconds=1.5, outcomes=[
        Outcome("ds3-a", "pass", 0.1, axes={"backend": "ds3"}, properties={"P2": _verdict("P2", "pass")}),
        Outcome("ds3-b", "fail", 0.2, axes={"backend": "ds3"},
                properties={"P2": _verdict("P2", "fail", "ds3-b · P2 · w · t\n  max |Δ| = 1"),
                            "P4": _verdict("P4", "pass")}),
        Outcome("ddp-c", "error", 0.3, axes={"backend": "ddp"}, errors={"1": "Traceback\nRuntimeError: boom"},
                properties={"P2": _verdict("P2", "error", reason="RuntimeError: boom")}),
        Outcome("ddp-d", "unsupported", reason="no is_final_micro_batch",
                properties={"P2": _verdict("P2", "unsupported", reason="no is_final_micro_batch")}),
        Outcome("ddp-e", "xfail", reason="bug #1", properties={"P2": _verdict("P2", "xfail", reason="bug #1")}),
        Outcome("ddp-f", "xpass", reason="bug #2", properties={"P2": _verdict("P2", "xpass", reason="bug #2")}),
    ])


def test_reports_round_trip_and_junit_is_valid(tmp_path) -> None:
    results.write_all(_results(), tmp_path)
    loaded = results.load(tmp_path / "results.json")
    assert [o.outcome for o in loaded.outcomes] == ["pass", "fail", "error", "unsupported", "xfail", "xpass"]
    assert loaded.outcomes[1].properties["P2"].deviation_count == 1 and loaded.outcomes[1].properties["P4"].outcome == "pass"
    assert json.loads((tmp_path / "results.json").read_text())["property_counts"]["pass"] == 2
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "6"
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "1")
    assert "ds3-b" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"schema": "other"}', "not an accumgate results file"),
    ('{"schema": "accumgate.results", "version": 99}', "schema version 99"),
    ('{"schema": "accumgate.results", "version": 1}', "schema version 1"),
    ('{"schema": "accumgate.results", "version": 2, "target": "x", "scenarios": [{"scenario": "a", "outcome": "pass", '
     '"properties": {"P2": {"code": "P2", "name": "P2", "outcome": "meh"}}}]}', "unknown outcome"),
])
def test_corrupt_or_foreign_results_give_a_clear_error(tmp_path, content, message) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message):
        results.load(path)


def test_interrupted_write_leaves_the_old_file_intact(tmp_path, monkeypatch) -> None:
    path = tmp_path / "summary.md"
    path.write_text("old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in Path(tmp_path).iterdir()] == ["summary.md"]


def test_xfails_version_conditions_limit_a_line_to_the_versions_it_names() -> None:
    entries = xfails.parse("ds1-*  P2:grad  [deepspeed==0.18.9]  deepspeed 0.18.9: Split view modified in place\n"
                           "ds2-*  P2:grad  [deepspeed>=0.18,<0.19; accelerate>=1.8]  both conditions\n")
    sid = "ds1-kwarg-uni4-sgd-fp32-clip1-w2"
    assert xfails.match(entries, sid, "P2", {"deepspeed": "0.18.9"}).line == 1
    assert xfails.match(entries, sid, "P2", {"deepspeed": "0.19.8"}) is None
    assert xfails.match(entries, sid, "P2", {}) is None  # not installed: the line is inert
    two = "ds2-auto-uni4-sgd-fp32-clip1-w2"
    assert xfails.match(entries, two, "P2", {"deepspeed": "0.18.2", "accelerate": "1.15.0"}).line == 2
    assert xfails.match(entries, two, "P2", {"deepspeed": "0.18.2", "accelerate": "1.7.0"}) is None


@pytest.mark.parametrize("line", ["ds1-* P2:grad [deepspeed==0.18.9", "ds1-* P2:grad [deepspeed==] reason",
                                  "ds1-* P2:grad [deepspeed==0.18.9]"])
def test_malformed_version_conditions_name_the_line(line: str) -> None:
    with pytest.raises(xfails.XfailsError, match=r"<xfails>:1"):
        xfails.parse(line)


def test_a_nonstrict_line_lets_an_intermittent_bug_pass() -> None:
    entries = xfails.parse("ds3*-*  P2:param  [deepspeed<0.19.8; nonstrict]  deepspeed#8539: race, 1 run in 10\n"
                           "ds1-*  P2:param  [*]  strict one\n")
    assert not xfails.match(entries, "ds3-auto-uni4-sgd-fp32-clip1-w2", "P2", {"deepspeed": "0.18.2"}).strict
    assert xfails.match(entries, "ds3-auto-uni4-sgd-fp32-clip1-w2", "P2", {"deepspeed": "0.19.8"}) is None
    assert xfails.match(entries, "ds1-auto-uni4-sgd-fp32-clip1-w2", "P2", {}).strict
