"""Fixtures shared by the fast unit tests and the real-world tests.

One warm 2-rank gloo world serves every real-world test of the session (DeepSpeed's tests/unit/common.py
habit: the fixture owns the processes); each scenario runs once per target and is cached.
"""
from __future__ import annotations

import pytest

from harness.scenario import BACKENDS, Scenario
from harness.world import World


def pytest_configure(config: pytest.Config) -> None:
    for backend in BACKENDS:  # every backend a test's scenario may carry (--strict-markers)
        config.addinivalue_line("markers", f"{backend}: scenarios on backend {backend}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run a scenario get the markers ``world`` and its backend (``-m ds3``, ``-m "not world"``)."""
    for item in items:
        scenario = getattr(getattr(item, "callspec", None), "params", {}).get("scenario")
        if isinstance(scenario, Scenario):
            item.add_marker(pytest.mark.world)
            item.add_marker(getattr(pytest.mark, scenario.backend))


@pytest.fixture(scope="session")
def world() -> World:
    world = World(world_size=2)
    world.start()
    yield world
    for warning in world.close():
        print(f"world: {warning}")


@pytest.fixture(scope="session")
def pool():
    """One warm pool of worlds for every test that judges scenarios through a Runner (mutants, sensitivity): world
    starts and each backend's first job are paid once per session."""
    from harness.runner import WorldPool

    pool = WorldPool()
    yield pool
    pool.close()


@pytest.fixture
def fresh_accelerate_state():
    """In-process accelerate state is global: reset it around each test that builds an Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
