"""Comparison that explains itself: every ``Deviation`` names scenario, property, step, tensor, the worst
element (got/want), max abs/rel error and the tolerance, so a failure reads alone at 2 a.m.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Against the float64 oracle: reduction order differs between backends (DESIGN §4, P2). precision -> (rtol, atol).
# bf16 (measured, MLP, ZeRO 0-3 and DDP): losses within 3e-3 relative, parameters within 1.7e-3 absolute.
TOLERANCES = {"fp32": (1e-5, 1e-6), "bf16": (2e-2, 5e-3)}
# Low precision rounds every reduction relative to its largest term, so a small element of a large tensor
# carries the error of the tensor's scale: bf16 tolerances scale with max|want| of the tensor, not the element.
TENSOR_SCALED = {"fp32": False, "bf16": True}


def tolerance(precision: str) -> tuple[float, float]:
    """(rtol, atol) against the oracle."""
    return TOLERANCES[precision]


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


def compare_tensor(got: torch.Tensor, want: torch.Tensor, *, rtol: float, atol: float,
                   tensor_scaled: bool = False, ignore: torch.Tensor | None = None,
                   window_scale: float | None = None) -> str | None:
    """None when close: ``|got - want| <= atol + rtol·|want|`` everywhere (``rtol·max|want|`` when
    ``tensor_scaled``; ``rtol·max(max|want|, window_scale)`` when a window's scale is given: round-off accumulated
    over micro-batches whose gradients cancel in the sum is relative to the terms, not to the sum), bitwise when both
    are 0. ``ignore`` masks elements out of the comparison."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} != expected {tuple(want.shape)}"
    if rtol == 0 and atol == 0:
        if torch.equal(got, want):
            return None
    got64, want64 = got.double(), want.double()
    diff = (got64 - want64).abs()
    if ignore is not None:
        diff = diff.masked_fill(ignore, 0.0)
    if rtol or atol:
        scale = want64.abs().max() if (tensor_scaled and want64.numel()) else want64.abs()
        if tensor_scaled and window_scale is not None:
            scale = max(float(scale), window_scale)
        if bool((diff <= atol + rtol * scale).all()):
            return None
    flat = int(torch.argmax(diff))
    where = list(torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else []
    worst = [int(i) for i in where]
    max_abs = float(diff.max())
    max_rel = float((diff / want64.abs().clamp_min(1e-30)).max())
    scaled = " × max|want|" if tensor_scaled else ""
    if tensor_scaled and window_scale is not None:
        scaled = f" × max(max|want|, {window_scale:.3g} = Σ over the window's micro-batches of max|grad|)"
    ignored = ""
    if ignore is not None and bool(ignore.any()):
        ignored = f" · {int(ignore.sum())} element(s) with a gradient below the noise floor ignored (AdamW)"
    return (f"max |Δ| = {max_abs:.3g} at {worst} (got {float(got64.flatten()[flat]):.9g}, "
            f"want {float(want64.flatten()[flat]):.9g}) · max rel {max_rel:.3g} · {tolerance_text(rtol, atol)}{scaled}{ignored}")


def compare_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], *, scenario: str, prop: str,
                    where: str, label: str, rtol: float, atol: float, tensor_scaled: bool = False,
                    ignore: dict[str, torch.Tensor] | None = None,
                    window_scales: dict[str, float] | None = None) -> list[Deviation]:
    deviations = []
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want:
            side = "missing from the run" if name not in got else "not in the expectation"
            deviations.append(Deviation(scenario, prop, where, f"{label}[{name}]", side))
            continue
        detail = compare_tensor(got[name], want[name], rtol=rtol, atol=atol, tensor_scaled=tensor_scaled,
                                ignore=(ignore or {}).get(name), window_scale=(window_scales or {}).get(name))
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
