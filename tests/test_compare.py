"""Failure messages read alone: scenario, property, step, tensor, worst element, errors, tolerance."""
from __future__ import annotations

import pytest
import torch

from harness.compare import (
    DeviationSeen,
    compare_scalar,
    compare_tensor,
    compare_tensors,
    expect_none,
    first_deviation_stops,
    ledger,
    location_of,
)


def test_message_names_everything_a_person_needs() -> None:
    want = {"fc1.weight": torch.zeros(16, 8)}
    got = {"fc1.weight": torch.zeros(16, 8)}
    got["fc1.weight"][4, 7] = 3.1e-3
    (deviation,) = compare_tensors(got, want, scenario="ds3-kwarg-dyn3142-adamw-fp32-clip1-w2",
                                   prop="P2 backend≡oracle", where="rank 0 · boundary 2 of 4", label="grad",
                                   rtol=1e-5, atol=1e-6)
    message = deviation.message()
    for part in ("ds3-kwarg-dyn3142-adamw-fp32-clip1-w2", "P2 backend≡oracle", "boundary 2 of 4",
                 "grad[fc1.weight]", "max |Δ| = 0.0031 at [4, 7]", "got 0.00310000009", "want 0",
                 "tolerance atol 1e-06 + rtol 1e-05"):
        assert part in message, f"{part!r} missing from:\n{message}"


def test_within_tolerance_is_silent_and_bitwise_is_exact() -> None:
    a = torch.tensor([1.0, 2.0])
    assert compare_tensor(a + 1e-7, a, rtol=1e-5, atol=1e-6) is None
    assert "bit-identical" in compare_tensor(a + 1e-7, a, rtol=0, atol=0)
    assert compare_tensor(a.clone(), a, rtol=0, atol=0) is None
    assert "shape" in compare_tensor(torch.zeros(3), a, rtol=0, atol=0)


def test_missing_tensors_and_none_scalars_are_deviations() -> None:
    """Missing is not equal: None on both sides is a deviation unless a named fact says why it cannot exist, and then
    the verdict says so (a note in the ledger)."""
    (missing,) = compare_tensors({}, {"w": torch.zeros(1)}, scenario="s", prop="P", where="w", label="param",
                                 rtol=0, atol=0)
    assert "missing from the run" in missing.message()
    assert compare_scalar(None, 2.0, scenario="s", prop="P6", where="w", label="norm")
    (both,) = compare_scalar(None, None, scenario="s", prop="P6", where="w", label="norm")
    assert "not recorded by either run" in both.message()
    with ledger() as book:
        assert not compare_scalar(None, None, scenario="s", prop="P6", where="w", label="norm",
                                  missing_ok="no DeepSpeed engine on ddp")
    assert book.notes == ["norm: None on both sides, not compared (no DeepSpeed engine on ddp)"]
    assert expect_none(None, scenario="s", prop="P6", where="w", label="norm", why="off a boundary") == []
    assert "want None (off a boundary)" in expect_none(0.5, scenario="s", prop="P6", where="w", label="norm",
                                                       why="off a boundary")[0].message()


def test_a_bound_per_element_is_added_to_rtol_and_atol_and_named() -> None:
    want = torch.tensor([4.0, 0.05])
    got = torch.tensor([4.0, 0.06])
    assert compare_tensor(got, want, bound=torch.tensor([0.0, 0.011])) is None
    detail = compare_tensor(got, want, bound=torch.tensor([0.0, 0.009]), bound_text="10·u·(Σ|terms| + max Σ|terms|)")
    assert "tolerance 10·u·(Σ|terms| + max Σ|terms|) = 0.009 there" in detail and "1.11 × tolerance" in detail
    # a zero bound where the oracle says exactly zero: any difference fails
    assert compare_tensor(torch.tensor([1e-30]), torch.tensor([0.0]), bound=torch.tensor([0.0])) is not None


def test_every_tolerance_bound_comparison_records_its_margin_where_it_was_made() -> None:
    want = {"w": torch.tensor([1.0, 2.0])}
    with ledger() as book:
        compare_tensors({"w": torch.tensor([1.0, 2.0])}, want, scenario="s", prop="P", where="rank 0 · step 1 of 2",
                        label="grad", bounds={"w": torch.tensor([0.1, 0.1])})
        compare_tensors({"w": torch.tensor([1.05, 2.0])}, want, scenario="s", prop="P", where="rank 1 · step 1 of 2",
                        label="grad", bounds={"w": torch.tensor([0.1, 0.1])})
        compare_tensors({"w": torch.tensor([1.0, 2.3])}, want, scenario="s", prop="P", where="rank 0 · step 2 of 2",
                        label="grad", bounds={"w": torch.tensor([0.1, 0.1])})
        compare_tensors(want, want, scenario="s", prop="P", where="rank 0 · final", label="param")  # bitwise: none
    assert [where for where, _ in book.as_list()] == ["step 1 of 2", "step 2 of 2"]
    assert abs(book.margins["step 1 of 2"] - 0.5) < 1e-6 and abs(book.worst - 3.0) < 1e-5
    with ledger() as empty:
        compare_tensors(want, want, scenario="s", prop="P", where="rank 0", label="param", rtol=0, atol=0)
    assert empty.worst is None
    assert location_of("rank 1 vs accumulate() (x) · step 2 of 4") == "step 2 of 4" and location_of("rank 0") == "run"


def test_re_judging_stops_at_the_first_deviation_and_leaves_the_ledger_alone() -> None:
    with ledger() as book:
        with first_deviation_stops():
            with pytest.raises(DeviationSeen):
                compare_tensors({"w": torch.ones(2)}, {"w": torch.zeros(2)}, scenario="s", prop="P", where="w",
                                label="grad", rtol=1e-5, atol=0)
    assert book.worst is None
