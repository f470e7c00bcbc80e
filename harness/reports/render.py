"""``matrix.md`` and one self-contained ``matrix.html`` (inline CSS, images embedded, no network): a grid
backend × API style with the worst outcome per cell and counts, a drill-down per scenario, the curves, and the
environment/capability table of every merged run."""
from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, select_autoescape

from ..results import SEVERITY, write_atomic
from ..scenario import API_STYLES, BACKENDS
from . import plots
from .merge import Merged

SYMBOL = {"pass": "✔", "fail": "✘", "error": "⚠", "unsupported": "∅", "xfail": "✘ₓ", "xpass": "✔!", "none": "·"}
MAX_FIGURES = 48

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>accumgate matrix</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f23;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e1e4e8;padding-bottom:4px}
.summary span{display:inline-block;margin-right:14px;font-weight:600}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:center}
th{background:#f6f8fa;font-weight:600} td.label{text-align:left;font-family:ui-monospace,monospace}
.pass{background:#dafbe1}.fail{background:#ffd7d5}.error{background:#ffc2e0}.unsupported{background:#ddf4ff}
.xfail{background:#fff8c5}.xpass{background:#ffb3ae}.none{background:#fafbfc;color:#8c959f}
.cell b{font-size:16px}.cell small{display:block;color:#57606a;font-size:11px}
details{margin:2px 0} summary{cursor:pointer;font-family:ui-monospace,monospace;font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.legend span{margin-right:12px;padding:1px 6px;border-radius:3px}
img{max-width:100%;border:1px solid #eaeef2;margin:6px 0}
</style></head><body>
<h1>accumgate conformance matrix</h1>
<div class="summary">{{ total }} scenario runs from {{ runs|length }} result file(s):
{% for name, n in counts %}<span class="{{ name }}">{{ n }} {{ name }}</span>{% endfor %}</div>
<p class="legend">{% for name, sym in symbols %}<span class="{{ name }}">{{ sym }} {{ name }}</span>{% endfor %}</p>
{% for label, grid in grids %}
<h2>{{ label }}</h2>
<table><tr><th>backend \\ API style</th>{% for api in apis %}<th>{{ api }}</th>{% endfor %}</tr>
{% for backend in backends %}{% if backend in grid %}<tr><td class="label">{{ backend }}</td>
{% for api in apis %}{% set cell = grid[backend].get(api) %}
{% if cell %}<td class="cell {{ cell.worst }}" title="{{ cell.title }}"><b>{{ cell.symbol }}</b><small>{{ cell.text }}</small></td>
{% else %}<td class="none">·</td>{% endif %}{% endfor %}</tr>{% endif %}{% endfor %}
</table>{% endfor %}
<h2>Environment and capabilities</h2>
<table><tr><th>result file</th><th>target</th>{% for key in cap_keys %}<th>{{ key }}</th>{% endfor %}</tr>
{% for run in runs %}<tr><td class="label">{{ run.path }}</td><td>{{ run.target }}</td>
{% for key in cap_keys %}<td>{{ run.caps.get(key, "") }}</td>{% endfor %}</tr>{% endfor %}</table>
<h2>Curves: manual vs automatic vs oracle</h2>
{% for fig in figures %}<img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.png }}">{% endfor %}
{% if figures_left %}<p>{{ figures_left }} more groups not drawn (limit {{ max_figures }}).</p>{% endif %}
<h2>Scenarios</h2>
{% for o in scenarios %}<details{% if o.outcome in ("fail","error","xpass") %} open{% endif %}>
<summary><span class="{{ o.outcome }}">{{ symbols_map[o.outcome] }} {{ o.outcome }}</span>
{{ o.scenario }} · {{ o.env }} · {{ "%.2f"|format(o.seconds) }} s</summary>
{% if o.reason %}<p>reason: {{ o.reason }}</p>{% endif %}
<table class="verdicts"><tr><th>property</th><th>verdict</th><th>first deviation / reason</th></tr>
{% for v in o.properties.values() %}<tr><td class="label">{{ v.name }}</td>
<td class="{{ v.outcome }}">{{ symbols_map[v.outcome] }} {{ v.outcome }}</td>
<td class="label">{{ v.first_line()[:400] }}</td></tr>{% endfor %}</table>
{% if o.program %}<pre>{{ o.program }}</pre>{% endif %}
{% if o.metrics %}<p>worst |Δ| vs oracle:
{% for k, v in o.metrics.items() %}{{ k }} {{ "%.2e"|format(v) }}{% if not loop.last %}, {% endif %}{% endfor %}</p>{% endif %}
{% for d in o.deviations %}<pre>{{ d.message }}</pre>{% endfor %}
{% for rank, tb in o.errors.items() %}<pre>rank {{ rank }}:
{{ tb }}</pre>{% endfor %}
</details>{% endfor %}
</body></html>
"""


def counts_text(counts) -> str:
    """``2 xfail 11 pass``: outcome counts, worst first."""
    return " ".join(f"{n} {name}" for name, n in sorted(counts.items(), key=lambda kv: -SEVERITY[kv[0]]))


class _CellView:
    def __init__(self, cell) -> None:
        self.worst = cell.worst
        self.symbol = SYMBOL[cell.worst]
        self.text = counts_text(cell.counts)
        self.title = "\n".join(o.scenario for o in cell.scenarios)


def _ordered(values: list[str], preferred: tuple[str, ...]) -> list[str]:
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def render_markdown(merged: Merged) -> str:
    lines = ["# accumgate conformance matrix", ""]
    counts = merged.counts()
    lines.append(f"{len(merged.outcomes)} scenario runs: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
    for label in merged.labels:
        grid = merged.grid(label)
        apis = _ordered(sorted({a for row in grid.values() for a in row}), API_STYLES)
        lines += ["", f"## {label}", "", "| backend | " + " | ".join(apis) + " |", "|---" * (len(apis) + 1) + "|"]
        for backend in _ordered(list(grid), BACKENDS):
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


def render_html(merged: Merged) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    grids = []
    for label in merged.labels:
        grid = merged.grid(label)
        grids.append((label, {b: {a: _CellView(c) for a, c in row.items()} for b, row in grid.items()}))
    all_apis = sorted({o.axes.get("api", "?") for o in merged.outcomes})
    all_backends = sorted({o.axes.get("backend", "?") for o in merged.outcomes})
    cap_keys = ["torch", "accelerate", "deepspeed", "transformers", "accelerate_forwards_boundary",
                "engine_boundary_api", "engine_no_sync", "engine_managed_accumulation_key"]
    runs = [{"path": str(path), "target": run.target, "caps": run.environment.get("capabilities", {})}
            for path, run in merged.runs]
    figure_groups = sorted(plots.groups(merged.outcomes).items(), key=lambda kv: str(kv[0]))
    figures = [{"title": " · ".join(str(v) for v in key if v not in (None, "")), "png": plots.figure_png(members, " · ".join(
        str(v) for v in key if v not in (None, "")))} for key, members in figure_groups[:MAX_FIGURES]]
    scenarios = sorted(merged.outcomes, key=lambda o: (-SEVERITY[o.outcome], o.env or "", o.scenario))
    return env.from_string(PAGE).render(
        total=len(merged.outcomes), runs=runs, counts=merged.counts().most_common(),
        symbols=list(SYMBOL.items())[:-1], symbols_map=SYMBOL, grids=grids,
        apis=_ordered(all_apis, API_STYLES), backends=_ordered(all_backends, BACKENDS), cap_keys=cap_keys,
        figures=figures, figures_left=max(0, len(figure_groups) - MAX_FIGURES), max_figures=MAX_FIGURES,
        scenarios=scenarios)


def write_reports(merged: Merged, out: Path) -> list[Path]:
    import json

    written = []
    for name, text in (("matrix.md", render_markdown(merged)), ("matrix.html", render_html(merged)),
                       ("merged.json", json.dumps(merged.as_results().to_json(), indent=1) + "\n")):
        write_atomic(out / name, text)
        written.append(out / name)
    return written


