"""The safety factor of the tolerances, measured: recorded runs of the reference fed through the error analysis of
``harness/tolerances.py``. For every element the run recorded against the float64 teacher-forced oracle (gradients
at every step, the leftover, losses, norms) it computes |Δ| ÷ (u · S), u the precision's unit round-off and S the sum
of the magnitudes of the terms that make the element (per micro-batch and rank), and reports the largest ratios seen
per precision and quantity, with the scenario and tensor that gave them.

    python benchmarks/tolerance_factor.py [--backends single,ddp,...] [--out benchmarks/results/tolerance_factor.json]

The factor in ``harness/tolerances.py`` must exceed every ratio seen here with room to spare (docs/decisions.md says
how much); nothing asserts it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from harness.properties import SUBJECT, Need  # noqa: E402
from harness.results import write_atomic  # noqa: E402
from harness.runner import Runner, WorldPool  # noqa: E402
from harness.scenario import BACKENDS, Scenario, profile  # noqa: E402
from harness.tolerances import UNIT_ROUNDOFF, norm_terms  # noqa: E402


def named_set(backends: list[str]) -> list[Scenario]:
    """Issue 21's sensitivity set: every backend × {mlp, gpt2} × {fp32, bf16} × {uni4, dyn3142} (AdamW, lr warm-up)."""
    return [Scenario(b, "kwarg", schedule, optimizer="adamw", precision=precision, model=model, lr_schedule="warmup",
                     world_size=1 if b == "single" else 2)
            for b in backends for model in ("mlp", "gpt2") for precision in ("fp32", "bf16")
            for schedule in ("uni4", "dyn3142")]


def chosen(backends: list[str]) -> list[Scenario]:
    seen: set[Scenario] = set()
    out = []
    for s in named_set(backends) + profile("ci", backends):
        if s.is_client or s.api in ("trainer", "program") or s in seen:
            continue
        seen.add(s)
        out.append(s)
    return out


class Elements:
    """Per element: |Δ|/u, its terms S, the largest S of its tensor at that step, |want|, and which tensor instance."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.instances: list[str] = []

    def add(self, precision: str, quantity: str, diff: torch.Tensor, terms: torch.Tensor, want: torch.Tensor,
            u: float, where: str) -> None:
        index = len(self.instances)
        self.instances.append(where)
        n = diff.numel()
        rows = torch.stack([diff.flatten() / u, terms.flatten(), terms.max().expand(n) if n else terms.flatten(),
                            want.abs().flatten(), torch.full((n,), float(index), dtype=torch.float64)], dim=1)
        self.rows.setdefault((precision, quantity), []).append(rows.float())


ELEMENTS = Elements()


class Worst:
    """The largest ratios per (precision, quantity), with where they were seen."""

    def __init__(self) -> None:
        self.by: dict[tuple[str, str], dict] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.histogram: dict[tuple[str, str], list[int]] = {}

    def add(self, precision: str, quantity: str, ratio: torch.Tensor, where: str) -> None:
        if ratio.numel() == 0:
            return
        key = (precision, quantity)
        self.counts[key] = self.counts.get(key, 0) + ratio.numel()
        # decades of the ratio: < 1e-3, 1e-3..1e-2, ..., >= 1e3
        buckets = self.histogram.setdefault(key, [0] * 8)
        decade = torch.clamp(torch.floor(torch.log10(ratio.clamp_min(1e-30))) + 4, 0, 7).long()
        for d, n in zip(*torch.unique(decade, return_counts=True)):
            buckets[int(d)] += int(n)
        worst = float(ratio.max())
        if worst > self.by.get(key, {}).get("ratio", -1.0):
            self.by[key] = {"ratio": worst, "where": where}


def measure(runner: Runner, scenario: Scenario, worst: Worst) -> str:
    result = runner.job(Need(SUBJECT, scenario))
    if not result.ok:
        return f"{result.status}: {result.reason or ''}"
    traces = result.traces
    expectation = runner.expectation(scenario, traces[0].facts)
    local = runner.local_oracle(scenario, expectation, traces[0])
    u = UNIT_ROUNDOFF[scenario.precision]
    p = scenario.precision
    for trace in traces:
        for k, (step, want) in enumerate(zip(trace.steps, local.steps)):
            if step.grads is None or want.terms is None:
                continue
            for name, got in step.grads.items():
                terms = want.terms[name]
                diff = (got.double() - want.grads[name]).abs()
                nonzero = terms > 0
                worst.add(p, "grad", diff[nonzero] / (u * terms[nonzero]), f"{scenario.id} rank {trace.rank} step {k + 1} grad[{name}]")
                ELEMENTS.add(p, "grad", diff, terms, want.grads[name], u,
                             f"{scenario.id} rank {trace.rank} step {k + 1} grad[{name}]")
                if bool((diff[~nonzero] > 0).any()):
                    worst.add(p, "grad where every term is 0", torch.tensor([float("inf")]), f"{scenario.id} grad[{name}]")
            norm_scale = u * norm_terms(want.terms)
            for label, got_norm in (("engine norm", step.engine_grad_norm),
                                    ("returned norm", trace.returned.get(step.micro_step))):
                if got_norm is not None and got_norm >= 0 and norm_scale > 0:
                    worst.add(p, label, torch.tensor([abs(got_norm - want.pre_clip_norm) / norm_scale]),
                              f"{scenario.id} rank {trace.rank} step {k + 1}")
        for index, (got, want) in enumerate(zip(trace.losses, local.losses[trace.rank])):
            if want != 0:
                worst.add(p, "loss", torch.tensor([abs(got - want) / (u * abs(want))]),
                          f"{scenario.id} rank {trace.rank} micro-batch {index}")
        if trace.leftover_grads is not None and local.leftover_terms:
            for name, got in trace.leftover_grads.items():
                terms = local.leftover_terms[trace.rank][name]
                diff = (got.double() - local.leftover[trace.rank][name]).abs()
                nonzero = terms > 0
                worst.add(p, "leftover grad", diff[nonzero] / (u * terms[nonzero]),
                          f"{scenario.id} rank {trace.rank} leftover[{name}]")
                ELEMENTS.add(p, "leftover", diff, terms, local.leftover[trace.rank][name], u,
                             f"{scenario.id} rank {trace.rank} leftover[{name}]")
                if bool((diff[~nonzero] > 0).any()):
                    worst.add(p, "leftover where every term is 0", torch.tensor([float("inf")]), f"{scenario.id} leftover[{name}]")
    return "ok"


FLOOR_WEIGHTS = (0.0, 1 / 16, 1 / 4, 1.0)


def floor_table(rows: dict[str, torch.Tensor], instances: list[str]) -> list[dict]:
    """Per precision and quantity, for each weight φ of the floor: the largest |Δ| ÷ u·(S + φ·max S) (the factor
    needed), and the weakest zeroed tensor: min over (tensor, step) of max |want| ÷ (S + φ·max S) (a zeroed tensor is
    caught iff that exceeds F·u), with where each was seen."""
    out = []
    for key, data in rows.items():
        data = data.double()
        a, s, m, w, index = data.unbind(1)
        index = index.long()
        for phi in FLOOR_WEIGHTS:
            scale = s + phi * m
            ratio = torch.where(scale > 0, a / scale.clamp_min(1e-300),
                                torch.where(a > 0, torch.full_like(a, float("inf")), torch.zeros_like(a)))
            worst = int(torch.argmax(torch.nan_to_num(ratio, posinf=1e308)))
            seen = torch.where(scale > 0, w / scale.clamp_min(1e-300), torch.zeros_like(w))
            per = torch.zeros(len(instances), dtype=torch.float64).scatter_reduce(0, index, seen, reduce="amax")
            has = torch.zeros(len(instances), dtype=torch.float64).scatter_reduce(0, index, w, reduce="amax") > 0
            present = torch.zeros(len(instances), dtype=torch.bool)
            present[index] = True
            per = torch.where(present & has, per, torch.full_like(per, float("inf")))
            weakest = int(torch.argmin(per))
            out.append({"rows": key, "phi": phi, "max_ratio": float(ratio[worst]), "at": instances[int(index[worst])],
                        "weakest_zeroed": float(per[weakest]), "weakest_at": instances[weakest]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("-k", default=None, help="only scenario ids containing this")
    parser.add_argument("--dump", default=None, help="also save every element's numbers here (torch.save)")
    parser.add_argument("--from-dump", default=None, help="only recompute the floor table from a saved dump (and the "
                        "rest from the --out file it wrote)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tolerance_factor.json"))
    args = parser.parse_args()
    if args.from_dump:
        saved = torch.load(args.from_dump)
        out = json.loads(Path(args.out).read_text())
        out["floor_table"] = floor_table(saved["rows"], saved["instances"])
        write_atomic(Path(args.out), json.dumps(out, indent=1) + "\n")
        for row in out["floor_table"]:
            print(f"{row['rows']:15} φ={row['phi']:<7.4g} factor needed {row['max_ratio']:10.4g}  weakest zeroed tensor "
                  f"{row['weakest_zeroed']:.3g} at {row['weakest_at']}")
        return 0
    backends = args.backends.split(",")
    scenarios = [s for s in chosen(backends) if args.k is None or args.k in s.id]
    started = time.perf_counter()
    pool = WorldPool()
    runner = Runner("reference", pool=pool, count_collectives=False)
    worst, status = Worst(), {}
    try:
        for i, scenario in enumerate(scenarios):
            status[scenario.id] = measure(runner, scenario, worst)
            if (i + 1) % 25 == 0:
                print(f"{i + 1}/{len(scenarios)} {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        pool.close()
    out = {
        "scenarios": len(scenarios), "seconds": time.perf_counter() - started, "unit_roundoff": UNIT_ROUNDOFF,
        "not_measured": {k: v for k, v in status.items() if v != "ok"},
        "worst": [{"precision": p, "quantity": q, "elements": worst.counts[(p, q)],
                   "ratio_decades_from_1e-4": worst.histogram[(p, q)], **v}
                  for (p, q), v in sorted(worst.by.items())],
    }
    rows = {f"{p}/{q}": torch.cat(r) for (p, q), r in ELEMENTS.rows.items()}
    out["floor_table"] = floor_table(rows, ELEMENTS.instances)
    write_atomic(Path(args.out), json.dumps(out, indent=1) + "\n")
    if args.dump:
        torch.save({"instances": ELEMENTS.instances, "rows": rows}, args.dump)
    for row in out["worst"]:
        print(f"{row['precision']:5} {row['quantity']:30} max |Δ|/(u·S) = {row['ratio']:10.4g}  over {row['elements']:8} "
              f"elements  {row['ratio_decades_from_1e-4']}  at {row['where']}")
    print(f"not measured: {out['not_measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
