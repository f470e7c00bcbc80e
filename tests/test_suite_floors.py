"""No silent shrinking (issue 21): the committed floors are what the profiles give (regenerate with
``python -m harness.floors`` when the suite grows), every property of every conformance env has a floor or a reason,
the pytest face holds a full env run to them and says why a narrowed one is exempt, and CI refuses a program budget
below an env's floor. The leaving runs of P8-leak are scenarios of their own in the ci profile on every backend."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.floors import DEFAULT_PATH, ENVS, EnvFloor, env_of, load, render, shortfalls
from harness.properties import CODES, REGISTRY, applicable
from harness.properties.hygiene import override_left_set
from harness.scenario import BACKENDS, leaving_runs, profile

ROOT = Path(__file__).resolve().parent.parent


def test_the_committed_floors_are_the_profiles_counts() -> None:
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), "run `python -m harness.floors` and commit the file"


def test_every_property_has_a_floor_or_a_reason_in_every_conformance_env() -> None:
    floors = load()
    assert set(floors) == set(ENVS)
    for env in floors.values():
        if env.paths == ("conformance",):
            assert set(env.verdicts) | set(env.none) == set(CODES), env.name
            assert not set(env.verdicts) & set(env.none) and all(n > 0 for n in env.verdicts.values())


def test_a_shrunk_run_lacks_and_a_full_one_does_not() -> None:
    env = EnvFloor("e", ("ds0",), ("conformance",), 20, {"P2": 10, "P6": 5}, {"P7": "why"})
    assert shortfalls(env, {"P2": 10, "P6": 5}, ("P2", "P6", "P7")) == []
    assert shortfalls(env, {"P2": 9, "P6": 5}, ("P2", "P6", "P7")) == ["P2: 9 verdicts, the floor is 10"]
    assert shortfalls(env, {"P2": 10, "P6": 5}, ("P2", "P6", "P7", "P9")) == [
        "P9: no verdict, and e lists no reason why it cannot apply"]
    programs_only = EnvFloor("programs", None, ("conformance/test_programs.py",), 150, {}, {})
    assert shortfalls(programs_only, {}, CODES) == []


def test_an_env_is_named_by_its_backends_and_paths() -> None:
    floors = load()
    assert env_of(floors, ["ds1off", "ds1"], ["conformance"]).name == "ds-zero1"
    assert env_of(floors, None, ["conformance/test_programs.py"]).name == "programs"
    assert env_of(floors, ["ds1"], ["conformance"]) is None  # narrowed by --accumgate-backends
    assert env_of(floors, ["ds0"], ["conformance/test_grad_norm.py"]) is None  # narrowed to one file


def test_ci_refuses_a_program_budget_below_the_env_s_floor(tmp_path) -> None:
    command = [sys.executable, "-m", "pytest", "conformance", "--accumgate-backends", "ds0", "--collect-only", "-q",
               "-p", "no:cacheprovider"]
    env = {"PATH": "", "CI": "1", "ACCUMGATE_PROGRAMS": "0", "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 4 and "below ds-zero0's floor of 20" in refused.stdout + refused.stderr
    env.pop("CI")
    allowed = subprocess.run(command + ["-k", "P6"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert allowed.returncode in (0, 5), allowed.stdout[-2000:] + allowed.stderr[-2000:]


def test_the_leaving_runs_are_judged_in_the_ci_profile_on_every_backend() -> None:
    assert {s.backend for s in leaving_runs()} == set(BACKENDS)
    leak = REGISTRY["P8-leak"]
    for env in ENVS.values():
        if env["backends"] is None:
            continue
        chosen = set(profile("ci", env["backends"]))  # the env's own selection (cached from the floors' rendering)
        assert set(leaving_runs(env["backends"])) <= chosen
        follow_ups = [s for s in chosen if leak in applicable(s, "reference")]
        assert follow_ups and all(override_left_set(s) in chosen for s in follow_ups), env
