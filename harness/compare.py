"""Comparison that explains itself and measures itself: every ``Deviation`` names scenario, property, step, tensor, the
worst element (got/want), max abs/rel error and the tolerance, so a failure reads alone at 2 a.m.; and every
comparison held to a tolerance records its *margin* (worst |Δ| ÷ tolerance, passes included) in the ``Ledger`` of the
judgement it belongs to, so a verdict says how close it came (DESIGN §4 "Every pass proves something").

A tolerance is ``atol + rtol·|want| + bound`` per element: ``bound`` is what an error analysis allows there
(``harness/tolerances.py``); rtol = atol = 0 and no bound is a bitwise comparison, which has no margin. Nothing
here knows precisions or properties.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Iterator

import torch


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


class Ledger:
    """The margins of one judgement, by location (the ``where`` of a comparison without its rank: ``step 2 of 4``),
    in the order first compared, each the worst over the tensors and ranks compared there."""

    def __init__(self) -> None:
        self.margins: dict[str, float] = {}
        self.notes: list[str] = []  # what was not compared and the named fact that says why it cannot exist

    def record(self, where: str, margin: float) -> None:
        location = location_of(where)
        self.margins[location] = max(self.margins.get(location, 0.0), margin)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def worst(self) -> float | None:
        """None when nothing tolerance-bound was compared."""
        return max(self.margins.values()) if self.margins else None

    def as_list(self) -> list[list]:
        return [[where, margin] for where, margin in self.margins.items()]


_LEDGER: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("accumgate_ledger", default=None)
_STOP_AT_FIRST: contextvars.ContextVar[bool] = contextvars.ContextVar("accumgate_stop_at_first", default=False)


class DeviationSeen(Exception):
    """Raised by a comparison inside ``first_deviation_stops()``: one deviation is all a re-judging needs to know."""

    def __init__(self, deviation: Deviation) -> None:
        super().__init__(deviation.message())
        self.deviation = deviation


@contextlib.contextmanager
def ledger() -> Iterator[Ledger]:
    """Every comparison made inside records its margin here (a judge is plain code calling the functions below)."""
    book = Ledger()
    token = _LEDGER.set(book)
    try:
        yield book
    finally:
        _LEDGER.reset(token)


@contextlib.contextmanager
def first_deviation_stops() -> Iterator[None]:
    """Re-judging a synthetic fault: the ledger is left alone (these comparisons are not the verdict's own) and the
    first deviation a comparison finds raises ``DeviationSeen`` (the rest of the judgement would cost time for
    nothing)."""
    token, stop = _LEDGER.set(None), _STOP_AT_FIRST.set(True)
    try:
        yield
    finally:
        _LEDGER.reset(token)
        _STOP_AT_FIRST.reset(stop)


def _found(deviations: list[Deviation]) -> list[Deviation]:
    if deviations and _STOP_AT_FIRST.get():
        raise DeviationSeen(deviations[0])
    return deviations


def location_of(where: str) -> str:
    """``rank 1 · step 2 of 4 (micro-batch 7)`` -> ``step 2 of 4 (micro-batch 7)``; a where of ranks alone -> ``run``."""
    parts = [part for part in where.split(" · ") if not part.startswith("rank ")]
    return " · ".join(parts) or "run"


def note(text: str) -> None:
    """Say in the verdict what was not compared and why (a quantity a named fact of the stack says cannot exist)."""
    book = _LEDGER.get()
    if book is not None:
        book.note(text)


def _record(where: str, margin: float | None) -> None:
    book = _LEDGER.get()
    if book is not None and margin is not None:
        book.record(where, margin)


def tolerance_text(rtol: float, atol: float) -> str:
    return "bit-identical" if rtol == 0 and atol == 0 else f"tolerance atol {atol:g} + rtol {rtol:g}"


def measure_tensor(got: torch.Tensor, want: torch.Tensor, *, rtol: float = 0.0, atol: float = 0.0,
                   bound: torch.Tensor | None = None, bound_text: str = "") -> tuple[float | None, str | None]:
    """(margin, detail): the margin is max |Δ| ÷ (atol + rtol·|want| + bound) over the elements (None for a bitwise
    comparison); the detail is None when every element is within its tolerance, bitwise when both are 0."""
    if got.shape != want.shape:
        return (math.inf if (rtol or atol or bound is not None) else None,
                f"shape {tuple(got.shape)} != expected {tuple(want.shape)}")
    exact = rtol == 0 and atol == 0 and bound is None
    if exact and torch.equal(got, want):
        return None, None
    got64, want64 = got.double(), want.double()
    diff = (got64 - want64).abs()
    margin = None
    allowed = None
    if not exact:
        allowed = atol + rtol * want64.abs()
        if bound is not None:
            allowed = allowed + bound.double()
        allowed = torch.as_tensor(allowed, dtype=torch.float64).expand_as(diff)
        ratio = torch.where(allowed > 0, diff / allowed.clamp_min(1e-300),
                            torch.where(diff > 0, torch.full_like(diff, math.inf), torch.zeros_like(diff)))
        margin = float(ratio.max()) if ratio.numel() else 0.0
        if margin <= 1.0:
            return margin, None
        worst_of = ratio
    else:
        worst_of = diff
    flat = int(torch.argmax(worst_of))
    where = list(torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.dim() else []
    worst = [int(i) for i in where]
    max_abs = float(diff.max())
    max_rel = float((diff / want64.abs().clamp_min(1e-30)).max())
    if exact:
        tolerance = tolerance_text(0, 0)
    else:
        parts = [tolerance_text(rtol, atol)] if (rtol or atol) else []
        if bound is not None:
            parts.append(bound_text or "bound")
        tolerance = f"{' + '.join(parts)} = {float(allowed.flatten()[flat]):.3g} there · |Δ| = {margin:.3g} × tolerance"
        if not parts[0].startswith("tolerance"):
            tolerance = "tolerance " + tolerance
    return margin, (f"max |Δ| = {max_abs:.3g} at {worst} (got {float(got64.flatten()[flat]):.9g}, "
                    f"want {float(want64.flatten()[flat]):.9g}) · max rel {max_rel:.3g} · {tolerance}")


def compare_tensor(got: torch.Tensor, want: torch.Tensor, *, rtol: float = 0.0, atol: float = 0.0,
                   bound: torch.Tensor | None = None, bound_text: str = "") -> str | None:
    """None when close (``measure_tensor``'s detail); records nothing (``compare_tensors`` knows where)."""
    return measure_tensor(got, want, rtol=rtol, atol=atol, bound=bound, bound_text=bound_text)[1]


def compare_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], *, scenario: str, prop: str,
                    where: str, label: str, rtol: float = 0.0, atol: float = 0.0,
                    bounds: dict[str, torch.Tensor] | None = None, bound_text: str = "") -> list[Deviation]:
    """Tensor by tensor (a name missing on either side is a deviation); ``bounds``, by name, are the error analysis's
    per-element allowances (a name without one, where bounds are given, is compared with rtol/atol alone)."""
    deviations = []
    for name in sorted(set(got) | set(want)):
        if name not in got or name not in want:
            side = "missing from the run" if name not in got else "not in the expectation"
            deviations.append(Deviation(scenario, prop, where, f"{label}[{name}]", side))
            _record(where, math.inf if (rtol or atol or bounds is not None) else None)
            _found(deviations)
            continue
        margin, detail = measure_tensor(got[name], want[name], rtol=rtol, atol=atol,
                                        bound=(bounds or {}).get(name), bound_text=bound_text)
        _record(where, margin)
        if detail:
            deviations.append(Deviation(scenario, prop, where, f"{label}[{name}]", detail))
            _found(deviations)
    return _found(deviations)


def compare_scalar(got: float | None, want: float | None, *, scenario: str, prop: str, where: str, label: str,
                   rtol: float = 0.0, atol: float = 0.0, bound: float | None = None, bound_text: str = "",
                   missing_ok: str | None = None) -> list[Deviation]:
    """A number against the expected one. None is a deviation on either side: a quantity neither run recorded is
    missing, not equal, unless ``missing_ok`` says why it cannot exist (a named fact of the stack): then both None
    agree and nothing else does."""
    if got is None or want is None:
        if got is None and want is None and missing_ok:
            note(f"{label}: None on both sides, not compared ({missing_ok})")
            return []
        if got is None and want is None:
            return _found([Deviation(scenario, prop, where, label, "not recorded by either run: None on both sides")])
        extra = f" ({missing_ok})" if missing_ok else ""
        return _found([Deviation(scenario, prop, where, label, f"got {got!r}, want {want!r}{extra}")])
    margin, detail = measure_tensor(torch.tensor(float(got), dtype=torch.float64),
                                    torch.tensor(float(want), dtype=torch.float64), rtol=rtol, atol=atol,
                                    bound=None if bound is None else torch.tensor(bound, dtype=torch.float64),
                                    bound_text=bound_text)
    _record(where, margin)
    return _found([Deviation(scenario, prop, where, label, detail)] if detail else [])


def expect_none(got: float | None, *, scenario: str, prop: str, where: str, label: str, why: str) -> list[Deviation]:
    """A value that must not exist (a call off a boundary returns None): None passes, anything else is a deviation."""
    if got is None:
        return []
    return _found([Deviation(scenario, prop, where, label, f"got {got!r}, want None ({why})")])
