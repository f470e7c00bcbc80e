"""PNGs embedded in the page (base64), where people would rather look than read. matplotlib with the Agg backend: no
display, no network.

Two kinds. *Margin plots*: per property, the worst |Δ| ÷ tolerance at each compared location (step or micro-batch),
log scale, a line at 1 (the tolerance), a panel per backend and a series per API style: how close each came to
failing. *Curves*: losses and grad norms beside the oracle, drawn only where they part from it: a curve that lies on
the oracle to 1e-7 is two identical lines (its margin plot says more), and a chart of one point is no chart.
"""
from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from dataclasses import dataclass

from ..results import Outcome
from ..scenario import API_STYLES, BACKENDS
from .views import ordered, property_order

GROUP_AXES = ("backend", "schedule", "optimizer", "precision", "clip", "model", "world_size")
STYLE_COLOURS = {"auto": "#1f77b4", "kwarg": "#ff7f0e", "set_boundary": "#2ca02c", "step_and_zero_grad": "#d62728",
                 "ds_native": "#9467bd", "legacy": "#8c564b", "kwarg_hold": "#e377c2", "set_boundary_hold": "#17becf",
                 "ddp_native": "#bcbd22", "trainer": "#7f7f7f", "program": "#393b79", "test_sync": "#8c6d31"}
# A curve within this of the oracle everywhere overlays it (absolute: losses and norms here are O(1)).
OVERLAY = 1e-7
# Margins of exactly 0 (bit-identical) have no logarithm: drawn at the bottom of the axis, never below this.
MARGIN_FLOOR = 1e-9
PANEL_COLUMNS = 4
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "<", ">")


@dataclass
class Figure:
    title: str
    png: str  # base64
    worst: float = 0.0  # the largest value drawn (margin figures are ordered by it: closest to failing first)


# ------------------------------------------------------------------------------------------------ margins
def _margins(verdict) -> list[float]:
    """The recorded per-location margins of a verdict, in order (empty where the results carry none)."""
    found = []
    for entry in getattr(verdict, "margins", None) or []:
        value = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else entry
        if isinstance(value, (int, float)) and math.isfinite(value):
            found.append(float(value))
    return found


def margin_series(outcomes: list[Outcome]) -> dict[tuple[str, str], dict[str, dict[str, list[float]]]]:
    """(stack label, property) -> backend -> API style -> the worst margin at each location, over that style's
    scenarios (location i is the i-th compared step or micro-batch of each)."""
    series: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for outcome in outcomes:
        backend, api = outcome.axes.get("backend", "?"), outcome.axes.get("api", "?")
        for code, verdict in outcome.properties.items():
            values = _margins(verdict)
            if not values:
                continue
            line = series[(outcome.env or "", code)][backend].get(api, [])
            merged = [max(a, b) for a, b in zip(line, values)] + line[len(values):] + values[len(line):]
            series[(outcome.env or "", code)][backend][api] = merged
    return series


def drawable(panels: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, list[float]]]:
    """Panels with at least one series of two points or more (a single location is a number, shown in the grid)."""
    kept = {}
    for backend, styles in panels.items():
        lines = {api: values for api, values in styles.items() if len(values) >= 2}
        if lines:
            kept[backend] = lines
    return kept


def margin_figures(outcomes: list[Outcome], limit: int) -> tuple[list[Figure], int, list[str]]:
    """The margin figures to draw (closest to the tolerance first, at most ``limit``), how many more there were, and
    the (stack, property) pairs whose margins had one location only (stated on the page, not drawn)."""
    candidates, single = [], []
    for (env, code), panels in margin_series(outcomes).items():
        kept = drawable(panels)
        if not kept:
            single.append(f"{code} ({env})")
            continue
        worst = max(v for styles in kept.values() for values in styles.values() for v in values)
        candidates.append((worst, env, code, kept))
    candidates.sort(key=lambda c: (-c[0], c[1], property_order(c[2])))
    figures = [Figure(f"{code} · {env}", _margin_png(code, env, kept), worst) for worst, env, code, kept in candidates[:limit]]
    return figures, max(0, len(candidates) - limit), sorted(single)


def _margin_png(code: str, env: str, panels: dict[str, dict[str, list[float]]]) -> str:
    plt = _pyplot()
    backends = ordered(panels, BACKENDS)
    columns = min(PANEL_COLUMNS, len(backends))
    rows = math.ceil(len(backends) / columns)
    width, height = 3.1 * columns + 0.7, 2.3 * rows + 0.9
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), dpi=90, squeeze=False, sharey=True)
    drawn = [v for styles in panels.values() for values in styles.values() for v in values]
    top = max(10.0, max(drawn) * 3)
    # Zeros (bit-identical) sit on the bottom of the axis: a decade under the smallest non-zero margin.
    bottom = max(MARGIN_FLOOR, min((v for v in drawn if v > 0), default=1e-2) / 10)
    for ax in axes.flat[len(backends):]:
        ax.set_visible(False)
    from matplotlib.ticker import MaxNLocator, NullLocator

    handles = {}
    for ax, backend in zip(axes.flat, backends):
        # Styles often reach the same numbers (the same mathematics): the first drawn is the widest, each with its own
        # marker, so that a line under another still shows.
        for index, api in enumerate(ordered(panels[backend], API_STYLES)):
            values = [max(v, bottom) for v in panels[backend][api]]
            (line,) = ax.plot(range(1, len(values) + 1), values, color=STYLE_COLOURS.get(api, "#7f7f7f"),
                              marker=MARKERS[index % len(MARKERS)], markersize=3.5 - 0.25 * min(index, 8),
                              linewidth=max(0.6, 2.8 - 0.35 * index), alpha=0.9, label=api)
            handles.setdefault(api, line)
        tolerance = ax.axhline(1.0, color="#cf222e", linestyle="--", linewidth=1, label="tolerance")
        ax.set_yscale("log")
        ax.set_ylim(bottom / 2, top)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_title(backend, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3, which="major")
    for ax in axes[:, 0]:
        ax.set_ylabel("|Δ| ÷ tolerance", fontsize=7)
    for ax in axes[-1, :]:
        ax.set_xlabel("compared location (step / micro-batch)", fontsize=6)
    fig.suptitle(f"{code} · {env} (bottom of the axis: exactly equal)", fontsize=8, y=1 - 0.12 / height)
    handles["tolerance (|Δ| = tolerance)"] = tolerance
    fig.legend(list(handles.values()), list(handles), fontsize=6, loc="lower center", ncol=min(len(handles), 2 * columns + 1),
               frameon=False)
    # Fixed margins in inches (tight_layout costs a second per figure on log axes, measured)
    fig.subplots_adjust(left=0.65 / width, right=1 - 0.1 / width, top=1 - 0.6 / height, bottom=0.75 / height,
                        wspace=0.12, hspace=0.6)
    return _png(fig, plt, layout=False)


# ------------------------------------------------------------------------------------------------ curves
def group_key(outcome: Outcome) -> tuple:
    return (outcome.env or "",) + tuple(outcome.axes.get(axis) for axis in GROUP_AXES)


def groups(outcomes: list[Outcome]) -> dict[tuple, list[Outcome]]:
    by_group: dict[tuple, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.curves.get("loss"):
            by_group[group_key(outcome)].append(outcome)
    return dict(by_group)


def parts_from(curve: list, oracle: list) -> bool:
    """A curve that says something the oracle does not: another length, or a point more than OVERLAY away."""
    values = [v for v in curve if v is not None]
    if len(values) != len(oracle):
        return True
    return any(abs(a - b) > OVERLAY for a, b in zip(values, oracle))


def drawn_curves(members: list[Outcome]) -> dict[str, list[tuple[str, list[float]]]]:
    """Per panel ("loss", "grad_norm"), the (API style, curve) pairs worth drawing: parting from the oracle, two points
    or more."""
    panels: dict[str, list[tuple[str, list[float]]]] = {"loss": [], "grad_norm": []}
    for outcome in sorted(members, key=lambda o: o.axes.get("api", "")):
        api = outcome.axes.get("api", "?")
        for name in panels:
            curve = [v for v in outcome.curves.get(name, []) if v is not None]
            oracle = outcome.curves.get(f"oracle_{name}", [])
            if len(curve) >= 2 and parts_from(curve, oracle):
                panels[name].append((api, curve))
    return {name: lines for name, lines in panels.items() if lines}


def figure_png(members: list[Outcome], title: str) -> str | None:
    """The curves that part from the oracle (None when none does), each panel with the oracle dashed."""
    panels = drawn_curves(members)
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 2.6), dpi=80, squeeze=False)
    titles = {"loss": "loss per micro-batch (rank 0)", "grad_norm": "pre-clip grad norm per step"}
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        start = 0 if name == "loss" else 1
        for api, curve in lines:
            ax.plot(range(start, start + len(curve)), curve, color=STYLE_COLOURS.get(api, "#7f7f7f"), label=api,
                    linewidth=1.2, marker="o" if name == "grad_norm" else None, markersize=3)
        oracle = members[0].curves.get(f"oracle_{name}", [])
        ax.plot(range(start, start + len(oracle)), oracle, color="black", linestyle="--", linewidth=1, label="oracle")
        ax.set_title(titles[name], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(title, fontsize=8)
    return _png(fig, plt)


# ------------------------------------------------------------------------------------------------ drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig, plt, layout: bool = True) -> str:
    if layout:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
