"""Tolerances from error analysis (DESIGN §4 "Every pass proves something"): how far a number a run reports may be
from the float64 oracle's, per element, and why. Never an absolute floor: a bound that exceeds a whole tensor lets
that tensor's gradient be zero and pass.

Every number a run reports is a sum of terms computed in the run's precision. A gradient element is the sum over the
window's micro-batches and the ranks of each micro-batch's gradient of it (itself a sum over samples, tokens and the
model's products); first-order error analysis bounds the error of such a sum by the unit round-off u times the sum of
the magnitudes of its terms, times a constant of the computation's depth. The oracle splits an element into its
micro-batch and rank terms (``OracleStep.terms``: S_i = Σ |g_{micro-batch, rank, i}| / world size), not into the terms
inside one micro-batch's gradient; where those cancel (GPT-2's attention key bias, mathematically zero; layer-norm
gradients summed over tokens) the element's round-off follows the tensor's larger elements, measured at most their
term sums. So, per element i of a tensor:

    |Δ_i| ≤ F · u · (S_i + max_j S_j)

with F the safety factor measured for the precision (``benchmarks/tolerance_factor.py`` feeds recorded runs of the
reference through this analysis; numbers and the choice in docs/decisions.md). The same reasoning gives:
- a loss (a mean of positive per-sample losses: its terms' magnitudes sum to itself): |Δ| ≤ F · u · |loss|;
- a norm ‖g‖: |Δ‖g‖| ≤ ‖Δg‖, and the elements the floor above protects are few and small: |Δ| ≤ F · u · ‖S‖₂;
- two runs of the same mathematics compared with each other: the sum of their two bounds.
"""
from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]

# Unit round-off: 2^-p for a p-bit significand (fp32: 24 bits, bf16: 8), round to nearest.
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "bf16": 2.0**-8}
# F, measured: the largest |Δ| ÷ (u · (S + max S)) seen over 486 recorded scenarios was 5.97 in fp32 (6.61 for the
# leftover) and 4.57 in bf16 (4.10); losses 4.24 and 2.24 (÷ u·|loss|); norms 1.30 and 0.53 (÷ u·‖S‖). bf16's factor
# is the one that decides what a verdict can see: 10 leaves 2.2× room above the worst round-off and still fails a
# zeroed tensor everywhere measured (the weakest, a layer-norm bias, by 2.3×). fp32's 64 is 10× the worst round-off,
# and 3·10^4 times below the weakest zeroed tensor.
SAFETY = {"fp32": 64.0, "bf16": 10.0}
_U_TEXT = {"fp32": "2^-24", "bf16": "2^-8"}


def unit(precision: str) -> float:
    """F · u: the fraction of the terms' magnitudes a number of this precision may be off."""
    return SAFETY[precision] * UNIT_ROUNDOFF[precision]


def gradient_bounds(precision: str, terms: Tensors, runs: int = 1) -> Tensors:
    """Per element: F · u · (S_i + max_j S_j) for each tensor, times the number of runs compared (1 against the
    oracle, 2 between two runs)."""
    out = {}
    for name, s in terms.items():
        floor = s.max() if s.numel() else torch.zeros((), dtype=s.dtype)
        out[name] = runs * unit(precision) * (s + floor)
    return out


def combined(*bounds: Tensors) -> Tensors:
    """The bounds of several runs' comparisons added (two runs each within its bound of the truth)."""
    names = set().union(*bounds)
    return {name: sum(b[name] for b in bounds if name in b) for name in names}


def norm_terms(terms: Tensors) -> float:
    """‖S‖₂ over every element of every tensor."""
    if not terms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.cat([t.flatten().double() for t in terms.values()])))


def norm_bound(precision: str, terms: Tensors, runs: int = 1) -> float:
    return runs * unit(precision) * norm_terms(terms)


def loss_bound(precision: str, want: float, runs: int = 1) -> float:
    return runs * unit(precision) * abs(want)


def gradient_text(precision: str, runs: int = 1) -> str:
    times = f"{runs}·" if runs != 1 else ""
    return f"{times}{SAFETY[precision]:g}·u·(Σ|terms| + max Σ|terms|) (u = {_U_TEXT[precision]})"


def norm_text(precision: str, runs: int = 1) -> str:
    times = f"{runs}·" if runs != 1 else ""
    return f"{times}{SAFETY[precision]:g}·u·‖Σ|terms|‖ (u = {_U_TEXT[precision]})"


def loss_text(precision: str, runs: int = 1) -> str:
    times = f"{runs}·" if runs != 1 else ""
    return f"{times}{SAFETY[precision]:g}·u·|loss| (u = {_U_TEXT[precision]})"
