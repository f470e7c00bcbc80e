"""Targets judged by behaviour, never by signature: upstream accelerate (``--target native``) passes what it has and
is ``unsupported`` for the API it lacks, without crashing; a vendor's subclass whose ``backward`` takes
``(loss, *args, **kwargs)`` is supported and conforms."""
from __future__ import annotations

import pytest

from harness.runner import Runner, WorldPool
from harness.scenario import Scenario

pytestmark = [pytest.mark.world, pytest.mark.harness]

UNTOUCHED = [Scenario("ds0", "auto", "uni4"), Scenario("ddp", "auto", "uni4"), Scenario("ds3", "auto", "uni4"),
             Scenario("ddp", "ddp_native", "dyn3142"), Scenario("ds1", "legacy", "uni4")]
NEW_API = [Scenario("ds0", "kwarg", "uni4"), Scenario("ddp", "set_boundary", "dyn3142"),
           Scenario("ds3", "step_and_zero_grad", "uni4"), Scenario("ds2", "auto", "dyn3142"),
           Scenario("single", "kwarg_hold", "uni4", world_size=1)]


@pytest.fixture(scope="module")
def pool():
    pool = WorldPool()
    yield pool
    pool.close()


def test_upstream_accelerate_is_the_negative_control(pool) -> None:
    """Its known failures are the package's own lines for it, harness/known_bugs/native.txt (it has no fallback for
    old engines, P9), applied by default as every face applies them."""
    from harness.xfails import for_run

    xfails, _ = for_run("native")
    results = Runner("native", xfails=xfails, pool=pool).run(UNTOUCHED + NEW_API)
    got = {o.scenario: o for o in results.outcomes}
    for scenario in UNTOUCHED:
        verdicts = {c: v.outcome for c, v in got[scenario.id].properties.items() if c != "P8-leak"}
        assert set(verdicts.values()) <= {"pass", "xfail"}, verdicts
        leak = got[scenario.id].properties.get("P8-leak")
        if leak is not None:  # its leaving run sets an override upstream cannot set: nothing can leak, nothing passes
            assert leak.outcome == "unsupported" and "leaves the override set" in leak.reason, leak
        assert verdicts.get("P9", "xfail") == "xfail" and verdicts["P2" if scenario.is_uniform else "P5"] == "pass"
    for scenario in NEW_API:
        outcome = got[scenario.id]
        assert outcome.outcome == "unsupported", (scenario.id, outcome.outcome, outcome.reason)
        assert {v.outcome for v in outcome.properties.values()} <= {"unsupported", "xfail"}
        assert "accelerate.accelerator.Accelerator" in outcome.reason


def test_a_vendor_subclass_hiding_the_keyword_behind_kwargs_is_supported(pool) -> None:
    runner = Runner("tests.vendor:VendorAccelerator", pool=pool)
    for scenario in NEW_API:
        outcome = runner.outcome(scenario)
        assert outcome.outcome == "pass", (scenario.id, {c: v.first_line() for c, v in outcome.properties.items()})
