"""Failure messages read alone: scenario, property, step, tensor, worst element, errors, tolerance."""
from __future__ import annotations

import torch

from harness.compare import compare_scalar, compare_tensor, compare_tensors


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
    (missing,) = compare_tensors({}, {"w": torch.zeros(1)}, scenario="s", prop="P", where="w", label="param",
                                 rtol=0, atol=0)
    assert "missing from the run" in missing.message()
    assert compare_scalar(None, 2.0, scenario="s", prop="P6", where="w", label="norm", rtol=0, atol=0)
    assert not compare_scalar(None, None, scenario="s", prop="P6", where="w", label="norm", rtol=0, atol=0)


def test_bf16_tolerance_scales_with_the_tensor() -> None:
    want = torch.tensor([4.0, 0.05])
    got = torch.tensor([4.0, 0.0627])  # error 0.0127: 25% of the element, 0.3% of the tensor's scale
    assert compare_tensor(got, want, rtol=2e-2, atol=5e-3) is not None
    assert compare_tensor(got, want, rtol=2e-2, atol=5e-3, tensor_scaled=True) is None


def test_ignored_elements_are_left_out_and_said() -> None:
    want, got = torch.zeros(3), torch.tensor([0.0, 0.01, 0.0])
    assert compare_tensor(got, want, rtol=1e-5, atol=1e-6, ignore=torch.tensor([False, True, False])) is None
    message = compare_tensor(got + 1.0, want, rtol=1e-5, atol=1e-6, ignore=torch.tensor([False, True, False]))
    assert "1 element(s) with a gradient below the noise floor ignored (AdamW)" in message


def test_a_windows_round_off_is_judged_against_its_terms_not_its_cancelled_sum() -> None:
    """bf16 gradients summed over 5 micro-batches that nearly cancel (found by the explorer at ZeRO-0: 0.0121 off
    where the sum's max is 0.25): the round-off is relative to the terms. A missing micro-batch, the size of a term,
    still fails."""
    want = torch.tensor([0.1, -0.25, 0.05])
    terms = 5 * 0.3  # five micro-batches whose max |grad| is 0.3 each
    rounded = want + torch.tensor([0.0121, 0.0, 0.0])
    assert compare_tensor(rounded, want, rtol=2e-2, atol=5e-3, tensor_scaled=True) is not None
    assert compare_tensor(rounded, want, rtol=2e-2, atol=5e-3, tensor_scaled=True, window_scale=terms) is None
    missing_term = want + torch.tensor([0.3, 0.0, 0.0])
    detail = compare_tensor(missing_term, want, rtol=2e-2, atol=5e-3, tensor_scaled=True, window_scale=terms)
    assert detail is not None and "Σ over the window's micro-batches" in detail
