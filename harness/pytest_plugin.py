"""The pytest face of the runner: scenarios become test items (ids = scenario ids), property families become
test functions, options mirror the CLI. It orchestrates nothing: every item asks the session's Runner,
which runs each scenario once per session (per xdist worker, each with its own world and ports).

Options: --accumgate-target, --accumgate-profile, --accumgate-backends, --accumgate-xfails,
--accumgate-report-dir, --accumgate-timeout (environment: ACCUMGATE_TARGET, ACCUMGATE_PROFILE, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import pytest

from .scenario import PROFILES, Scenario

ZERO_MARKERS = {f"ds{n}": f"zero{n}" for n in range(4)} | {"ds2off": "zero2", "ds3off": "zero3"}


def accumgate(applies: Callable[[Scenario], bool] | None = None,
              scenarios: Callable[[Iterable[str]], list[Scenario]] | None = None) -> pytest.MarkDecorator:
    """Marks a property test: parametrized by every scenario of the session's profile for which ``applies``,
    or by ``scenarios(backends)`` for a property that needs a particular scenario on every backend."""
    return pytest.mark.accumgate(applies=applies or (lambda s: True), scenarios=scenarios)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("accumgate", "accumgate conformance (mirrors `accumgate run`)")
    env = os.environ.get
    group.addoption("--accumgate-target", default=env("ACCUMGATE_TARGET", "reference"),
                    help="reference (default), native, or module:attribute")
    group.addoption("--accumgate-profile", default=env("ACCUMGATE_PROFILE", "ci"), choices=PROFILES,
                    help="scenario set (default ci: every pair of axis values)")
    group.addoption("--accumgate-backends", default=env("ACCUMGATE_BACKENDS"),
                    help="comma-separated backends; the profile is generated for these alone (pairwise within them)")
    group.addoption("--accumgate-xfails", default=env("ACCUMGATE_XFAILS"), help="known failures file")
    group.addoption("--accumgate-report-dir", default=env("ACCUMGATE_REPORT_DIR"),
                    help="write results.json, junit-like summary and summary.md here at session end")
    group.addoption("--accumgate-timeout", type=float, default=float(env("ACCUMGATE_TIMEOUT", "120")),
                    help="per-scenario timeout in seconds")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "accumgate(applies): a property test over generated scenarios")
    from .scenario import API_STYLES, BACKENDS, MODELS, PRECISIONS

    names = {"world", "offload", *ZERO_MARKERS.values(), *BACKENDS, *PRECISIONS, *MODELS,
             *(api.replace("_", "") for api in API_STYLES)}
    for name in sorted(names):
        config.addinivalue_line("markers", f"{name}: scenario axis marker added by the accumgate plugin")
    from .targets import TargetError, target_path
    from .xfails import XfailsError, load

    try:
        target_path(config.getoption("accumgate_target"))
        xfails_path = config.getoption("accumgate_xfails")
        config._accumgate_xfails = load(xfails_path) if xfails_path else []  # type: ignore[attr-defined]
    except (TargetError, XfailsError) as exc:
        raise pytest.UsageError(str(exc)) from exc


def _backends(config: pytest.Config) -> Iterable[str]:
    from .cli import available_backends

    chosen = config.getoption("accumgate_backends")
    backends = available_backends()
    if chosen:
        wanted = [b.strip() for b in chosen.split(",") if b.strip()]
        unknown = [b for b in wanted if b not in backends]
        if unknown:
            raise pytest.UsageError(f"--accumgate-backends: {', '.join(unknown)} not available here "
                                    f"(expected some of {', '.join(backends)})")
        return wanted
    return backends


def _profile(config: pytest.Config) -> list[Scenario]:
    cached = getattr(config, "_accumgate_profile", None)
    if cached is None:
        from .scenario import profile

        cached = profile(config.getoption("accumgate_profile"), _backends(config))
        config._accumgate_profile = cached  # type: ignore[attr-defined]
    return cached


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("accumgate")
    if marker is None or "scenario" not in metafunc.fixturenames:
        return
    applies = marker.kwargs.get("applies") or (lambda s: True)
    generate = marker.kwargs.get("scenarios")
    if generate is not None:
        scenarios = generate(_backends(metafunc.config))
    else:
        scenarios = [s for s in _profile(metafunc.config) if applies(s)]
    metafunc.parametrize("scenario", scenarios, ids=str)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        scenario = getattr(getattr(item, "callspec", None), "params", {}).get("scenario")
        if not isinstance(scenario, Scenario):
            continue
        names = {"world", scenario.backend, scenario.api.replace("_", ""), scenario.precision, scenario.model}
        if scenario.backend in ZERO_MARKERS:
            names.add(ZERO_MARKERS[scenario.backend])
        if scenario.offload:
            names.add("offload")
        for name in names:
            item.add_marker(getattr(pytest.mark, name))


@pytest.fixture(scope="session")
def accumgate_runner(request: pytest.FixtureRequest):
    from .runner import Runner, WorldPool

    config = request.config
    target = config.getoption("accumgate_target")
    import time

    started = time.perf_counter()
    runner = Runner(target, xfails=config._accumgate_xfails,  # type: ignore[attr-defined]
                    pool=WorldPool(config.getoption("accumgate_timeout")),
                    check_upstream=target != "native")
    yield runner
    report_dir = config.getoption("accumgate_report_dir")
    outcomes = runner.outcomes()
    warnings = runner.pool.close()
    if report_dir:
        from .results import RunResults, environment, write_all

        worker = os.environ.get("PYTEST_XDIST_WORKER")
        directory = Path(report_dir) / worker if worker else Path(report_dir)
        write_all(RunResults(target=target, outcomes=outcomes, environment=environment(), warnings=warnings,
                             wall_seconds=time.perf_counter() - started,
                             selection={"profile": config.getoption("accumgate_profile"),
                                        "backends": config.getoption("accumgate_backends"), "runner": "pytest"}),
                  directory)


def xfail_if_known(runner, scenario: Scenario, failed: bool) -> None:
    """For probe runs made outside ``check`` (another config, a preceding scenario): a failure the xfails file
    knows for this scenario on the installed versions is an xfail there too, as it is in ``check``."""
    known = runner.xfail_for(scenario)
    if failed and known:
        pytest.xfail(known.reason)


def check(runner, scenario: Scenario, props: Iterable[str]) -> None:
    """Assert one property family on one scenario, the way a person wants to read it at 2 a.m."""
    result, found = runner.evaluate(scenario)
    known = runner.xfail_for(scenario)
    if result.status == "error":
        text = "\n".join(f"--- rank {rank}\n{tb}" for rank, tb in sorted(result.errors.items()))
        if known:
            pytest.xfail(f"{known.reason} (error)")
        pytest.fail(f"{scenario.id}: the run failed\n{text}", pytrace=False)
    if result.status == "unsupported":
        if known:
            pytest.xfail(f"{known.reason} (unsupported: {result.reason})")
        pytest.skip(f"unsupported: {result.reason}")
    mine = [d for d in found if d.prop in set(props)]
    if known and (found or known.strict):
        if found:
            pytest.xfail(known.reason)
        pytest.fail(f"XPASS {scenario.id}: xfails line {known.line} ('{known.pattern}') passes now: remove it",
                    pytrace=False)
    if mine:
        shown = "\n".join(d.message() for d in mine[:8])
        more = f"\n… and {len(mine) - 8} more" if len(mine) > 8 else ""
        pytest.fail(f"{len(mine)} deviation(s):\n{shown}{more}", pytrace=False)
