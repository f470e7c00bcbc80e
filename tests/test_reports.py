"""Reports and the gate: merging runs from different envs and versions, the gate's verdicts, clear errors
for bad files, and the page itself (parsed always; rendered in a real headless Chromium where installed,
which .ci/run installs)."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness import cli
from harness.reports.gate import compare
from harness.reports.merge import merge
from harness.reports.render import render_html, write_reports
from harness.results import Outcome, RunResults, Verdict, write_all


def _run(target: str, deepspeed: str, outcomes: list[Outcome]) -> RunResults:
    caps = {"torch": "2.13.0+cpu", "accelerate": "1.15.0", "deepspeed": deepspeed, "engine_boundary_api": True}
    return RunResults(target=target, outcomes=outcomes, environment={"capabilities": caps}, wall_seconds=1.0)


def _o(scenario: str, outcome: str = "pass", metric: float = 1e-8, where: str = "rank 0 · step 1",
       p4: str = "pass", reason: str | None = None, known: str | None = None) -> Outcome:
    """A scenario with two verdicts: P2 as ``outcome`` (with a deviation where it fails), P4 as ``p4``."""
    backend, api = scenario.split("-")[:2]
    api = {"setboundary": "set_boundary", "stepandzerograd": "step_and_zero_grad"}.get(api, api)
    curves = {"loss": [3.0, 2.0, 1.5], "oracle_loss": [3.0, 2.0, 1.5], "grad_norm": [2.0], "oracle_grad_norm": [2.0]}
    failing = outcome in ("fail", "xfail")
    deviations = [{"prop": "P2 backend≡oracle", "where": where, "tensor": "grad[w]",
                   "message": f"{scenario} · P2 backend≡oracle · {where} · grad[w]\n  max |Δ| = 1"}] if failing else []
    raw = {"xfail": "fail", "xpass": "pass"}.get(outcome, outcome)
    shown = {"grad": 1} if failing else {"error": 1} if outcome == "error" else {}
    properties = {"P2": Verdict("P2", "P2 backend≡oracle", outcome, deviations, len(deviations), reason, known, raw,
                                signature=shown),
                  "P4": Verdict("P4", "P4 boundaries", p4, raw=p4)}
    from harness.results import worst

    return Outcome(scenario, worst([outcome, p4]), 0.1, axes={"backend": backend, "api": api, "precision": "fp32",
                                                             "schedule": "uni4"}, metrics={"param_max_abs": metric},
                   curves=curves, properties=properties, reason=reason)


@pytest.fixture
def two_envs(tmp_path: Path) -> Path:
    write_all(_run("reference", "0.19.8", [_o("ds3-kwarg-uni4"), _o("ds3-auto-uni4"), _o("ddp-kwarg-uni4")]),
              tmp_path / "ds-zero3")
    write_all(_run("reference", "0.15.4", [_o("ds3-kwarg-uni4", "fail"), _o("ds3-auto-uni4")]),
              tmp_path / "ds015-zero3")
    return tmp_path


def test_merge_keeps_versions_apart(two_envs: Path) -> None:
    merged = merge([two_envs])
    assert len(merged.runs) == 2 and len(merged.outcomes) == 5
    assert merged.labels == ["reference · accelerate 1.15.0 · deepspeed 0.15.4",
                             "reference · accelerate 1.15.0 · deepspeed 0.19.8"]
    old = merged.grid("reference · accelerate 1.15.0 · deepspeed 0.15.4")
    assert old["ds3"]["kwarg"].worst == "fail" and old["ds3"]["auto"].worst == "pass"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_is_self_contained_and_shows_the_grid(two_envs: Path) -> None:
    page = render_html(merge([two_envs]))
    parser = _Page()
    parser.feed(page)
    images = [a["src"] for t, a in parser.tags if t == "img"]
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not [a for t, a in parser.tags if t in ("link", "script")], "no external resources"
    assert "http://" not in page and "https://" not in page
    assert page.count("<table>") >= 3 and "deepspeed 0.15.4" in page and "ds3-kwarg-uni4" in page
    assert 'class="cell fail"' in page and 'class="cell pass"' in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (.ci/run installs it)")
def test_page_renders_in_a_real_browser(two_envs: Path, tmp_path: Path) -> None:
    """Headless Chromium screenshot: the page paints, and both the pass green and the fail red are on it."""
    import matplotlib.image

    write_reports(merge([two_envs]), tmp_path / "out")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900", f"--screenshot={shot}",
                    (tmp_path / "out" / "matrix.html").as_uri()], check=True, capture_output=True, timeout=90)
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (900, 1200)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert (0xDA, 0xFB, 0xE1) in colours and (0xFF, 0xD7, 0xD5) in colours, "pass and fail cells not painted"


def _results(outcomes) -> RunResults:
    return _run("reference", "0.19.8", outcomes)


def _gate(before, after):
    base = merge_outcomes(before)
    return compare(base, merge_outcomes(after))


def merge_outcomes(outcomes) -> RunResults:
    run = _results(copy.deepcopy(outcomes))
    for o in run.outcomes:
        o.env = "reference · accelerate 1.15.0 · deepspeed 0.19.8"
    return run


@pytest.mark.parametrize(("after", "kind"), [
    (_o("ds3-kwarg-uni4", "fail"), "new failure"),
    (_o("ds3-kwarg-uni4", "error", reason="RuntimeError"), "new error"),
    (_o("ds3-kwarg-uni4", "unsupported", reason="no kwarg"), "newly unsupported"),
    (_o("ds3-kwarg-uni4", "xpass", known="line 3 (bug #1)"), "unexpected pass"),
    (_o("ds3-kwarg-uni4", "xfail", known="line 9 (added today)"), "newly xfailed"),
    (_o("ds3-kwarg-uni4", "pass", p4="fail"), "new failure"),
    (_o("ds3-kwarg-uni4", "pass", metric=5e-6), "metric grew"),
])
def test_gate_catches_each_regression_kind(after: Outcome, kind: str) -> None:
    changes = _gate([_o("ds3-kwarg-uni4")], [after])
    assert [c.kind for c in changes if c.regression] == [kind]


def test_gate_passes_an_unchanged_run_and_small_metric_moves() -> None:
    assert not [c for c in _gate([_o("ds3-kwarg-uni4")], [_o("ds3-kwarg-uni4", metric=3e-8)]) if c.regression]


def test_gate_sees_a_vanished_scenario_and_a_known_failure_that_moved() -> None:
    gone = _gate([_o("ds3-kwarg-uni4"), _o("ds3-auto-uni4")], [_o("ds3-kwarg-uni4")])
    assert sorted((c.kind, c.prop) for c in gone if c.regression) == [("missing", "P2"), ("missing", "P4")]
    moved = _gate([_o("ds3-kwarg-uni4", "xfail", where="rank 0 · step 1")],
                  [_o("ds3-kwarg-uni4", "xfail", where="rank 0 · step 3")])
    assert [c.kind for c in moved if c.regression] == ["known failure changed"]
    same = _gate([_o("ds3-kwarg-uni4", "xfail")], [_o("ds3-kwarg-uni4", "xfail")])
    assert not [c for c in same if c.regression]


def test_adding_an_xfail_line_cannot_silence_the_gate(tmp_path: Path, capsys) -> None:
    """Baseline green; the same evidence judged again with a new xfails line for one scenario: the gate exits 1 and
    --explain names it in one line."""
    from harness.reports.merge import rejudge
    from harness.xfails import parse

    green = _run("reference", "0.19.8", [_o("ds3-kwarg-uni4"), _o("ds3-auto-uni4")])
    write_all(green, tmp_path / "base")
    red = _run("reference", "0.19.8", [_o("ds3-kwarg-uni4", "fail"), _o("ds3-auto-uni4")])
    for outcome in red.outcomes:
        rejudge(outcome, parse("ds3-kwarg-uni4  P2:grad  [*]  silenced by hand\n"), {"deepspeed": "0.19.8"})
    assert red.outcomes[0].properties["P2"].outcome == "xfail"
    write_all(red, tmp_path / "now")
    assert cli.main(["gate", "--baseline", str(tmp_path / "base" / "results.json"), "--current",
                     str(tmp_path / "now"), "--explain"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("newly xfailed: ds3-kwarg-uni4 · P2 (pass → xfail)") and "1 regression(s)" in out[-1]


def test_gate_cli_exit_codes_and_baseline_update(two_envs: Path, tmp_path: Path, capsys) -> None:
    current = two_envs / "ds-zero3"
    baseline = tmp_path / "baseline.json"
    baseline.write_text((current / "results.json").read_text())
    assert cli.main(["gate", "--baseline", str(baseline), "--current", str(current)]) == 0
    assert cli.main(["gate", "--baseline", str(baseline), "--current", str(two_envs / "ds015-zero3")]) == 1
    out = capsys.readouterr().out
    assert "new scenario fail" in out and "missing" in out  # another stack: its verdicts are new, the baseline's gone
    assert cli.main(["gate", "--baseline", str(baseline), "--current", str(two_envs / "ds015-zero3"),
                     "--update-baseline"]) == 0
    assert cli.main(["gate", "--baseline", str(baseline), "--current", str(two_envs / "ds015-zero3")]) == 0


@pytest.mark.parametrize("content", ["{broken", json.dumps({"schema": "accumgate.results", "version": 2})])
def test_bad_files_are_a_one_line_usage_error(tmp_path: Path, content: str, capsys) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(content)
    assert cli.main(["gate", "--baseline", str(bad), "--current", str(bad)]) == 2
    assert cli.main(["report", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("accumgate: error:") for line in err)


def test_report_can_judge_recorded_outcomes_again_with_a_newer_xfails_file() -> None:
    """Triage after the fact: the run's evidence stays, the current xfails file (at the run's versions) decides."""
    from harness.reports.merge import rejudge
    from harness.xfails import parse

    entries = parse("ds1-*  P2:grad  [deepspeed==0.18.9]  split view bug\n"
                    "ds3*-*  P2:grad|error  [deepspeed<0.19.8; nonstrict]  race: 1 run in 10\n")
    old = {"deepspeed": "0.18.9"}
    failed = _o("ds1-auto-uni4-sgd-fp32-clip1-w2", "fail")
    rejudge(failed, entries, old)
    assert failed.outcome == "xfail" and "split view bug" in failed.properties["P2"].known
    rejudge(failed, entries, {"deepspeed": "0.19.8"})
    assert failed.outcome == "fail" and failed.properties["P2"].known is None
    passed = _o("ds1-auto-uni4-sgd-fp32-clip1-w2")
    rejudge(passed, entries, old)
    assert passed.outcome == "xpass"
    lucky = _o("ds3-auto-uni4-sgd-fp32-clip1-w2")
    rejudge(lucky, entries, old)
    assert lucky.outcome == "pass" and "race" in lucky.properties["P2"].known
    errored = _o("ds3-auto-uni4-sgd-fp32-clip1-w2", "error", reason="boom")
    rejudge(errored, entries, old)
    assert errored.outcome == "xfail"
    rejudge(errored, entries, {"deepspeed": "0.19.8"})
    assert errored.outcome == "error"
