"""Scenario generation: stable ids, validity, profiles, pairwise coverage proven, -k selection."""
from __future__ import annotations

import itertools

import pytest

from harness import scenario as S


def test_id_is_stable_and_readable() -> None:
    s = S.Scenario("ds3", "kwarg", "dyn3142", optimizer="adamw")
    assert s.id == "ds3-kwarg-dyn3142-adamw-fp32-clip1-w2"
    assert S.Scenario("single", "step_and_zero_grad", "uni4", clip=None, model="gpt2", world_size=1).id == \
        "single-stepandzerograd-uni4-sgd-fp32-noclip-gpt2-w1"


def test_ids_are_unique_in_the_full_product() -> None:
    scenarios = S.full_product()
    assert len({s.id for s in scenarios}) == len(scenarios)


@pytest.mark.parametrize(("kwargs", "problem"), [
    (dict(backend="single", api="kwarg", schedule="uni4", world_size=2), "world size 1"),
    (dict(backend="ddp", api="ds_native", schedule="uni4"), "DeepSpeed engine"),
    (dict(backend="ds2", api="legacy", schedule="dyn3142"), "uniform"),
    (dict(backend="ds9", api="kwarg", schedule="uni4"), "backend 'ds9'"),
])
def test_meaningless_combinations_are_rejected(kwargs, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        S.Scenario(**kwargs)


def _valid_pairs(scenarios: list[S.Scenario]) -> set[tuple]:
    pairs = set()
    for s in scenarios:
        values = [(axis, getattr(s, axis)) for axis in S.AXES]
        pairs.update(itertools.combinations(values, 2))
    return pairs


def test_ci_profile_covers_every_valid_pair() -> None:
    """Every pair of axis values that some valid scenario contains is contained in a ci scenario."""
    wanted = _valid_pairs(S.full_product())
    covered = _valid_pairs(S.pairwise())
    missing = wanted - covered
    assert not missing, f"{len(missing)} pairs uncovered, e.g. {sorted(missing, key=str)[:5]}"
    assert len(S.pairwise()) < len(S.full_product()) / 50


def test_quick_profile_spans_every_cpu_backend_and_api() -> None:
    quick = S.quick()
    assert len(quick) >= 40
    assert {s.backend for s in quick} == {"single", "ddp", "fsdp", "ds0", "ds1", "ds2", "ds3"}
    assert {s.api for s in quick} == set(S.QUICK_STYLES)


def test_selection_uses_pytest_expressions() -> None:
    quick = S.quick()
    chosen = S.select(quick, "ds3 and not kwarg")
    assert chosen and all(s.backend == "ds3" and s.api != "kwarg" for s in chosen)
    assert S.select(quick, "DDP and setboundary and not hold") == [s for s in quick if s.backend == "ddp"
                                                                   and s.api == "set_boundary"]
    from harness.keywords import ExpressionError

    with pytest.raises(ExpressionError):
        S.select(quick, "ds3 and (")


def test_boundaries_follow_the_windows() -> None:
    s = S.Scenario("ds2", "kwarg", "forced4264")
    assert s.boundaries == [3, 5, 11, 15] and s.micro_batches == 16 and not s.is_uniform
    assert S.Scenario("ds2", "kwarg", "g1win4").configured_g == 1


def test_every_marker_a_scenario_gets_is_registered() -> None:
    """pytest runs with --strict-markers: an axis value without a registered marker stops collection (it did, for the
    client programs, on the single and ddp envs)."""
    from harness.pytest_plugin import markers_of, registered_markers

    every = S.pairwise() + S.quick() + S.clients()
    missing = {name for s in every for name in markers_of(s)} - registered_markers()
    assert not missing, f"markers added but not registered: {sorted(missing)}"


def test_the_k_expression_selects_as_pytest_does() -> None:
    """harness/keywords.py against pytest's own reading of the same expressions, over every quick scenario id."""
    from _pytest.mark.expression import Expression

    from harness.keywords import ExpressionError, compile_expression
    from harness.scenario import profile

    ids = [s.id for s in profile("quick")]
    for text in ("ds3", "ds3 and not kwarg", "not (kwarg or auto) and uni4", "DDP or (ds0 and dyn3142)", "not not single",
                 "fsdp and (setboundary or stepandzerograd) and not hold"):
        ours = compile_expression(text)
        theirs = Expression.compile(text)

        def pytest_selects(scenario_id: str, theirs=theirs) -> bool:
            return theirs.evaluate(lambda name, *a, **k: name.lower() in scenario_id.lower())

        assert [i for i in ids if ours(i)] == [i for i in ids if pytest_selects(i)]
    for bad in ("", "ds3 and", "(ds3", "ds3 )", "and"):
        with pytest.raises(ExpressionError):
            compile_expression(bad)
