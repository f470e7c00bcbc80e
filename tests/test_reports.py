"""Reports and the gate: merging runs from different envs and versions, the gate's verdicts, clear errors
for bad files, and the page itself: verdict counts, the stack × property heatmap, the scenario × property grid, the
margin plots and the curves (parsed always; painted in a real headless Chromium where installed, which .ci/run
installs). Margin and self-proof fields are set on the verdicts by hand: the page reads them where results carry them."""
from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness import cli
from harness.reports.browser import chromium, screenshot
from harness.reports.gate import compare
from harness.reports.merge import Merged, merge
from harness.reports.render import render_html, render_markdown, write_reports
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


def _with_margins(merged: Merged, margins: dict[str, list[float]]) -> Merged:
    """Give every P2 verdict per-step margins (by scenario id prefix), as the tolerance-aware judge records them, and
    self-proof fields: one fault declared, caught."""
    for outcome in merged.outcomes:
        for prefix, values in margins.items():
            if outcome.scenario.startswith(prefix):
                verdict = outcome.properties["P2"]
                verdict.margins = [[f"step {i + 1} of {len(values)}", m] for i, m in enumerate(values)]
                verdict.margin = max(values)
                verdict.faults, verdict.proven = ["one tensor's gradient zeroed"], ["one tensor's gradient zeroed"]
    return merged


MARGINS = {"ds3-kwarg": [0.02, 0.3, 0.05], "ds3-auto": [1e-4, 0.0, 2e-3], "ddp-kwarg": [0.5, 0.25, 0.125]}


def test_page_is_self_contained_and_shows_every_view(two_envs: Path) -> None:
    page = render_html(_with_margins(merge([two_envs]), MARGINS))
    parser = _Page()
    parser.feed(page)
    images = [a for t, a in parser.tags if t == "img"]
    assert images and all(a["src"].startswith("data:image/png;base64,") for a in images)
    # A margin figure per (stack, property) with margins: P2 on both stacks; no curve lies off the oracle here.
    assert sorted(a["alt"] for a in images) == ["margins P2 · reference · accelerate 1.15.0 · deepspeed 0.15.4",
                                                "margins P2 · reference · accelerate 1.15.0 · deepspeed 0.19.8"]
    assert not [a for t, a in parser.tags if t in ("link", "script")], "no external resources"
    assert "http://" not in page and "https://" not in page
    assert 'id="properties"' in page and 'id="margins"' in page and 'id="grid"' in page
    assert "deepspeed 0.15.4" in page and "ds3-kwarg-uni4" in page
    assert 'class="cell fail"' in page and 'class="cell pass"' in page


def test_headlines_count_verdicts_not_scenarios(two_envs: Path, tmp_path: Path, capsys) -> None:
    """5 scenarios of 2 verdicts each: the headline says 10 verdicts (1 fail, 9 pass), in the page, matrix.md and the
    report command's own line."""
    merged = merge([two_envs])
    assert "10 (scenario, property) verdicts of 5 scenarios" in render_html(merged)
    assert render_markdown(merged).splitlines()[2] == "10 (scenario, property) verdicts of 5 scenarios: 9 pass, 1 fail"
    assert cli.main(["report", str(two_envs), "--out", str(tmp_path / "out")]) == 0
    assert "10 (scenario, property) verdicts of 5 scenarios (9 pass, 1 fail)" in capsys.readouterr().out
    cell = merged.grid("reference · accelerate 1.15.0 · deepspeed 0.15.4")["ds3"]["kwarg"]
    assert dict(cell.counts) == {"fail": 1, "pass": 1}  # the backend × style summary counts verdicts too


class _GridRows(HTMLParser):
    """The rows of the scenario × property tables: (scenario, [(cell class, text)] per property column)."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[str] = []
        self.rows: list[tuple[str, list[tuple[str, str]]]] = []
        self._in_grid = self._in_cell = False
        self._cells: list[tuple[str, str]] = []
        self._class = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._in_grid = attrs.get("class") == "grid"
        elif self._in_grid and tag == "tr":
            self._cells = []
        elif self._in_grid and tag in ("td", "th"):
            self._in_cell, self._class = True, attrs.get("class", "")
            self._cells.append((self._class, ""))

    def handle_data(self, data):
        if self._in_grid and self._in_cell and self._cells:
            cls, text = self._cells[-1]
            self._cells[-1] = (cls, text + data.strip())

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False
        elif self._in_grid and tag == "tr" and self._cells:
            head, *rest = self._cells
            if head[1] == "scenario":
                self.codes = [text for _, text in rest]
            else:
                self.rows.append((head[1], rest))
        elif tag == "table":
            self._in_grid = False


def test_the_grid_has_a_cell_per_scenario_and_property(two_envs: Path) -> None:
    """Scenario × property: the failing P2 of ds3-kwarg on 0.15.4 is the one red cell, in its row and column, with its
    margin; the scenarios are grouped by backend, then API style, and a group holding a failure is unfolded."""
    page = render_html(_with_margins(merge([two_envs]), MARGINS), sections=("grid",))
    grid = _GridRows()
    grid.feed(page)
    assert grid.codes == ["P2", "P4"] and len(grid.rows) == 5
    failing = [(scenario, cells) for scenario, cells in grid.rows if any("fail" in cls for cls, _ in cells)]
    assert [scenario for scenario, _ in failing] == ["ds3-kwarg-uni4"]
    (p2_class, p2_text), (p4_class, p4_text) = failing[0][1]
    assert p2_class == "v fail" and p2_text == "✘0.3" and p4_class == "v pass" and p4_text == "✔"
    assert page.count('<details class="backend" open>') == 1 and page.count('<details class="style" open>') == 1
    assert 'id="margins"' not in page and 'id="properties"' not in page, "only the section asked for"


def test_heatmap_rows_are_stacks_and_cells_say_judged_excused_and_proven() -> None:
    """Rows accelerate × deepspeed × stage; a cell's share judged vs excused counts xfail as excused; proven counts the
    verdicts whose declared faults were caught; results without the fields say so instead of a number."""
    from harness.reports.views import heatmap

    outcomes = [_o("ds3-kwarg-uni4", "xfail", known="line 1 (bug)"), _o("ds3off-kwarg-uni4"), _o("ds3-auto-uni4"),
                _o("ddp-auto-uni4")]
    for o in outcomes:
        o.env = "reference · accelerate 1.15.0 · deepspeed 0.19.8"
    merged = Merged(runs=[], outcomes=outcomes)
    _with_margins(merged, {"ds3-auto": [0.1, 0.2], "ds3-kwarg": [2.0, 3.0]})
    outcomes[2].properties["P2"].proven = []  # a fault declared and not caught
    rows, codes = heatmap(outcomes)
    assert codes == ["P2", "P4"] and [r.stage for r in rows] == ["ddp", "ZeRO-3", "ZeRO-3 +offload"]
    zero3 = rows[1].cells["P2"]
    assert (zero3.total, zero3.judged, zero3.excused, zero3.worst) == (2, 1, 1, "xfail")
    assert zero3.proven_text() == "proven 1/2" and zero3.worst_margin == 3.0
    assert [o for o, _ in zero3.shares()] == ["pass", "xfail"] and sum(s for _, s in zero3.shares()) == 1.0
    assert rows[0].cells["P2"].proven_text() == "proof —" and rows[0].cells["P2"].worst_margin is None
    page = render_html(merged, sections=("properties",))
    assert "1 judged · 1 excused" in page and "proven 1/2 · margin 3" in page and "proof —" in page


def test_margin_series_take_the_worst_per_location_and_single_points_are_not_drawn() -> None:
    from harness.reports.plots import margin_figures, margin_series

    outcomes = [_o("ds3-kwarg-uni4"), _o("ds3-kwarg-dyn3142"), _o("ds3-auto-uni4"), _o("ddp-auto-uni4")]
    for o in outcomes:
        o.env = "E"
    merged = _with_margins(Merged(runs=[], outcomes=outcomes), {"ds3-kwarg-uni4": [0.1, 0.5], "ds3-kwarg-dyn": [0.3, 0.2, 0.9],
                                                                "ds3-auto": [0.0, 1e-3]})
    outcomes[3].properties["P2"].margins = [["step 1 of 1", 0.7]]  # ddp: one location only
    series = margin_series(merged.outcomes)
    assert series[("E", "P2")]["ds3"] == {"kwarg": [0.3, 0.5, 0.9], "auto": [0.0, 1e-3]}
    assert series[("E", "P2")]["ddp"] == {"auto": [0.7]}
    figures, left, single = margin_figures(merged.outcomes, limit=10)
    assert [f.title for f in figures] == ["P2 · E"] and left == 0 and single == [] and figures[0].worst == 0.9
    _with_margins(merged, {"ds3": [0.4]})  # now every series has one point: nothing drawn, the pair is named
    assert margin_figures(merged.outcomes, limit=10)[0] == [] and margin_figures(merged.outcomes, 10)[2] == ["P2 (E)"]


def test_curves_on_the_oracle_and_one_point_charts_are_not_drawn() -> None:
    from harness.reports.plots import drawn_curves, figure_png

    on_oracle = _o("ds3-kwarg-uni4")
    on_oracle.curves["loss"] = [v + 5e-8 for v in on_oracle.curves["oracle_loss"]]
    assert drawn_curves([on_oracle]) == {} and figure_png([on_oracle], "t") is None
    parted = _o("ds3-auto-uni4")
    parted.curves["loss"] = [3.0, 2.0, 1.5 + 1e-3]
    parted.curves["grad_norm"] = [2.5]  # parts from the oracle, but one point is no chart
    assert drawn_curves([on_oracle, parted]) == {"loss": [("auto", [3.0, 2.0, 1.5 + 1e-3])]}
    assert figure_png([on_oracle, parted], "t")


def test_report_warns_when_a_shard_is_missing(tmp_path: Path, capsys) -> None:
    """Three of four shards merged: the report and the gate say which shard is missing (the gate also counts its
    verdicts as missing); all four: no warning."""
    for index in (1, 2, 4):
        run = _run("reference", "0.19.8", [_o(f"ds3-kwarg-uni4{index}")])
        run.selection = {"profile": "quick", "k": None, "shard": f"{index}/4"}
        write_all(run, tmp_path / f"shard{index}")
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "warning: shard 3/4 of reference · accelerate 1.15.0 · deepspeed 0.19.8 (profile quick) missing" in out
    assert "shard 3/4" in (tmp_path / "out" / "matrix.md").read_text()
    run = _run("reference", "0.19.8", [_o("ds3-kwarg-uni43")])
    run.selection = {"profile": "quick", "k": None, "shard": "3/4"}
    write_all(run, tmp_path / "shard3")
    assert not merge([tmp_path / f"shard{i}" for i in (1, 2, 3, 4)]).warnings


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (.ci/run installs it)")
def test_page_renders_in_a_real_browser(two_envs: Path, tmp_path: Path) -> None:
    """Headless Chromium paints the page: the heatmap's pass green and fail red, and the margin plot (its lines in the
    API styles' colours) on the first screen; the grid alone paints its cells too."""
    import matplotlib.image

    def colours(shot: Path, height: int) -> set[tuple[int, int, int]]:
        pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
        assert pixels.shape[:2] == (height, 1200)
        return {tuple(p) for p in pixels.reshape(-1, 3)}

    def near(found: set, colour: tuple[int, int, int]) -> bool:
        return any(sum(abs(a - b) for a, b in zip(c, colour)) <= 24 for c in found)

    merged = _with_margins(merge([two_envs]), MARGINS)
    write_reports(merged, tmp_path / "out")
    top = colours(screenshot(tmp_path / "out" / "matrix.html", tmp_path / "top.png", height=1400), 1400)
    assert (0xDA, 0xFB, 0xE1) in top and (0xFF, 0xD7, 0xD5) in top, "pass and fail cells not painted"
    assert near(top, (0xFF, 0x7F, 0x0E)) and near(top, (0x1F, 0x77, 0xB4)), "margin plot (kwarg, auto lines) not painted"
    grid_page = tmp_path / "grid.html"
    grid_page.write_text(render_html(merged, sections=("grid",)))
    grid = colours(screenshot(grid_page, tmp_path / "grid.png", height=700), 700)
    assert (0xDA, 0xFB, 0xE1) in grid and (0xFF, 0xD7, 0xD5) in grid, "grid cells not painted"
    assert not near(grid, (0xFF, 0x7F, 0x0E)), "the grid page holds no plot"


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


def test_explore_shards_of_one_exploration_merge_as_one(tmp_path: Path) -> None:
    """Explore shards differ in the backends each explored (``shard_part``), not in what was asked: one set."""
    from harness.reports.merge import missing_shards

    runs = []
    for index, part in ((1, ["single", "ds3"]), (2, ["ddp", "ds1"]), (3, ["ds0", "ds2"])):
        run = _run("reference", "0.19.8", [])
        run.selection = {"explore": ["single", "ddp", "ds0", "ds1", "ds2", "ds3"], "examples": 150, "seed": None,
                         "shard": f"{index}/3", "shard_part": part}
        runs.append((tmp_path / f"{index}" / "results.json", run))
    assert missing_shards(runs) == []
    assert missing_shards(runs[:2]) == ["shard 3/3 of reference · accelerate 1.15.0 · deepspeed 0.19.8 (examples 150, "
                                        "explore ['single', 'ddp', 'ds0', 'ds1', 'ds2', 'ds3']) missing: its verdicts are "
                                        "not in this report"]
