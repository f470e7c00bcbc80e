"""Sharding, measured: a profile cut into N shards, each run end to end by ``accumgate run --shard K/N`` (one after the
other, as N machines would run them side by side), merged by ``accumgate report``, judged by ``accumgate gate`` against
the unsharded run as the baseline, and compared verdict by verdict with it; the shards' wall times give the balance.

    python benchmarks/shards.py run --profile ci --count 4 --shard 1 --work /tmp/shards     # one shard (repeat K=1..N)
    python benchmarks/shards.py summarize --profile ci --count 4 --work /tmp/shards --baseline /tmp/ci-whole \\
        --out benchmarks/results/shards_ci.json
    python benchmarks/shards.py predict --profile full --counts 4,8,16 --sample benchmarks/results/full_sample.json \\
        --out benchmarks/results/shards_full.json

The unsharded baseline is what benchmarks/shard_durations.py --report-dir wrote (the same Runner ``accumgate run``
calls). Nothing here is asserted in a test: the numbers are written to the file named by ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.reports.merge import merge  # noqa: E402
from harness.results import write_atomic  # noqa: E402
from harness.scenario import profile  # noqa: E402
from harness.shards import load_durations, loads, partition  # noqa: E402

XFAILS = REPO / "conformance" / "xfails" / "reference.txt"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_shard(profile_name: str, count: int, shard: int, work: Path) -> int:
    """One shard end to end, timed from the command's start to its exit (world starts and warm-ups included): wall
    time, and the CPU time of the command and its ranks (what a shared machine's load does not inflate)."""
    load_before = os.getloadavg()
    started, cpu = time.perf_counter(), _children_cpu()
    done = _cli("run", "--profile", profile_name, "--shard", f"{shard}/{count}", "--xfails", str(XFAILS),
                "--report-dir", str(work / f"shard-{shard}"))
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    record = {"shard": f"{shard}/{count}", "exit": done.returncode, "command_seconds": wall, "cpu_seconds": cpu,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "last_line": (done.stderr.strip().splitlines() or [""])[-1]}
    write_atomic(work / f"shard-{shard}.timing.json", json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return done.returncode


def _verdicts(outcomes) -> dict[tuple[str, str], str]:
    return {(o.scenario, code): v.outcome for o in outcomes for code, v in o.properties.items()}


def summarize(profile_name: str, count: int, work: Path, baseline: list[str], out: Path) -> int:
    durations = load_durations()
    predicted = loads(partition(profile(profile_name), count, durations), durations)
    timings = [json.loads((work / f"shard-{k}.timing.json").read_text()) for k in range(1, count + 1)]
    shard_dirs = [str(work / f"shard-{k}") for k in range(1, count + 1)]
    whole = merge(baseline)
    sharded = merge(shard_dirs)
    report = _cli("report", *shard_dirs, "--out", str(work / "merged"))
    whole_file = work / "whole.json"
    write_atomic(whole_file, json.dumps(whole.as_results().to_json()) + "\n")
    gate = _cli("gate", "--baseline", str(whole_file), "--current", *shard_dirs)
    got, want = _verdicts(sharded.outcomes), _verdicts(whole.outcomes)
    differing = sorted(f"{s} · {c}: {want.get((s, c))} → {got.get((s, c))}" for s, c in set(got) | set(want)
                       if got.get((s, c)) != want.get((s, c)))
    walls = [t["command_seconds"] for t in timings]
    cpus = [t["cpu_seconds"] for t in timings]
    cmean = sum(cpus) / count
    runner_walls = [sharded_run.wall_seconds for _, sharded_run in sorted(sharded.runs, key=lambda r: str(r[0]))]
    mean, pmean = sum(walls) / count, sum(predicted) / count
    summary = {
        "benchmark": "shards", "profile": profile_name, "count": count,
        "machine": {"cpus": os.cpu_count(), "note": "2-core machine shared with other sessions; load averages per shard"},
        "durations_source": durations.source,
        "scenarios": {"unsharded": len(whole.outcomes), "sharded": len(sharded.outcomes),
                      "per_shard": [len(r.outcomes) for _, r in sorted(sharded.runs, key=lambda r: str(r[0]))]},
        "verdicts": {"unsharded": len(want), "sharded": len(got), "same": not differing, "differing": differing[:20]},
        "report": {"exit": report.returncode, "first_line": (report.stdout.splitlines() or [""])[0],
                   "warnings": [line for line in report.stdout.splitlines() if line.startswith("warning")]},
        "gate": {"exit": gate.returncode, "last_line": (gate.stdout.strip().splitlines() or [""])[-1]},
        "shards": timings,
        "measured_seconds": walls, "measured_cpu_seconds": cpus, "runner_wall_seconds": runner_walls,
        "measured_cpu_imbalance": {"max_over_mean": max(cpus) / cmean, "min_over_mean": min(cpus) / cmean,
                                   "max_deviation_from_mean": max(abs(c - cmean) for c in cpus) / cmean},
        "measured_imbalance": {"max_over_mean": max(walls) / mean, "min_over_mean": min(walls) / mean,
                               "max_deviation_from_mean": max(abs(w - mean) for w in walls) / mean},
        "predicted_seconds": predicted,
        "predicted_imbalance": {"max_deviation_from_mean": max(abs(p - pmean) for p in predicted) / pmean},
        "unsharded_wall_seconds": whole.as_results().wall_seconds,
    }
    write_atomic(out, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0 if not differing and gate.returncode == 0 else 1


def predict(profile_name: str, counts: list[int], sample: Path | None, out: Path) -> int:
    """The balance of N shards of a profile from the recorded durations (estimated where not measured), and its cost
    from a measured sample's mean per scenario."""
    durations = load_durations()
    found = profile(profile_name)
    measured = sum(1 for s in found if s.id in durations.scenarios)
    rows = []
    for count in counts:
        predicted = loads(partition(found, count, durations), durations)
        mean = sum(predicted) / count
        rows.append({"count": count, "predicted_seconds": [round(p, 1) for p in predicted],
                     "max_deviation_from_mean": max(abs(p - mean) for p in predicted) / mean})
    result = {"benchmark": "shards_predicted", "profile": profile_name, "scenarios": len(found),
              "measured_in_durations_file": measured, "durations_source": durations.source,
              "estimated_total_seconds": sum(durations.seconds(s) for s in found), "shards": rows}
    if sample:
        data = json.loads(sample.read_text())
        result["sample"] = {k: data[k] for k in ("what", "scenarios", "mean_seconds", "median_seconds", "wall_seconds",
                                                  "world_start_seconds", "warmup_seconds", "measured_seconds",
                                                  "estimated_from_committed_durations_seconds", "machine")}
        result["sample_extrapolated_total_seconds"] = data["mean_seconds"] * len(found)
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run")
    one.add_argument("--profile", default="ci")
    one.add_argument("--count", type=int, default=4)
    one.add_argument("--shard", type=int, required=True)
    one.add_argument("--work", required=True)
    total = commands.add_parser("summarize")
    total.add_argument("--profile", default="ci")
    total.add_argument("--count", type=int, default=4)
    total.add_argument("--work", required=True)
    total.add_argument("--baseline", nargs="+", required=True, help="the unsharded run's results (files or directories)")
    total.add_argument("--out", required=True)
    ahead = commands.add_parser("predict")
    ahead.add_argument("--profile", default="full")
    ahead.add_argument("--counts", default="4,8,16")
    ahead.add_argument("--sample", default=None)
    ahead.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "run":
        return run_shard(args.profile, args.count, args.shard, Path(args.work))
    if args.command == "summarize":
        return summarize(args.profile, args.count, Path(args.work), args.baseline, Path(args.out))
    return predict(args.profile, [int(c) for c in args.counts.split(",")], Path(args.sample) if args.sample else None,
                   Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
