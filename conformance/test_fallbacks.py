"""P9 fallbacks: where the feature cannot work, a clear error of the target's own, never a dependency's assert
and never silent wrong training; where it can, it trains right."""
from __future__ import annotations

from harness import oracle
from harness.properties import P2, P4, P5, P7, P9, matches_oracle, steps_at_boundaries
from harness.pytest_plugin import accumgate, check, xfail_if_known

MANAGED_KEY = "managed_gradient_accumulation"


def _assert_trains_right(runner, scenario, result, label: str) -> None:
    """The probe trained, at the boundaries, as the oracle says; a known failure of this scenario on the
    installed versions (the xfails file) is an xfail here too."""
    deviations = []
    if result.ok:
        deviations = steps_at_boundaries(scenario, result.traces) + matches_oracle(
            scenario, result.traces, oracle.expected(scenario))
    xfail_if_known(runner, scenario, failed=bool(deviations) or not result.ok)
    assert result.ok, f"{scenario.id} · {P9} · {label}:\n{_last_lines(result)}"
    assert not deviations, "\n".join(d.message() for d in deviations[:8])


def _engine_reads_managed_key() -> bool:
    """``managed_gradient_accumulation`` exists since DeepSpeed 0.19.4 (#8184); older engines ignore the key."""
    from reference_impl.compat import capabilities

    return bool(capabilities().get("engine_managed_accumulation_key"))


def _last_lines(result) -> str:
    return "\n".join(f"rank {rank}: {text.strip().splitlines()[-1]}" for rank, text in sorted(result.errors.items()))


@accumgate(applies=lambda s: s.is_deepspeed and s.api == "kwarg")
def test_unmanaged_accumulation_is_refused_by_name(accumgate_runner, scenario) -> None:
    """DeepSpeed's managed_gradient_accumulation: false: the error names the config key and is not
    DeepSpeed's internal AssertionError."""
    runner = accumgate_runner
    result = runner.pool.run(scenario, runner.target, config_overrides={MANAGED_KEY: False})
    if result.status == "unsupported":
        check(runner, scenario, [P9])
    if not _engine_reads_managed_key():
        # DeepSpeed < 0.19.4 ignores the key and always manages accumulation (versions.md): nothing to refuse,
        # and the run must simply train right.
        _assert_trains_right(runner, scenario, result, f"{MANAGED_KEY} ignored by this DeepSpeed")
        return
    assert result.status == "error", f"{scenario.id} with {MANAGED_KEY}: false trained ({result.status})"
    last = _last_lines(result)
    assert MANAGED_KEY in last and "AssertionError" not in last, f"{scenario.id} · {P9} · unmanaged mode:\n{last}"


@accumgate(applies=lambda s: s.is_deepspeed and s.api == "kwarg" and s.precision == "fp32")
def test_engine_without_boundary_api(accumgate_runner, scenario) -> None:
    """On an engine without set_gradient_accumulation_boundary: uniform windows follow the engine's counter and
    train as the oracle says; other windows stop with an error naming the missing API, never train wrongly."""
    runner = accumgate_runner
    result = runner.pool.run(scenario, runner.target, without_engine_boundary_api=True)
    if result.status == "unsupported":
        check(runner, scenario, [P9])
    if scenario.is_uniform:
        _assert_trains_right(runner, scenario, result, "engine without boundary API")
    else:
        assert result.status == "error", f"{scenario.id} · {P9}: trained on windows the engine cannot honour"
        last = _last_lines(result)
        assert "set_gradient_accumulation_boundary" in last and "AssertionError" not in last, last


@accumgate(applies=lambda s: s.api == "set_boundary" and not s.is_deepspeed)
def test_deepspeed_method_works_on_other_backends(accumgate_runner, scenario) -> None:
    """set_deepspeed_gradient_accumulation_boundary is portable: on single/DDP it steps at the boundaries,
    trains as the oracle says and, on DDP, skips the gradient reduction off-boundary."""
    check(accumgate_runner, scenario, [P2, P4, P5, P7])
