"""The pytest face of the runner: one test function per property (``conformance/test_*.py``, a module per family),
parametrized by every scenario of the session's profile the property applies to (ids = scenario ids); options
mirror the CLI. It orchestrates nothing: every item asks the session's Runner for its (scenario, property) verdict,
and the report written at the end is the runner's, so ``pytest conformance`` and ``accumgate run`` on the same
selection give the same verdicts.

Options: --accumgate-target, --accumgate-profile, --accumgate-backends, --accumgate-xfails,
--accumgate-no-known-bugs, --accumgate-report-dir, --accumgate-timeout, --accumgate-shard (environment:
ACCUMGATE_TARGET, ACCUMGATE_PROFILE, ...).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

import pytest

from .scenario import PROFILES, Scenario

ZERO_MARKERS = {f"ds{n}": f"zero{n}" for n in range(4)} | {"ds1off": "zero1", "ds2off": "zero2", "ds3off": "zero3"}


def accumgate_property(code: str) -> pytest.MarkDecorator:
    """Marks the test of one property: parametrized by every scenario of the profile it applies to."""
    return pytest.mark.accumgate(code=code)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("accumgate", "accumgate conformance (mirrors `accumgate run`)")
    env = os.environ.get
    group.addoption("--accumgate-target", default=env("ACCUMGATE_TARGET", "reference"),
                    help="reference (default), native, or module:attribute")
    group.addoption("--accumgate-profile", default=env("ACCUMGATE_PROFILE", "ci"), choices=PROFILES,
                    help="scenario set (default ci: every pair of axis values, plus the batch-split groups)")
    group.addoption("--accumgate-backends", default=env("ACCUMGATE_BACKENDS"),
                    help="comma-separated backends; the profile is generated for these alone (pairwise within them)")
    group.addoption("--accumgate-xfails", action="append", default=[x for x in [env("ACCUMGATE_XFAILS")] if x],
                    help="a vendor's own known failures, added to the shipped known upstream bugs (repeatable)")
    group.addoption("--accumgate-no-known-bugs", action="store_true",
                    default=env("ACCUMGATE_NO_KNOWN_BUGS", "") not in ("", "0", "false"),
                    help="judge everything: apply none of the known upstream bugs shipped with accumgate")
    group.addoption("--accumgate-report-dir", default=env("ACCUMGATE_REPORT_DIR"),
                    help="write results.json, junit.xml and summary.md here at session end")
    group.addoption("--accumgate-shard", default=env("ACCUMGATE_SHARD"), metavar="K/N",
                    help="run only shard K of N of the profile (the CLI's partition: by scenario, balanced by recorded "
                         "durations; each backend's generated programs on one shard)")
    group.addoption("--accumgate-durations", default=env("ACCUMGATE_DURATIONS"), metavar="JSON",
                    help="balance the shards by this durations file (default: the one shipped with accumgate)")
    group.addoption("--accumgate-timeout", type=float, default=float(env("ACCUMGATE_TIMEOUT", "120")),
                    help="per-scenario timeout in seconds")
    group.addoption("--accumgate-programs", type=int, default=int(env("ACCUMGATE_PROGRAMS", "20")),
                    help="generated programs per backend (derandomized; default 20, the programs env 150)")
    group.addoption("--accumgate-floors", default=env("ACCUMGATE_FLOORS"),
                    help="floors of verdicts per env and property (default conformance/floors.toml)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "accumgate(code): the test of one property over generated scenarios")
    for name in sorted(registered_markers()):
        config.addinivalue_line("markers", f"{name}: scenario axis marker added by the accumgate plugin")
    from .targets import TargetError, target_path
    from .xfails import XfailsError, for_run

    try:
        target = config.getoption("accumgate_target")
        target_path(target)
        config._accumgate_xfails, config._accumgate_xfails_said = for_run(  # type: ignore[attr-defined]
            target, config.getoption("accumgate_xfails") or [], not config.getoption("accumgate_no_known_bugs"))
    except (TargetError, XfailsError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    _refuse_programs_below_floor(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Once per session: which known upstream bugs (and whose lines) this run excuses."""
    return [f"accumgate: {line}" for line in getattr(config, "_accumgate_xfails_said", [])]


def _backends(config: pytest.Config) -> Iterable[str]:
    from .selection import SelectionError, chosen_backends

    try:
        return chosen_backends(config.getoption("accumgate_backends"))
    except SelectionError as exc:
        raise pytest.UsageError(f"--accumgate-backends: {exc}") from exc


def _profile(config: pytest.Config) -> list[Scenario]:
    cached = getattr(config, "_accumgate_profile", None)
    if cached is None:
        from .selection import profile_scenarios

        cached = _shard_of_profile(config, profile_scenarios(config.getoption("accumgate_profile"),
                                                            tuple(_backends(config))))
        config._accumgate_profile = cached  # type: ignore[attr-defined]
    return cached


def _shard_of_profile(config: pytest.Config, scenarios: list[Scenario]) -> list[Scenario]:
    """``--accumgate-shard K/N``: the CLI's own partition of the profile (selection.sharded), cut before pytest's
    ``-k`` as the CLI cuts it before its own: ``accumgate run --shard K/N`` and this face run the same scenarios."""
    from .selection import SelectionError, sharded

    try:
        return sharded(scenarios, config.getoption("accumgate_shard"), config.getoption("accumgate_durations"))
    except (SelectionError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from exc


def _program_backends_of_shard(config: pytest.Config, backends: list[str]) -> list[str]:
    """Each backend's generated programs run whole on one shard, balanced by measured seconds per program; with more
    shards than backends, some shards run no programs."""
    from .shards import balance, load_durations, parse_shard

    try:
        shard = parse_shard(config.getoption("accumgate_shard"))
        durations = load_durations(config.getoption("accumgate_durations")) if shard else None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if shard is None:
        return backends
    placed = balance({b: durations.program_seconds(b) for b in backends}, shard.count)
    return [b for b in backends if placed[b] == shard.index]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "program_backend" in metafunc.fixturenames:
        from .programs.strategies import EXPLORED_BACKENDS

        chosen = _program_backends_of_shard(metafunc.config, [b for b in EXPLORED_BACKENDS
                                                             if b in set(_backends(metafunc.config))])
        if metafunc.config.getoption("accumgate_programs") < 1:
            chosen = []
        metafunc.parametrize("program_backend", [pytest.param(b, marks=[pytest.mark.world, getattr(pytest.mark, b)])
                                                 for b in chosen])
        return
    marker = metafunc.definition.get_closest_marker("accumgate")
    if marker is None or "scenario" not in metafunc.fixturenames:
        return
    from .properties import REGISTRY, applicable

    prop = REGISTRY[marker.kwargs["code"]]
    target = metafunc.config.getoption("accumgate_target")
    # The runner's own rule (client programs only for the properties that judge clients): the CLI and pytest
    # must give the same verdicts, on the same (scenario, property) pairs.
    metafunc.parametrize("scenario", [s for s in _profile(metafunc.config) if prop in applicable(s, target)], ids=str)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A property that applies to no scenario of this selection (P7 on ZeRO-3), or programs with a budget of 0, is
    # not a test: deselected, not skipped.
    def empty_parametrization(item: pytest.Item) -> bool:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("accumgate") is not None:
            return not isinstance(params.get("scenario"), Scenario)
        return "program_backend" in getattr(item, "fixturenames", ()) and not isinstance(params.get("program_backend"), str)

    empty = [item for item in items if empty_parametrization(item)]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [item for item in items if item not in empty]
    for item in items:
        scenario = getattr(getattr(item, "callspec", None), "params", {}).get("scenario")
        if not isinstance(scenario, Scenario):
            continue
        for name in markers_of(scenario):
            item.add_marker(getattr(pytest.mark, name))


def registered_markers() -> set[str]:
    """Every axis marker the plugin may add (registered, so that --strict-markers accepts them)."""
    from .scenario import API_STYLES, BACKENDS, CLIENT_STYLES, MODELS, PRECISIONS, PROGRAM

    return {"world", "offload", *ZERO_MARKERS.values(), *BACKENDS, *PRECISIONS, *MODELS,
            *(api.replace("_", "") for api in (*API_STYLES, *CLIENT_STYLES, PROGRAM))}


def markers_of(scenario: Scenario) -> set[str]:
    """A scenario's markers: ``-m zero3``, ``-m "ddp and setboundary"``, ``-m offload``."""
    names = {"world", scenario.backend, scenario.api.replace("_", ""), scenario.precision, scenario.model}
    if scenario.backend in ZERO_MARKERS:
        names.add(ZERO_MARKERS[scenario.backend])
    if scenario.offload:
        names.add("offload")
    return names


_SESSION: dict[str, object] = {}


# ------------------------------------------------------------------------------ no silent shrinking (issue 21)
def _floors(config: pytest.Config):
    from .floors import DEFAULT_PATH, FloorsError, load

    path = config.getoption("accumgate_floors") or DEFAULT_PATH
    try:
        return load(Path(path))
    except FloorsError as exc:
        raise pytest.UsageError(f"--accumgate-floors: {exc}") from exc


def _selected_env(config: pytest.Config):
    """The env of floors.toml this session's selection is (backends and pytest paths), or None."""
    from .floors import env_of

    option = config.getoption("accumgate_backends")
    backends = None if not option else [b.strip() for b in option.split(",") if b.strip()]
    paths = [str(Path(arg).resolve().relative_to(config.rootpath)) if Path(arg).exists() else arg
             for arg in config.args]
    return env_of(_floors(config), backends, paths)


def _narrowed_by(config: pytest.Config) -> str | None:
    """Why this session is not a full run of its env (then its counts are not held to the floors), or None."""
    option = config.option
    reasons = [(getattr(option, "keyword", ""), "-k"), (getattr(option, "markexpr", ""), "-m"),
               (getattr(option, "deselect", None), "--deselect"), (getattr(option, "lf", False), "--last-failed"),
               (config.getoption("accumgate_shard", None), "--accumgate-shard"),
               (config.getoption("accumgate_profile") != "ci", f"--accumgate-profile {config.getoption('accumgate_profile')}"),
               (config.getoption("accumgate_target") == "native", "--accumgate-target native (the negative control)")]
    named = [flag for value, flag in reasons if value]
    return ", ".join(named) or None


def _refuse_programs_below_floor(config: pytest.Config) -> None:
    """In CI (the CI variable set) an env's program budget below its floor is a usage error, not a smaller suite."""
    if not os.environ.get("CI"):
        return
    env = _selected_env(config)
    budget = config.getoption("accumgate_programs")
    if env is not None and budget < env.programs:
        raise pytest.UsageError(f"--accumgate-programs / ACCUMGATE_PROGRAMS={budget} is below {env.name}'s floor of "
                                f"{env.programs} generated programs per backend (conformance/floors.toml): CI refuses "
                                "a smaller suite")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A full env run whose verdicts per property fall below the committed floors fails (printed in the summary)."""
    runner = _SESSION.get("runner")
    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or getattr(config, "workerinput", None) is not None:
        return
    env = _selected_env(config)
    if env is None:
        if runner is not None:
            _SESSION["floors"] = ("exempt", "no env of conformance/floors.toml selects these backends and paths: "
                                            "verdict counts not checked")
        return
    narrowed = _narrowed_by(config)
    if narrowed:
        _SESSION["floors"] = ("exempt", f"{env.name}, narrowed by {narrowed}: verdict counts not checked")
        return
    if getattr(config.option, "numprocesses", None):
        _SESSION["floors"] = ("exempt", f"{env.name} under xdist: each worker judges a share; counts not checked")
        return
    from .floors import is_named, shortfalls
    from .properties import CODES

    counts: dict[str, int] = {}
    for scenario, code in (runner._verdicts if runner is not None else {}):
        if is_named(scenario):
            counts[code] = counts.get(code, 0) + 1
    lacking = shortfalls(env, counts, CODES)
    if lacking:
        _SESSION["floors"] = ("fail", f"{env.name}: the suite shrank below conformance/floors.toml: " + "; ".join(lacking))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif env.verdicts:
        _SESSION["floors"] = ("ok", f"{env.name}: {sum(counts.values())} named verdicts, every property at or above "
                                    "its floor")


def _report_floors(terminalreporter) -> None:
    verdict = _SESSION.pop("floors", None)
    if verdict is not None:
        kind, text = verdict
        terminalreporter.write_line(f"accumgate floors: {text}", red=kind == "fail", bold=kind == "fail")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line on where the session's time went (the runner's own account): people tuning a run want it."""
    _report_floors(terminalreporter)
    runner = _SESSION.get("runner")
    if runner is None:
        return
    timings = ", ".join(f"{what} {seconds:.0f} s" for what, seconds in
                        sorted(runner.timings.items(), key=lambda kv: -kv[1]) if seconds >= 0.5)
    verdicts = len(runner._verdicts)
    terminalreporter.write_line(f"accumgate: {verdicts} (scenario, property) verdicts; {timings}")


@pytest.fixture(scope="session")
def accumgate_runner(request: pytest.FixtureRequest):
    from .runner import Runner, WorldPool

    config = request.config
    target = config.getoption("accumgate_target")
    started = time.perf_counter()
    runner = Runner(target, xfails=config._accumgate_xfails,  # type: ignore[attr-defined]
                    pool=WorldPool(config.getoption("accumgate_timeout")))
    _SESSION["runner"] = runner
    yield runner
    report_dir = config.getoption("accumgate_report_dir")
    outcomes = runner.outcomes()
    warnings = runner.pool.close()
    if report_dir:
        from .results import RunResults, environment, write_all

        worker = os.environ.get("PYTEST_XDIST_WORKER")
        directory = Path(report_dir) / worker if worker else Path(report_dir)
        write_all(RunResults(target=target, outcomes=outcomes, environment=environment(target), warnings=warnings,
                             wall_seconds=time.perf_counter() - started,
                             selection={"profile": config.getoption("accumgate_profile"),
                                        "backends": config.getoption("accumgate_backends"), "runner": "pytest",
                                        "shard": config.getoption("accumgate_shard")}),
                  directory)


@pytest.fixture(scope="session")
def accumgate_programs(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("accumgate_programs")


def explore_and_check(runner, backend: str, examples: int) -> None:
    """Generated programs on one backend through the runner (the corpus first); a counterexample fails the test with
    the minimal program as code and the first micro-batch where model and target part ways."""
    from .explore import default_corpus, explore_backend, load_corpus

    exploration = explore_backend(runner, backend, examples, None, load_corpus(default_corpus()))
    if exploration.counterexamples:
        text = "\n\n".join(f"{c.scenario.id}\n{c.outcome.program}\nfirst disagreement: {c.first_disagreement}"
                            for c in exploration.counterexamples)
        pytest.fail(f"{len(exploration.counterexamples)} counterexample(s) in {exploration.examples} programs "
                    f"(repro scripts: accumgate explore --backends {backend}):\n{text}", pytrace=False)


def check(runner, scenario: Scenario, code: str) -> None:
    """The runner's verdict on one property of one scenario, as pytest says it (read at 2 a.m.)."""
    verdict = runner.verdict(scenario, code)
    if verdict.outcome == "pass":
        return
    if verdict.outcome == "xfail":
        pytest.xfail(verdict.known or "")
    if verdict.outcome == "unsupported":
        # As the CLI: a target lacking the API fails the run unless an xfails line expects it (then it is xfail).
        pytest.fail(f"{scenario.id} · {verdict.name}: unsupported: {verdict.reason}", pytrace=False)
    if verdict.outcome == "xpass":
        pytest.fail(f"XPASS {scenario.id} · {verdict.name}: xfails {verdict.known} passes now: remove it "
                    "or narrow its versions", pytrace=False)
    if verdict.outcome == "error":
        result = runner.job(_subject(scenario))
        text = "\n".join(f"--- rank {rank}\n{tb}" for rank, tb in sorted(result.errors.items()))
        pytest.fail(f"{scenario.id} · {verdict.name}: error: {verdict.reason}\n{text}", pytrace=False)
    shown = "\n".join(d["message"] for d in verdict.deviations)
    more = f"\n… and {verdict.deviation_count - len(verdict.deviations)} more" \
        if verdict.deviation_count > len(verdict.deviations) else ""
    known = f"\n{verdict.known}" if verdict.known else ""  # a known bug's line that no longer covers the failure
    pytest.fail(f"{verdict.deviation_count} deviation(s):\n{shown}{more}{known}", pytrace=False)


def _subject(scenario: Scenario):
    from .properties import SUBJECT, Need

    return Need(SUBJECT, scenario)
