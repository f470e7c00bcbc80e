"""World reuse, measured: the quick profile's first N two-rank scenarios (DDP, FSDP2, ZeRO 0-3; every property's
runs: the scenario, its accumulate() baseline, upstream, probes) run (a) in one warm world through the Runner, world
start and each backend's warm-up included, and (b) one fresh ``torchrun`` per scenario through ``harness.worker``
(the same Runner and runs), side by side in one run.

    python benchmarks/world_reuse.py [--n 48] [--out benchmarks/results/world_reuse.json]

Targets (issue 16; not asserted anywhere): <= 0.1 s amortised per scenario run warm, world start and warm-up
included; >= 50x a fresh torchrun per scenario.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.results import write_atomic  # noqa: E402
from harness.runner import Runner, WorldPool  # noqa: E402
from harness.scenario import Scenario, quick  # noqa: E402


def scenarios(n: int) -> list[Scenario]:
    """The quick profile's two-rank scenarios in its own order (the one-process ones share rank 0 of the same world,
    and a fresh launch of them would need another launcher line)."""
    return [s for s in quick() if s.world_size == 2 and not s.is_client][:n]


def warm(chosen: list[Scenario]) -> dict:
    started = time.perf_counter()
    pool = WorldPool()
    pool.worlds[2] = pool.world_for(chosen[0])
    pool.worlds[2].start()
    start_seconds = time.perf_counter() - started
    runner = Runner("reference", pool=pool)
    per = []
    for scenario in chosen:
        t = time.perf_counter()
        outcome = runner.outcome(scenario)
        per.append({"scenario": scenario.id, "seconds": time.perf_counter() - t, "outcome": outcome.outcome,
                    "verdicts": len(outcome.properties)})
    pool.close()
    total = time.perf_counter() - started
    backends = {s.backend for s in chosen}
    steady = sorted(p["seconds"] for p in per[len(backends):])
    runs = len(runner._jobs)  # every distinct run the properties needed (scenario, baseline, upstream, probes)
    return {"world_start_seconds": start_seconds, "total_seconds": total, "per_scenario": per, "runs": runs,
            "verdicts": sum(p["verdicts"] for p in per),
            "amortised_seconds": total / len(per), "amortised_seconds_per_run": total / runs,
            "steady_median_seconds": steady[len(steady) // 2] if steady else None, "timings": runner.timings}


def fresh(chosen: list[Scenario]) -> dict:
    per = []
    started = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for scenario in chosen:
        with tempfile.TemporaryDirectory() as report_dir:
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "harness.worker",
                 "--profile", "full", "-k", scenario.id, "--ids", scenario.id, "--report-dir", report_dir],
                cwd=REPO, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            outcome = "error"
            results = Path(report_dir) / "results.json"
            if results.exists():
                outcome = json.loads(results.read_text())["scenarios"][0]["outcome"]
            per.append({"scenario": scenario.id, "seconds": seconds, "outcome": outcome, "rc": done.returncode})
    return {"total_seconds": time.perf_counter() - started, "per_scenario": per}


def quick_end_to_end() -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as report_dir:
        done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--profile", "quick", "--report-dir", report_dir],
                              cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        verdicts = None
        if (Path(report_dir) / "results.json").exists():
            data = json.loads((Path(report_dir) / "results.json").read_text())
            verdicts = sum(len(s.get("properties", {})) for s in data["scenarios"])
    return {"seconds": time.perf_counter() - started, "scenarios": len(quick()), "verdicts": verdicts,
            "exit_code": done.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "world_reuse.json"))
    args = parser.parse_args()
    chosen = scenarios(args.n)
    warm_result = warm(chosen)
    fresh_result = fresh(chosen)
    quick_result = quick_end_to_end()
    fresh_mean = fresh_result["total_seconds"] / len(chosen)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "n": len(chosen), "warm": warm_result, "fresh": fresh_result, "quick_profile": quick_result,
        "fresh_mean_seconds": fresh_mean,
        "ratio_fresh_over_warm_amortised": fresh_mean / warm_result["amortised_seconds"],
    }
    write_atomic(Path(args.out), json.dumps(report, indent=1) + "\n")
    print(f"warm: {warm_result['amortised_seconds']:.3f} s/scenario amortised, world start and warm-up included "
          f"({warm_result['runs']} runs: {warm_result['amortised_seconds_per_run']:.3f} s/run; "
          f"steady median {warm_result['steady_median_seconds']:.3f} s/scenario, "
          f"world start {warm_result['world_start_seconds']:.1f} s)")
    print(f"fresh torchrun: {fresh_mean:.2f} s/scenario · ratio {report['ratio_fresh_over_warm_amortised']:.0f}x")
    print(f"quick profile end to end: {quick_result['seconds']:.1f} s for {quick_result['scenarios']} scenarios "
          f"(exit {quick_result['exit_code']}) · written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
