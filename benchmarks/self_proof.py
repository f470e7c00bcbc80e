"""Every pass proves something, measured: per property, how many passes caught every synthetic fault declared for
them, the mean share caught, and the distribution of margins (worst |Δ| ÷ tolerance); and what the self-proof costs
beside the rest of the judging (CPU seconds of the coordinator, where judging runs).

    python benchmarks/self_proof.py [--named | --profile ci --backends ds0] [--out benchmarks/results/self_proof.json]
    python benchmarks/self_proof.py --results reports/ds-zero0/results.json ...   # summarise recorded runs instead

``--named`` is issue 21's set (tests/test_sensitivity.py): every backend × {MLP, GPT-2} × {fp32, bf16} × {uni4,
dyn3142}, every property that applies. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.results import load, write_atomic  # noqa: E402


def summary(verdicts: list[tuple[str, str, dict]]) -> dict:
    """(scenario, code, verdict as JSON) -> per property: passes, fully proven, mean share proven, margins."""
    out: dict[str, dict] = {}
    for _scenario, code, v in verdicts:
        row = out.setdefault(code, {"verdicts": 0, "passes": 0, "passes_with_faults": 0, "fully_proven": 0,
                                    "share_sum": 0.0, "margins": [], "missed": {}})
        row["verdicts"] += 1
        if v["outcome"] != "pass":
            continue
        row["passes"] += 1
        if v.get("margin") is not None:
            row["margins"].append(v["margin"])
        faults, proven = v.get("faults", []), set(v.get("proven", []))
        if faults:
            row["passes_with_faults"] += 1
            row["share_sum"] += len(proven) / len(faults)
            row["fully_proven"] += proven == set(faults)
            for fault in faults:
                if fault not in proven:
                    kind = re.sub(r"\d+", "N", fault.split(" (")[0].split(" at step")[0])
                    row["missed"][kind] = row["missed"].get(kind, 0) + 1
    for row in out.values():
        margins = sorted(row.pop("margins"))
        with_faults = row["passes_with_faults"]
        row["mean_share_proven"] = row.pop("share_sum") / with_faults if with_faults else None
        row["margin_median"] = statistics.median(margins) if margins else None
        row["margin_max"] = margins[-1] if margins else None
        row["margins_compared"] = len(margins)
    return dict(sorted(out.items()))


def run(scenarios) -> tuple[list[tuple[str, str, dict]], dict]:
    from harness.programs.model import InvalidProgram
    from harness.properties import applicable
    from harness.runner import Runner, WorldPool

    pool = WorldPool()
    runner = Runner("reference", pool=pool)
    cpu = {"judging": 0.0, "self-proof": 0.0}
    prove = Runner._prove

    def timed_prove(self, *args):
        started = time.process_time()
        try:
            return prove(self, *args)
        finally:
            cpu["self-proof"] += time.process_time() - started

    Runner._prove = timed_prove
    verdicts = []
    started = time.perf_counter()
    try:
        for scenario in scenarios:
            for prop in applicable(scenario, "reference"):
                for need in prop.needs(scenario):  # every run and its oracle first: the clocks below are judging's
                    result = runner.job(need)
                    if result.ok and result.traces and not scenario.is_client:
                        try:
                            facts = result.traces[0].facts
                            runner.local_oracle(need.scenario, runner.expectation(need.scenario, facts), result.traces[0])
                        except InvalidProgram:
                            pass
            t = time.process_time()
            outcome = runner.outcome(scenario)
            cpu["judging"] += time.process_time() - t
            verdicts += [(scenario.id, code, dataclasses.asdict(v)) for code, v in outcome.properties.items()]
    finally:
        Runner._prove = prove
        pool.close()
    return verdicts, {"cpu_seconds": cpu, "wall_seconds": time.perf_counter() - started, "timings": runner.timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--named", action="store_true", help="issue 21's named set (the default)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--backends", default=None)
    parser.add_argument("--results", nargs="*", default=None, help="summarise these results.json files instead")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "self_proof.json"))
    args = parser.parse_args()
    if args.results:
        verdicts = [(o.scenario, code, dataclasses.asdict(v)) for path in args.results
                    for o in load(path).outcomes for code, v in o.properties.items()]
        out = {"source": args.results, "per_property": summary(verdicts)}
    else:
        if args.profile:
            from harness.scenario import profile

            scenarios = profile(args.profile, args.backends.split(",") if args.backends else None)
            source = f"profile {args.profile} on {args.backends}"
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from test_sensitivity import NAMED

            scenarios, source = NAMED, "issue 21's named set (tests/test_sensitivity.py)"
        verdicts, cost = run(scenarios)
        out = {"source": source, "scenarios": len(scenarios), "verdicts": len(verdicts), **cost,
               "per_property": summary(verdicts)}
    write_atomic(Path(args.out), json.dumps(out, indent=1) + "\n")
    for code, row in out["per_property"].items():
        share = "—" if row["mean_share_proven"] is None else f"{row['mean_share_proven']:.3f}"
        median = "—" if row["margin_median"] is None else f"{row['margin_median']:.3g}"
        worst = "—" if row["margin_max"] is None else f"{row['margin_max']:.3g}"
        print(f"{code:8} {row['passes']:4}/{row['verdicts']:<4} passes, {row['fully_proven']:4} fully proven, mean share "
              f"{share}, margin median {median} max {worst}, missed {row['missed']}")
    if "cpu_seconds" in out:
        print(f"CPU: judging {out['cpu_seconds']['judging']:.1f} s, of which self-proof "
              f"{out['cpu_seconds']['self-proof']:.1f} s; wall {out['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
