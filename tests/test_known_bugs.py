"""Known upstream bugs excuse their signature and nothing else: the grammar of xfails lines, what a line makes of a
run, the shipped lines and catalogue (package data, applied by default), the known-bugs page (no world needed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import replay, xfails
from harness.reports import support

ROOT = Path(__file__).resolve().parent.parent
SID = "ds0-kwarg-uni4-adamw-bf16-clip1-w2"
DEEPSPEED_5104 = "ds0-[!p]*-adamw-bf16-*  P2:param,P5:param  [deepspeed>=0.18.6]  deepspeed#5104: step counter at 1\n"
NEW = {"accelerate": "1.15.0", "deepspeed": "0.19.8"}


@pytest.mark.parametrize(("label", "quantity"), [
    ("grad[fc1.weight]", "grad"), ("param (the step)[fc2.bias]", "param"), ("param (the step, bf16 copies)[w]", "param"),
    ("param[fc1.bias]", "param"), ("loss", "loss"), ("micro-batch losses", "loss"), ("window loss", "loss"),
    ("engine.get_global_grad_norm()", "norm"), ("optimizer_step_and_zero_grad() (pre-clip norm)", "norm"),
    ("what optimizer_step_and_zero_grad() returned", "norm"), ("lr used by the step", "lr"),
    ("learning rate", "lr"), ("optimizer steps", "steps"), ("engine.global_steps", "counters"),
    ("engine.micro_steps (engine.step() calls)", "counters"), ("engine_micro_steps", "counters"),
    ("accelerator.sync_gradients", "sync"), ("collectives", "comm"), ("gradients", "comm"),
    ("leftover grad[fc1.weight]", "leftover"), ("the gradients left behind", "leftover"), ("outcome", "outcome"),
    ("client test_sync", "client"), ("ranks vs accumulate()", "ranks"), ("pre-clip gradients", "grad"),
    ("something new", "other"),
])
def test_every_label_the_properties_use_has_its_quantity(label: str, quantity: str) -> None:
    assert xfails.quantity(label) == quantity


def test_a_signature_counts_quantities_by_step() -> None:
    found = [("param (the step)[w]", "rank 0 · step 1 of 4 (micro-batch 3)"), ("param[w]", "rank 1 · step 1 of 4"),
             ("loss", "rank 0 · micro-batch 2")]
    assert xfails.signature(found) == {"param@1": 2, "loss": 1}
    assert xfails.signature([], "error") == {"error": 1}


def test_the_5104_line_excuses_parameters_only() -> None:
    """The bug touches the parameters after AdamW steps: a loss or a gradient of the same verdict is still judged,
    and a verdict that shows one stays a failure that names the line (the known failure changed)."""
    lines = xfails.parse(DEEPSPEED_5104)
    excused = xfails.judge(lines, SID, "P2", "fail", {"param@1": 4, "param@2": 4}, versions=NEW)
    assert excused.outcome == "xfail" and excused.lines[0].bug == "deepspeed#5104"
    beyond = xfails.judge(lines, SID, "P2", "fail", {"param@1": 4, "grad@1": 1}, versions=NEW)
    assert beyond.outcome == "fail" and beyond.beyond == {"grad@1": 1}
    assert beyond.known.startswith("known failure changed: the run also shows grad@1 ×1")
    assert xfails.judge(lines, SID, "P4", "fail", {"steps": 1}, versions=NEW).outcome == "fail"  # not its property
    assert xfails.judge(lines, SID, "P2", "error", None, "RuntimeError: boom", NEW).outcome == "error"
    assert xfails.judge(lines, SID, "P2", "pass", {}, versions=NEW).outcome == "xpass"  # strict: fixed means remove it
    assert xfails.judge(lines, SID, "P2", "fail", {"param@1": 1}, versions={"deepspeed": "0.18.2"}).outcome == "fail"
    assert xfails.judge(lines, SID, "P2", "fail", {}, versions=NEW).outcome == "fail"  # a failure of unknown shape


def test_step_ranges_error_texts_and_several_lines() -> None:
    lines = xfails.parse("ds3*-*  P2:param@2-  [*]  late bug\n"
                         "ds3*-*  *:error~SplitBackward0  [*]  crash\n"
                         "ds3*-*  P2:grad@1  [*]  early bug\n")
    sid = "ds3-auto-uni4-sgd-fp32-clip1-w2"
    assert xfails.judge(lines, sid, "P2", "fail", {"param@3": 1, "grad@1": 2}).outcome == "xfail"  # two lines together
    assert xfails.judge(lines, sid, "P2", "fail", {"param@1": 1}).outcome == "fail"
    assert xfails.judge(lines, sid, "P2", "fail", {"param": 1}).outcome == "fail"  # no step: outside a step range
    assert xfails.judge(lines, sid, "P7", "error", None, "RuntimeError: Output 0 of SplitBackward0 is a view").outcome \
        == "xfail"
    assert xfails.judge(lines, sid, "P7", "error", None, "RuntimeError: another crash").outcome == "error"


def test_a_nonstrict_line_lets_a_pass_pass_and_names_itself() -> None:
    lines = xfails.parse("ds3*-*  P2:param  [*; nonstrict]  deepspeed#8539: race, about 1 run in 10\n")
    judged = xfails.judge(lines, "ds3-auto-uni4-sgd-fp32-clip1-w2", "P2", "pass", {})
    assert judged.outcome == "pass" and "known intermittent" in judged.known


def test_the_shipped_lines_parse_and_name_catalogue_entries() -> None:
    ids = {bug.id for bug in replay.load()}
    for target in ("reference", "native"):
        for line in xfails.load(xfails.shipped_file(target)):
            assert line.items and line.reason
            if target == "reference" or "5104" in line.reason:
                assert line.bug in ids, f"{line.text()}: its thread {line.bug!r} has no catalogue entry"
    assert not any(item.code == "*" and "error" not in item.quantities
                   for line in xfails.load(xfails.shipped_file("reference")) for item in line.items)


def test_known_bugs_are_applied_by_default_for_the_installed_versions() -> None:
    entries, said = xfails.for_run("reference", versions=NEW)
    assert entries and said[0].startswith("known upstream bugs (package data):") and "deepspeed#5104" in said[0]
    assert "accelerate 1.15.0, deepspeed 0.19.8" in said[0]
    none, said = xfails.for_run("reference", known_bugs=False, versions=NEW)
    assert none == [] and "--no-known-bugs" in said[0]
    native, _ = xfails.for_run("native", versions=NEW)
    assert any("P9" in line.properties for line in native)


def test_a_vendors_file_adds_to_the_shipped_lines(tmp_path) -> None:
    own = tmp_path / "ours.txt"
    own.write_text("ds2-*  P2:grad  [*]  fork#12: our own bug\n")
    entries, said = xfails.for_run("mypkg.accel:Accelerator", [own], versions=NEW)
    assert entries[-1].reason == "fork#12: our own bug" and said[-1].startswith(f"{own}: 1 of 1 lines hold")
    alone, _ = xfails.for_run("mypkg.accel:Accelerator", [own], known_bugs=False, versions=NEW)
    assert [line.reason for line in alone] == ["fork#12: our own bug"]


def test_catalogue_entries_5104_and_3762_replay_with_their_signature() -> None:
    from harness.results import Outcome, Verdict

    bugs = {bug.id: bug for bug in replay.load()}
    ds5104, acc3762 = bugs["deepspeed#5104"], bugs["accelerate#3762"]
    assert ds5104.status == "open" and ds5104.role(NEW) == "affected" and ds5104.role({"deepspeed": "0.18.2"}) == "neither"
    assert ds5104.repro and acc3762.role({"accelerate": "1.10.1"}) == "affected"
    assert acc3762.role({"accelerate": "1.11.0"}) == "fixed"

    def failing(shown: dict) -> Outcome:
        return Outcome("ds0-auto-uni4-adamw-bf16-clip1-w2", "fail",
                       properties={"P2": Verdict("P2", "P2 backend≡oracle", "fail", [], 1, raw="fail", signature=shown)})

    assert replay.verdict(ds5104, "affected", failing({"param@1": 3})) == "reproduced"
    assert replay.verdict(ds5104, "affected", failing({"param@1": 3, "loss": 1})) == "reproduced beyond its signature"


def test_the_known_bugs_page_lists_each_entry_with_its_lines_replay_and_repro() -> None:
    bugs = replay.load()
    lines = {"reference.txt": xfails.load(xfails.shipped_file("reference"))}
    rows = replay.table(bugs, [replay.ReplayRow("deepspeed#5104", "ds0-auto-uni4-adamw-bf16-clip1-w2", "native",
                                                "affected", "fail", "P2 backend≡oracle (param@1)", "reproduced", NEW)])
    page = support.known_bugs_page(bugs, lines, rows, today="2026-12-06")
    section = page[page.index("## [deepspeed#5104]"):]
    section = section[:section.index("\n## ")]
    assert "(https://github.com/deepspeedai/DeepSpeed/issues/5104)" in page and "**status**: **open, live**" in section
    assert "`P2:param,P5:param`" in section and "reproduced (2026-12-06)" in section
    assert "docs/known-bugs/repros/deepspeed-5104.py" in section


@pytest.mark.world
def test_under_the_5104_line_a_gradient_bug_still_fails(world) -> None:
    """The scenario deepspeed#5104 touches, judged with the shipped lines: the reference's verdict is xfail (its
    parameters only); a mutant that scales the loss by 1/G once more deviates in losses' gradients too, and the same
    line no longer excuses it: fail, naming the line, the gradient deviation shown first."""
    from harness.runner import Runner, WorldPool
    from harness.scenario import Scenario

    scenario = Scenario("ds0", "kwarg", "uni4", optimizer="adamw", precision="bf16")
    lines, _ = xfails.for_run("reference")
    pool = WorldPool()
    pool.worlds[2] = world  # the session's warm world (tests/conftest.py): no world of its own to start
    reference = Runner("reference", xfails=lines, pool=pool).verdict(scenario, "P2")
    mutant = Runner("tests.mutants.double_scale:Accelerator", xfails=lines, pool=pool).verdict(scenario, "P2")
    assert reference.outcome == "xfail" and set(k.split("@")[0] for k in reference.signature) == {"param"}
    assert mutant.outcome == "fail" and "grad" in {k.split("@")[0] for k in mutant.signature}
    assert mutant.known.startswith("known failure changed") and "deepspeed#5104" in mutant.known
    assert xfails.quantity(mutant.deviations[0]["tensor"]) != "param"


def test_the_explorer_names_the_known_bug_a_program_showed() -> None:
    """A program whose verdict a known bug's line excused is reported as that bug, not silently dropped."""
    from harness.explore import known_bugs_seen
    from harness.results import Outcome, Verdict

    lines = xfails.parse("ds0-program-*-adamw-bf16-*  P5:param  [*; nonstrict]  deepspeed#5104: 38 of 39 programs\n")
    shown = Outcome("ds0-program-g1-adamw-bf16-clip1-w2-865955e1df", "xfail",
                    properties={"P5": Verdict("P5", "P5 dynamic", "xfail", raw="fail", signature={"param@1": 4})})
    spared = Outcome("ds0-program-g1-adamw-bf16-clip1-w2-0000000000", "pass",
                     properties={"P5": Verdict("P5", "P5 dynamic", "pass", raw="pass")})
    assert known_bugs_seen([shown, spared], lines) == {"deepspeed#5104": [shown.scenario]}


def test_the_support_matrix_lists_what_is_live_on_the_default_stack_with_its_repro() -> None:
    """Issue 24: every catalogue entry affecting the default stack (deepspeed#5104 and transformers#47688 at least) is
    listed, each with an upstream-only repro that exists; a bug fixed before the default stack is not."""
    bugs = replay.load(None)
    table = support.live_table(bugs, [])
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| bug", "|---"))]
    assert len(rows) >= 2
    assert "deepspeed#5104" in table and "transformers#47688" in table
    assert "accelerate#3552" not in table  # fixed in accelerate 1.8
    for line in rows:
        repro = line.split(" | ")[-2].strip("`")
        assert (ROOT / repro).exists(), line
