"""``--shard K/N``: the N shards of a selection are a partition of it (every scenario once, a batch-split group on one
shard), the same on every machine whatever order the scenarios came in, balanced by the committed durations, and the
same partition in both faces. The world test at the end runs the quick profile in 4 shards through the CLI and
compares the merged verdicts with the unsharded run's."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness import cli
from harness.scenario import profile
from harness.selection import SelectionError, scenarios
from harness.shards import (
    DURATIONS_FILE,
    Durations,
    Shard,
    ShardError,
    balance,
    durations_from,
    load_durations,
    loads,
    parse_shard,
    partition,
    select_shard,
    shard_backends,
    unit_of,
)


@pytest.mark.parametrize("text", ["0/4", "5/4", "1", "a/b", "1/0", "2/-1"])
def test_a_shard_must_be_k_of_n(text: str) -> None:
    with pytest.raises(ShardError, match="expected K/N"):
        parse_shard(text)


def test_parse_shard() -> None:
    assert parse_shard("2/4") == Shard(2, 4) and str(parse_shard("1/1")) == "1/1" and parse_shard(None) is None


@pytest.mark.parametrize(("name", "count"), [("quick", 4), ("ci", 7), ("full", 16)])
def test_shards_partition_the_profile_in_its_own_order(name: str, count: int) -> None:
    found = profile(name)
    shards = partition(found, count, load_durations())
    assert len(shards) == count
    union = [s for shard in shards for s in shard]
    assert sorted(s.id for s in union) == sorted(s.id for s in found), "every scenario exactly once"
    position = {s: i for i, s in enumerate(found)}
    assert all([position[s] for s in shard] == sorted(position[s] for s in shard) for shard in shards)
    for shard in shards:  # a batch split runs where its group's reference run is
        units = {unit_of(s) for s in shard}
        assert not any(unit_of(s) in units for other in shards if other is not shard for s in other)


def test_the_partition_does_not_depend_on_the_order_scenarios_came_in() -> None:
    found = profile("ci")
    shuffled = list(found)
    random.Random(7).shuffle(shuffled)
    durations = load_durations()
    assert [sorted(s.id for s in shard) for shard in partition(found, 4, durations)] == \
        [sorted(s.id for s in shard) for shard in partition(shuffled, 4, durations)]


def test_ci_shards_are_balanced_within_20_percent_by_the_committed_durations() -> None:
    """The committed file measured the ci profile (benchmarks/shard_durations.py): every scenario of it has a
    duration, and the 4 shards' predicted loads are within 20 % of each other's mean."""
    durations = load_durations()
    found = profile("ci")
    assert not [s.id for s in found if s.id not in durations.scenarios], "ci scenarios without a measured duration"
    predicted = loads(partition(found, 4, durations), durations)
    mean = sum(predicted) / 4
    assert max(abs(p - mean) for p in predicted) <= 0.2 * mean, predicted


def test_longest_first_onto_the_least_loaded_shard() -> None:
    assert balance({"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 1.0}, 2) == {"a": 1, "b": 2, "c": 2, "d": 1, "e": 2}
    assert balance({"x": 1.0, "y": 1.0}, 3) == {"x": 1, "y": 2}  # more shards than units: the last one is empty


def test_an_unmeasured_scenario_costs_what_the_measured_ones_most_like_it_cost() -> None:
    quick = profile("quick")
    ds3 = [s for s in quick if s.backend == "ds3"]
    kwarg, auto = [s for s in ds3 if s.api == "kwarg"], [s for s in ds3 if s.api == "auto"]
    durations = durations_from({kwarg[0]: 0.5, auto[0]: 0.1, next(s for s in quick if s.backend == "ddp"): 0.2}, {}, "t")
    assert durations.seconds(kwarg[0]) == 0.5 and durations.seconds(kwarg[1]) == 0.5  # same backend, style, model
    set_boundary = next(s for s in ds3 if s.api == "set_boundary")
    assert durations.seconds(set_boundary) == pytest.approx(0.3)  # same backend and model
    single = next(s for s in quick if s.backend == "single")
    assert durations.seconds(single) == pytest.approx(0.8 / 3)  # nothing like it: the mean of all
    assert Durations().seconds(single) == 1.0  # nothing recorded: every scenario costs the same


def test_the_durations_file_round_trips_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    found = profile("quick")[:3]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(durations_from({s: 0.25 * (i + 1) for i, s in enumerate(found)}, {"ds3": 0.2}, "t").to_json()))
    loaded = load_durations(path)
    assert [loaded.seconds(s) for s in found] == [0.25, 0.5, 0.75] and loaded.program_seconds("ds3") == 0.2
    assert DURATIONS_FILE.is_file(), "the committed durations file ships next to harness/shards.py"
    for content, message in [("{", "not valid JSON"), ('{"schema": "x"}', "not an accumgate durations file"),
                             ('{"schema": "accumgate.durations", "scenarios": {"a": {}}}', "malformed entry")]:
        path.write_text(content)
        with pytest.raises(ShardError, match=message):
            load_durations(path)
    with pytest.raises(ShardError, match="cannot read"):
        load_durations(tmp_path / "missing.json")


def test_explore_shards_by_backend() -> None:
    backends = ["single", "ddp", "ds0", "ds1", "ds2", "ds3"]
    durations = Durations(programs={"single": 0.05, "ddp": 0.1, "ds0": 0.11, "ds1": 0.19, "ds2": 0.17, "ds3": 0.2})
    shards = [shard_backends(backends, Shard(k, 3), durations) for k in (1, 2, 3)]
    assert sorted(b for shard in shards for b in shard) == sorted(backends) and all(shards)
    assert shards == [["single", "ds3"], ["ddp", "ds1"], ["ds0", "ds2"]]  # each in the order asked
    with pytest.raises(ShardError, match="another --seed"):
        shard_backends(backends, Shard(1, 7), durations)


def test_the_shard_is_cut_before_k_so_k_never_moves_a_scenario() -> None:
    every = {s.id: k for k in (1, 2, 3) for s in scenarios("quick", shard=f"{k}/3")}
    narrowed = {s.id: k for k in (1, 2, 3) for s in scenarios("quick", k="ds3", shard=f"{k}/3")}
    assert narrowed and all(every[i] == k for i, k in narrowed.items())
    with pytest.raises(SelectionError, match="--durations"):
        scenarios("quick", durations="d.json")
    assert select_shard(profile("quick"), None) == profile("quick")


def test_list_shards_partition_the_cli_selection(capsys) -> None:
    assert cli.main(["list", "--profile", "ci"]) == 0
    whole = capsys.readouterr().out.split()
    parts = []
    for k in range(1, 5):
        assert cli.main(["list", "--profile", "ci", "--shard", f"{k}/4"]) == 0
        parts.append(capsys.readouterr().out.split())
    assert sorted(sum(parts, [])) == sorted(whole) and all(parts)
    assert cli.main(["list", "--shard", "5/4"]) == cli.EXIT_USAGE
    assert "expected K/N" in capsys.readouterr().err


def test_an_empty_shard_writes_an_empty_result_and_passes(tmp_path: Path, capsys) -> None:
    """More shards than the selection fills: the empty shard still reports (the merge counts shards), exit 0."""
    expr = "ds3 and uni4 and kwarg and not hold"  # one scenario: one of the two shards holds it, the other nothing
    empty = next(f"{k}/2" for k in (1, 2) if not scenarios("quick", k=expr, shard=f"{k}/2"))
    assert cli.main(["run", "-k", expr, "--report-dir", str(tmp_path), "--shard", empty]) == cli.EXIT_OK
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["scenarios"] == [] and data["selection"]["shard"] == empty
    assert "holds no scenario" in capsys.readouterr().err


def test_the_pytest_face_cuts_the_same_shards(tmp_path: Path) -> None:
    """``pytest conformance --accumgate-shard K/N --collect-only`` collects exactly the scenarios of ``accumgate list
    --shard K/N``, with every property of each."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "conformance", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "--accumgate-profile", "quick", "--accumgate-shard", "2/3", "--accumgate-programs", "0"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    from collections import Counter

    from harness.properties import applicable

    collected = Counter(line.split("[", 1)[1].rstrip("]") for line in done.stdout.splitlines() if "::" in line and "[" in line)
    assert collected == {s.id: len(applicable(s, "reference")) for s in scenarios("quick", shard="2/3")}


# ------------------------------------------------------------------------------------------------ a real world
def _verdicts(path: Path) -> dict[str, dict[str, str]]:
    data = json.loads(path.read_text())
    return {s["scenario"]: {code: v["outcome"] for code, v in s["properties"].items()} for s in data["scenarios"]}


SELECTION = "ddp"


class _SharedWarmWorlds:
    """One warm pool for every `accumgate run` of the test (as if each machine's world had been warm already): the
    five runs pay one world start instead of five. Sound because a scenario in a warm world gives the bytes of a fresh
    launch in any order (tests/test_world.py); each run still has its own Runner, so every job runs again."""

    def __init__(self) -> None:
        from harness.runner import WorldPool

        self.pool = WorldPool()
        self.real_close = self.pool.close
        self.pool.close = lambda: []  # each run's end: keep the worlds warm for the next run

    def __call__(self, job_timeout_s: float = 120.0):
        self.pool.job_timeout_s = job_timeout_s
        return self.pool


@pytest.mark.world
@pytest.mark.harness
def test_four_shards_merged_give_the_unsharded_verdicts(tmp_path: Path, capsys, monkeypatch) -> None:
    """The quick profile's DDP scenarios (22: scenarios, programs and sentinels of a 2-rank world; the
    whole quick profile five times over would cost CI ~3 min) in 4 shards (each its own `accumgate run`, as on 4
    machines), merged by `accumgate report` and judged by `accumgate gate` against the unsharded run as its baseline:
    the same (scenario, property) verdicts, no regression, no missing shard."""
    import harness.runner

    shared = _SharedWarmWorlds()
    monkeypatch.setattr(harness.runner, "WorldPool", shared)
    try:
        assert cli.main(["run", "-k", SELECTION, "--report-dir", str(tmp_path / "whole")]) == cli.EXIT_OK
        for k in range(1, 5):
            assert cli.main(["run", "-k", SELECTION, "--shard", f"{k}/4",
                             "--report-dir", str(tmp_path / "shards" / f"{k}")]) == cli.EXIT_OK
    finally:
        shared.real_close()
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "shards"), "--out", str(tmp_path / "merged")]) == cli.EXIT_OK
    assert "warning" not in capsys.readouterr().out
    whole = _verdicts(tmp_path / "whole" / "results.json")
    listed = {s.id for s in scenarios("quick", k=SELECTION)}
    assert set(whole) == listed and len(listed) >= 20 and _verdicts(tmp_path / "merged" / "merged.json") == whole
    assert cli.main(["gate", "--baseline", str(tmp_path / "whole" / "results.json"), "--current",
                     str(tmp_path / "shards")]) == cli.EXIT_OK
    assert "0 regression(s)" in capsys.readouterr().out
