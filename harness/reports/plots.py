"""Loss and grad-norm curves, manual vs automatic vs oracle, as PNGs embedded in the page (base64): people
would rather look than read. matplotlib with the Agg backend: no display, no network."""
from __future__ import annotations

import base64
import io
from collections import defaultdict

from ..results import Outcome

GROUP_AXES = ("backend", "schedule", "optimizer", "precision", "clip", "model", "world_size")
STYLE_COLOURS = {"auto": "#1f77b4", "kwarg": "#ff7f0e", "set_boundary": "#2ca02c", "step_and_zero_grad": "#d62728",
                 "ds_native": "#9467bd", "legacy": "#8c564b"}


def group_key(outcome: Outcome) -> tuple:
    return (outcome.env or "",) + tuple(outcome.axes.get(axis) for axis in GROUP_AXES)


def groups(outcomes: list[Outcome]) -> dict[tuple, list[Outcome]]:
    by_group: dict[tuple, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.curves.get("loss"):
            by_group[group_key(outcome)].append(outcome)
    return dict(by_group)


def figure_png(members: list[Outcome], title: str) -> str:
    """Two panels (loss per micro-batch, grad norm per step), one line per API style, the oracle dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, norm_ax) = plt.subplots(1, 2, figsize=(8, 2.6), dpi=80)
    oracle_drawn = False
    for outcome in sorted(members, key=lambda o: o.axes.get("api", "")):
        api = outcome.axes.get("api", "?")
        colour = STYLE_COLOURS.get(api, "#7f7f7f")
        loss_ax.plot(outcome.curves["loss"], color=colour, label=api, linewidth=1.2)
        norms = [n for n in outcome.curves.get("grad_norm", []) if n is not None]
        if norms:
            norm_ax.plot(range(1, len(norms) + 1), norms, color=colour, marker="o", markersize=3, linewidth=1.2)
        if not oracle_drawn:
            loss_ax.plot(outcome.curves.get("oracle_loss", []), color="black", linestyle="--", linewidth=1, label="oracle")
            oracle = outcome.curves.get("oracle_grad_norm", [])
            norm_ax.plot(range(1, len(oracle) + 1), oracle, color="black", linestyle="--", linewidth=1)
            oracle_drawn = True
    loss_ax.set_title("loss per micro-batch (rank 0)", fontsize=8)
    norm_ax.set_title("pre-clip grad norm per step", fontsize=8)
    for ax in (loss_ax, norm_ax):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=6, loc="upper right")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
