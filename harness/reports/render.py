"""``matrix.md`` and one self-contained ``matrix.html`` (inline CSS, images embedded, no network, no script). The page,
top down: the headline (counts of (scenario, property) verdicts), the stack × property heatmap (a row per accelerate ×
deepspeed × stage, the share judged vs excused and the share proven per cell), the margin plots, then per stack the
scenario × property grid (folded by backend and API style) and the backend × API style summary, the environment
table, the curves that part from the oracle, and a drill-down per scenario."""
from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, select_autoescape

from ..results import SEVERITY, write_atomic
from ..scenario import API_STYLES, BACKENDS
from . import plots
from .merge import Merged
from .views import heatmap, margin_of, ordered, property_grids, property_totals, verdict_counts

SYMBOL = {"pass": "✔", "fail": "✘", "error": "⚠", "unsupported": "∅", "xfail": "✘ₓ", "xpass": "✔!", "none": "·"}
MAX_FIGURES = 48
MAX_MARGIN_FIGURES = 60
# The page's parts, top down; ``render_html(sections=…)`` draws some of them alone (docs' screenshots of one part).
SECTIONS = ("properties", "margins", "grid", "summary", "environment", "curves", "scenarios")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>accumgate matrix</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f23;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e1e4e8;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.summary span{display:inline-block;margin-right:14px;font-weight:600}
.warning{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:6px 0}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:center}
th{background:#f6f8fa;font-weight:600} td.label{text-align:left;font-family:ui-monospace,monospace}
.pass{background:#dafbe1}.fail{background:#ffd7d5}.error{background:#ffc2e0}.unsupported{background:#ddf4ff}
.xfail{background:#fff8c5}.xpass{background:#ffb3ae}.none{background:#fafbfc;color:#8c959f}
.cell b{font-size:16px}.cell small{display:block;color:#57606a;font-size:11px}
.heat td{font-size:12px;padding:3px 5px}.heat td.cell{min-width:76px}.heat small{font-size:10px}
.heat tr.total td{border-top:2px solid #57606a}
.bar{display:flex;height:7px;margin:3px 0 2px;border:1px solid #d0d7de}.bar span{display:block;height:100%}
.bar .pass{background:#2da44e}.bar .xfail{background:#d4a72c}.bar .fail,.bar .xpass{background:#cf222e}
.bar .error{background:#bf3989}.bar .unsupported{background:#0969da}
.grid{table-layout:fixed}.grid td{padding:2px 6px;font-size:12px}.grid td.v small{display:block;font-size:10px;color:#57606a}
.grid th,.grid td.v,.grid td.none{width:56px;white-space:nowrap}
.grid th:first-child,.grid td.label{width:400px;overflow:hidden;text-overflow:ellipsis}
details{margin:2px 0} summary{cursor:pointer;font-family:ui-monospace,monospace;font-size:12px}
details.backend>summary{font-size:14px;font-weight:600}details.style{margin-left:18px}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.legend span{margin-right:12px;padding:1px 6px;border-radius:3px}
img{max-width:100%;border:1px solid #eaeef2;margin:6px 0}
.note{color:#57606a;font-size:12px}
</style></head><body>
<h1>accumgate conformance matrix</h1>
<div class="summary">{{ verdict_total }} (scenario, property) verdicts of {{ total }} scenarios from {{ runs|length }} result file(s):
{% for name, n in counts %}<span class="{{ name }}">{{ n }} {{ name }}</span>{% endfor %}</div>
{% for w in warnings %}<p class="warning">⚠ {{ w }}</p>{% endfor %}
<p class="legend">{% for name, sym in symbols %}<span class="{{ name }}">{{ sym }} {{ name }}</span>{% endfor %}</p>

{% if "properties" in sections %}<h2 id="properties">Properties by stack</h2>
<p class="note">A row per target · accelerate · deepspeed · stage, a cell per property: the worst verdict, the bar of
all its verdicts (green pass, yellow excused by an xfails line, red/pink/blue not passing), how many were judged on
evidence and how many excused, how many were proven able to fail (synthetic faults caught, of the verdicts that
declared any; "proof —": results written before verdicts recorded it), and the worst margin (|Δ| ÷ tolerance).</p>
<table class="heat"><tr><th>target</th><th>accelerate</th><th>deepspeed</th><th>stage</th>
{% for code in heat_codes %}<th>{{ code }}</th>{% endfor %}</tr>
{% for row in heat_rows %}<tr>{% for part in row.parts %}<td class="label">{{ part }}</td>{% endfor %}
{% for code in heat_codes %}{% set cell = row.cells.get(code) %}
{% if cell %}<td class="cell {{ cell.worst }}" title="{{ cell.title }}"><b>{{ cell.symbol }}</b>
<div class="bar">{% for outcome, share in cell.shares %}
<span class="{{ outcome }}" style="width:{{ '%.1f'|format(share * 100) }}%"></span>{% endfor %}</div>
<small>{{ cell.judged }} judged{% if cell.excused %} · {{ cell.excused }} excused{% endif %}</small>
<small>{{ cell.proven }}{% if cell.margin %} · margin {{ cell.margin }}{% endif %}</small></td>
{% else %}<td class="none">·</td>{% endif %}{% endfor %}</tr>{% endfor %}
{% if heat_rows|length > 1 %}<tr class="total"><td class="label" colspan="4">all stacks</td>
{% for code in heat_codes %}{% set cell = heat_total.cells.get(code) %}<td class="cell {{ cell.worst }}" title="{{ cell.title }}">
<b>{{ cell.symbol }}</b><small>{{ cell.judged }} judged{% if cell.excused %} · {{ cell.excused }} excused{% endif %}</small>
<small>{{ cell.proven }}{% if cell.margin %} · margin {{ cell.margin }}{% endif %}</small></td>{% endfor %}</tr>{% endif %}
</table>{% endif %}

{% if "margins" in sections %}<h2 id="margins">Margins: how close each backend and style came to the tolerance</h2>
{% if margin_figures %}<p class="note">Per property, the worst |Δ| ÷ tolerance at each compared step or micro-batch (log
scale; the dashed line at 1 is the tolerance, the bottom of the axis is exactly equal), a panel per backend, a line per
API style.</p>
{% for fig in margin_figures %}<img alt="margins {{ fig.title }}" src="data:image/png;base64,{{ fig.png }}">{% endfor %}
{% if margin_left %}<p>{{ margin_left }} more margin figures not drawn (limit {{ max_margin_figures }}; the closest to the
tolerance are drawn).</p>{% endif %}
{% else %}<p>No per-location margins recorded in these results (results written before verdicts carried them).</p>{% endif %}
{% if margin_single %}<p class="note">One compared location only (not drawn; the margin is in the grid):
{{ margin_single|join(", ") }}.</p>{% endif %}
{% endif %}
{% if "grid" in sections %}<h2 id="grid">Verdicts by scenario and property</h2>
{% for grid in property_grids %}<h3>{{ grid.env }}</h3>
<p class="summary">{{ grid.total }} verdicts:
{% for name, n in grid.counts %}<span class="{{ name }}">{{ n }} {{ name }}</span>{% endfor %}</p>
{% for b in grid.backends %}<details class="backend"{% if b.open or unfold %} open{% endif %}>
<summary><span class="{{ b.worst }}">{{ symbols_map[b.worst] }}</span>
{{ b.backend }} · {{ b.text }}</summary>
{% for st in b.styles %}<details class="style"{% if st.open or unfold %} open{% endif %}>
<summary><span class="{{ st.worst }}">{{ symbols_map[st.worst] }}</span>
{{ st.api }} · {{ st.text }}</summary>
<table class="grid"><tr><th>scenario</th>{% for code in grid.codes %}<th>{{ code }}</th>{% endfor %}</tr>
{% for row in st.rows %}<tr><td class="label">{{ row.scenario }}</td>
{% for cell in row.cells %}{% if cell %}<td class="v {{ cell.outcome }}" title="{{ cell.title }}">{{ symbols_map[cell.outcome] }}
{%- if cell.margin %}<small>{{ cell.margin }}</small>{% endif %}</td>
{% else %}<td class="none">·</td>{% endif %}{% endfor %}</tr>{% endfor %}</table></details>{% endfor %}
</details>{% endfor %}{% endfor %}{% endif %}

{% if "summary" in sections %}{% for label, grid in grids %}
<h2>{{ label }} · backend × API style</h2>
<table><tr><th>backend \\ API style</th>{% for api in apis %}<th>{{ api }}</th>{% endfor %}</tr>
{% for backend in backends %}{% if backend in grid %}<tr><td class="label">{{ backend }}</td>
{% for api in apis %}{% set cell = grid[backend].get(api) %}
{% if cell %}<td class="cell {{ cell.worst }}" title="{{ cell.title }}"><b>{{ cell.symbol }}</b><small>{{ cell.text }}</small></td>
{% else %}<td class="none">·</td>{% endif %}{% endfor %}</tr>{% endif %}{% endfor %}
</table>{% endfor %}{% endif %}
{% if "environment" in sections %}<h2>Environment and capabilities</h2>
<table><tr><th>result file</th><th>target</th><th>shard</th>{% for key in cap_keys %}<th>{{ key }}</th>{% endfor %}</tr>
{% for run in runs %}<tr><td class="label">{{ run.path }}</td><td>{{ run.target }}</td><td>{{ run.shard }}</td>
{% for key in cap_keys %}<td>{{ run.caps.get(key, "") }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if "curves" in sections %}<h2>Curves that part from the oracle</h2>
<p class="note">Loss per micro-batch and grad norm per step beside the free-running oracle, drawn only where a curve
parts from it by more than {{ overlay }} ({{ curves_overlaid }} groups lie on the oracle and are not drawn) and has two
points or more.</p>
{% for fig in figures %}<img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.png }}">{% endfor %}
{% if figures_left %}<p>{{ figures_left }} more groups not examined (limit {{ max_figures }} figures).</p>{% endif %}{% endif %}
{% if "scenarios" in sections %}<h2>Scenarios</h2>
{% for o in scenarios %}<details{% if o.outcome in ("fail","error","xpass") %} open{% endif %}>
<summary><span class="{{ o.outcome }}">{{ symbols_map[o.outcome] }} {{ o.outcome }}</span>
{{ o.scenario }} · {{ o.env }} · {{ "%.2f"|format(o.seconds) }} s</summary>
{% if o.reason %}<p>reason: {{ o.reason }}</p>{% endif %}
<table class="verdicts"><tr><th>property</th><th>verdict</th><th>margin</th><th>first deviation / reason</th></tr>
{% for v in o.properties.values() %}<tr><td class="label">{{ v.name }}</td>
<td class="{{ v.outcome }}">{{ symbols_map[v.outcome] }} {{ v.outcome }}</td><td>{{ margin_text(v) }}</td>
<td class="label">{{ v.first_line()[:400] }}</td></tr>{% endfor %}</table>
{% if o.program %}<pre>{{ o.program }}</pre>{% endif %}
{% if o.metrics %}<p>worst |Δ| vs oracle:
{% for k, v in o.metrics.items() %}{{ k }} {{ "%.2e"|format(v) }}{% if not loop.last %}, {% endif %}{% endfor %}</p>{% endif %}
{% for d in o.deviations %}<pre>{{ d.message }}</pre>{% endfor %}
{% for rank, tb in o.errors.items() %}<pre>rank {{ rank }}:
{{ tb }}</pre>{% endfor %}
</details>{% endfor %}{% endif %}
</body></html>
"""


def counts_text(counts) -> str:
    """``2 xfail 11 pass``: outcome counts, worst first."""
    return " ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -SEVERITY[kv[0]]))


def _worst(counts) -> str:
    return max(counts, key=lambda o: SEVERITY[o]) if counts else "none"


def margin_text(verdict) -> str:
    """``0.31`` (two significant digits), ``0`` for bit-identical, ``—`` when not recorded."""
    margin = margin_of(verdict)
    if margin is None:
        return "—"
    return "0" if margin == 0 else f"{margin:.2g}"


class _CellView:
    def __init__(self, cell) -> None:
        self.worst = cell.worst
        self.symbol = SYMBOL[cell.worst]
        self.text = counts_text(cell.counts)
        self.title = "\n".join(o.scenario for o in cell.scenarios)


class _HeatView:
    def __init__(self, code: str, cell) -> None:
        self.worst = cell.worst
        self.symbol = SYMBOL[cell.worst]
        self.shares = cell.shares()
        self.judged, self.excused = cell.judged, cell.excused
        self.proven = cell.proven_text()
        self.margin = f"{cell.worst_margin:.2g}" if cell.worst_margin is not None else ""
        self.title = f"{code}: {counts_text(cell.counts)}"


class _VerdictCell:
    def __init__(self, verdict) -> None:
        self.outcome = verdict.outcome
        margin = margin_text(verdict)
        self.margin = "" if margin == "—" else margin
        self.title = f"{verdict.name}: {verdict.outcome}" + (f" — {verdict.first_line()[:300]}" if verdict.first_line() else "")


class _Group:
    def __init__(self, name_attr: str, group, codes: list[str]) -> None:
        setattr(self, name_attr, getattr(group, name_attr))
        self.worst = _worst(group.counts)
        self.text = counts_text(group.counts)
        self.open = self.worst in ("fail", "error", "xpass", "unsupported")


def _grid_view(grid) -> dict:
    backends = []
    for b in grid.backends:
        view = _Group("backend", b, grid.codes)
        view.styles = []
        for st in b.styles:
            style = _Group("api", st, grid.codes)
            style.rows = [{"scenario": r.outcome.scenario,
                           "cells": [(_VerdictCell(r.verdict(c)) if r.verdict(c) else None) for c in grid.codes]}
                          for r in st.rows]
            view.styles.append(style)
        backends.append(view)
    return {"env": grid.env, "codes": grid.codes, "backends": backends, "total": sum(grid.counts.values()),
            "counts": sorted(grid.counts.items(), key=lambda kv: -SEVERITY[kv[0]])}


def render_markdown(merged: Merged) -> str:
    lines = ["# accumgate conformance matrix", ""]
    counts = merged.verdict_counts()
    lines.append(f"{sum(counts.values())} (scenario, property) verdicts of {len(merged.outcomes)} scenarios: "
                 + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    for warning in merged.warnings:
        lines += ["", f"> warning: {warning}"]
    rows, codes = heatmap(merged.outcomes)
    if rows:
        lines += ["", "## Properties by stack", "",
                  "A cell: worst verdict, then verdicts judged on evidence / excused by an xfails line; the last row "
                  "adds how many verdicts were proven able to fail (synthetic faults caught).", "",
                  "| stack | " + " | ".join(codes) + " |", "|---" * (len(codes) + 1) + "|"]
        for row in rows:
            cells = []
            for code in codes:
                cell = row.cells.get(code)
                cells.append(f"{SYMBOL[cell.worst]} {cell.judged}/{cell.excused}" if cell else "·")
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        total = property_totals(rows)
        lines.append("| **all stacks** | " + " | ".join(
            f"{total.cells[c].judged}/{total.cells[c].excused} · {total.cells[c].proven_text()}" for c in codes) + " |")
    for label in merged.labels:
        grid = merged.grid(label)
        apis = ordered({a for row in grid.values() for a in row}, API_STYLES)
        lines += ["", f"## {label}", "", "| backend | " + " | ".join(apis) + " |", "|---" * (len(apis) + 1) + "|"]
        for backend in ordered(grid, BACKENDS):
            cells = []
            for api in apis:
                cell = grid[backend].get(api)
                cells.append(f"{SYMBOL[cell.worst]} {_CellView(cell).text}" if cell else "·")
            lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    bad = [(o, v) for o in merged.outcomes for v in o.properties.values() if v.bad]
    if bad:
        lines += ["", "## Needs attention", ""]
        for o, v in bad:
            lines.append(f"- `{o.scenario}` · {v.code} ({o.env}): **{v.outcome}** — {v.first_line()[:300]}")
    return "\n".join(lines) + "\n"


def render_html(merged: Merged, sections: tuple[str, ...] = SECTIONS, unfold: bool = False) -> str:
    """The page; ``sections`` draws some parts alone, ``unfold`` opens every group of the grid (a screenshot of it)."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"sections {unknown}: expected some of {', '.join(SECTIONS)}")
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    grids = []
    for label in merged.labels:
        grid = merged.grid(label)
        grids.append((label, {b: {a: _CellView(c) for a, c in row.items()} for b, row in grid.items()}))
    all_apis = {o.axes.get("api", "?") for o in merged.outcomes}
    all_backends = {o.axes.get("backend", "?") for o in merged.outcomes}
    cap_keys = ["torch", "accelerate", "deepspeed", "transformers", "accelerate_forwards_boundary",
                "engine_boundary_api", "engine_no_sync", "engine_managed_accumulation_key"]
    runs = [{"path": str(path), "target": run.target, "caps": run.environment.get("capabilities", {}),
             "shard": run.selection.get("shard") or ""} for path, run in merged.runs]
    heat_rows, heat_codes = heatmap(merged.outcomes)
    margin_figures, margin_left, margin_single = (plots.margin_figures(merged.outcomes, MAX_MARGIN_FIGURES)
                                                  if "margins" in sections else ([], 0, []))
    figures, overlaid, examined = [], 0, 0
    figure_groups = sorted(plots.groups(merged.outcomes).items(), key=lambda kv: str(kv[0])) if "curves" in sections else []
    for key, members in figure_groups:
        if len(figures) >= MAX_FIGURES:
            break
        examined += 1
        title = " · ".join(str(v) for v in key if v not in (None, ""))
        png = plots.figure_png(members, title)
        if png is None:
            overlaid += 1
        else:
            figures.append({"title": title, "png": png})
    scenarios = sorted(merged.outcomes, key=lambda o: (-SEVERITY[o.outcome], o.env or "", o.scenario))
    counts = verdict_counts(merged.outcomes)
    return env.from_string(PAGE).render(
        total=len(merged.outcomes), verdict_total=sum(counts.values()), runs=runs,
        counts=sorted(counts.items(), key=lambda kv: -kv[1]), warnings=merged.warnings,
        symbols=list(SYMBOL.items())[:-1], symbols_map=SYMBOL, grids=grids,
        heat_rows=[_heat_row(row, heat_codes) for row in heat_rows], heat_codes=heat_codes,
        heat_total=_heat_row(property_totals(heat_rows), heat_codes),
        margin_figures=margin_figures, margin_left=margin_left, margin_single=margin_single,
        max_margin_figures=MAX_MARGIN_FIGURES, property_grids=[_grid_view(g) for g in property_grids(merged.outcomes)],
        apis=ordered(all_apis, API_STYLES), backends=ordered(all_backends, BACKENDS), cap_keys=cap_keys,
        figures=figures, figures_left=len(figure_groups) - examined, max_figures=MAX_FIGURES,
        curves_overlaid=overlaid, overlay=f"{plots.OVERLAY:g}", scenarios=scenarios, margin_text=margin_text,
        sections=sections, unfold=unfold)


def _heat_row(row, codes: list[str]) -> dict:
    target, _, versions = row.env.partition(" · ")
    accelerate = deepspeed = ""
    for part in versions.split(" · "):
        name, _, version = part.partition(" ")
        if name == "accelerate":
            accelerate = version
        elif name == "deepspeed":
            deepspeed = version
    return {"parts": (target, accelerate, deepspeed, row.stage),
            "cells": {code: _HeatView(code, cell) for code, cell in row.cells.items()}}


def write_reports(merged: Merged, out: Path) -> list[Path]:
    written = []
    for name, text in (("matrix.md", render_markdown(merged)), ("matrix.html", render_html(merged)),
                       ("merged.json", json.dumps(merged.as_results().to_json(), indent=1) + "\n")):
        write_atomic(out / name, text)
        written.append(out / name)
    return written
