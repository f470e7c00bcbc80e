"""Comparison that explains itself: every ``Deviation`` names scenario, property, step, tensor, the worst
element (got/want), max abs/rel error and the tolerance, so a failure reads alone at 2 a.m.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Against the float64 oracle: reduction order differs between backends (DESIGN §4, P2). precision -> (rtol, atol).
# bf16 (measured, MLP, ZeRO 0-3 and DDP): losses within 3e-3 relative, parameters within 1.7e-3 absolute.
TOLERANCES = {"fp32": (1e-5, 1e-6), "bf16": (2e-2, 5e-3)}
# AdamW normalises each element by its own gradient history, so in directions whose true gradient is zero
# (GPT-2's attention key bias) fp32 round-off of ~1e-10 becomes an update of up to ~lr·1e-4 per step while the
# float64 oracle stays put. Parameters under AdamW get an absolute floor of 1e-3 of the learning rate; the
# gradients, where scaling bugs show (Adam is invariant to loss scale), keep the strict tolerance.
ADAMW_PARAM_ATOL_PER_LR = 1e-3


def tolerance(precision: str, optimizer: str, quantity: str, lr: float) -> tuple[float, float]:
    """(rtol, atol) for comparing ``quantity`` ("param", "grad", "loss", "norm") against the oracle."""
    rtol, atol = TOLERANCES[precision]
    if quantity == "param" and optimizer == "adamw":
        atol = max(atol, ADAMW_PARAM_ATOL_PER_LR * lr)
    return rtol, atol


@dataclass(frozen=True)
class Deviation:
    scenario: str
    prop: str
    where: str
    tensor: str
    detail: str

    def message(self) -> str:
        return f"{self.scenario} · {self.prop} · {self.where} · {self.tensor}\n  {self.detail}"

    def __str__(self) -> str:
        return self.message()


def tolerance_text(rtol: float, atol: float) -> str:
    return "bit-identical" if rtol == 0 and atol == 0 else f"tolerance atol {atol:g} + rtol {rtol:g}"


def compare_tensor(got: torch.Tensor, want: torch.Tensor, *, rtol: float, atol: float) -> str | None:
    """None when close (``|got - want| <= atol + rtol·|want|`` everywhere, bitwise when both are 0)."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} != expected {tuple(want.shape)}"
    if rtol == 0 and atol == 0:
        if torch.equal(got, want):
            return None
    got64, want64 = got.double(), want.double()
    diff = (got64 - want64).abs()
    if rtol or atol:
        if bool((diff <= atol + rtol * want64.abs()).all()):
            return None
    flat = int(torch.argmax(diff))
    where = list(torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else []
    worst = [int(i) for i in where]
    max_abs = float(diff.max())
    max_rel = float((diff / want64.abs().clamp_min(1e-30)).max())
    return (f"max |Δ| = {max_abs:.3g} at {worst} (got {float(got64.flatten()[flat]):.9g}, "
            f"want {float(want64.flatten()[flat]):.9g}) · max rel {max_rel:.3g} · {tolerance_text(rtol, atol)}")


def compare_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], *, scenario: str, prop: str,
                    where: str, label: str, rtol: float, atol: float) -> list[Deviation]:
    deviations = []
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want:
            side = "missing from the run" if name not in got else "not in the expectation"
            deviations.append(Deviation(scenario, prop, where, f"{label}[{name}]", side))
            continue
        detail = compare_tensor(got[name], want[name], rtol=rtol, atol=atol)
        if detail:
            deviations.append(Deviation(scenario, prop, where, f"{label}[{name}]", detail))
    return deviations


def compare_scalar(got: float | None, want: float | None, *, scenario: str, prop: str, where: str, label: str,
                   rtol: float, atol: float) -> list[Deviation]:
    if got is None or want is None:
        if got is want:
            return []
        return [Deviation(scenario, prop, where, label, f"got {got!r}, want {want!r}")]
    detail = compare_tensor(torch.tensor(float(got)), torch.tensor(float(want)), rtol=rtol, atol=atol)
    return [Deviation(scenario, prop, where, label, detail)] if detail else []
