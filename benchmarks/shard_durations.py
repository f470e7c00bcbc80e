"""What each scenario costs in a warm world, measured: the durations ``--shard K/N`` balances by, and the full profile's
cost per scenario from a sample.

One Runner runs the selection in order (every property's runs: the scenario, its accumulate() baseline, upstream,
splits, probes, follow-ups), exactly as ``accumgate run`` does; a scenario's cost is the CPU time its verdicts took in
the controller and every rank (world starts excluded). CPU time, not wall time: on a machine shared with other work
the wall time of the same kind of scenario moved 4x with the load (0.49 s vs 2.2 s per scenario in two chunks of the ci
profile measured 10 minutes apart, load 6 vs 13), which would have weighted scenarios by when they ran; the wall time
is recorded beside it. Before it, a throw-away Runner in the same worlds warms every backend and world size the
selection uses, and the GPT-2 oracle (imports, DeepSpeed's first engine, transformers): every shard pays its own
warm-ups whatever it holds, so no scenario is charged with them. Run it as tox runs the suite (OMP_NUM_THREADS=1).

    python benchmarks/shard_durations.py --profile ci --report-dir /tmp/ci-whole --write     # harness/shard_durations.json
    python benchmarks/shard_durations.py --profile full --sample 120 --seed 1 --out benchmarks/results/full_sample.json

On a busy 2-core machine a long profile can be measured in contiguous chunks, one process each (``--chunk 1/2 --out
a.json``, ``--chunk 2/2 --out b.json``), then combined: ``--combine a.json b.json --write``.

The unsharded results (``--report-dir``) are the baseline benchmarks/shards.py compares the shards with.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.results import write_all, write_atomic  # noqa: E402
from harness.runner import Runner  # noqa: E402
from harness.scenario import profile  # noqa: E402
from harness.selection import chosen_backends  # noqa: E402
from harness.shards import DURATIONS_FILE, durations_from, load_durations  # noqa: E402
from harness.xfails import for_run  # noqa: E402

EXPLORE_SPEED = REPO / "benchmarks" / "results" / "explore_speed.json"


def program_seconds() -> dict[str, float]:
    """Seconds per generated program per backend, from the explorer's own measurement."""
    rows = json.loads(EXPLORE_SPEED.read_text())["rows"]
    return {row["backend"]: row["seconds"] / row["programs"] for row in rows if row.get("programs")}


def warm_up(chosen: list, pool) -> dict[str, float]:
    """Run, unmeasured, one cheap scenario per (backend, world size) of the selection and one GPT-2 one."""
    from harness.scenario import Scenario

    seconds = {}
    warm = Runner("reference", pool=pool)
    kinds = sorted({(s.backend, s.world_size) for s in chosen})
    picks = []
    for backend, size in kinds:
        try:
            picks.append(Scenario(backend, "auto", "uni4", world_size=size))
        except ValueError:  # no auto/uni4 scenario of that kind: its first scenario pays its warm-up
            continue
    if any(s.model == "gpt2" for s in chosen):
        picks.append(Scenario("single", "auto", "uni4", model="gpt2", world_size=1))
    for scenario in picks:
        t = time.perf_counter()
        warm.outcome(scenario)
        seconds[scenario.id] = time.perf_counter() - t
    return seconds


def cpu_seconds(pool) -> float:
    """CPU time of this process and of every live rank process of the pool (utime + stime from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for world in pool.worlds.values():
        for proc in getattr(world, "_procs", []):  # the rank processes (harness/world.py keeps them here)
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, IndexError, ValueError):
                continue
    return total


def measure(chosen: list, xfails: str | None, report_dir: Path | None) -> dict:
    runner = Runner("reference", xfails=for_run("reference", [xfails] if xfails else [])[0])
    warmups = warm_up(chosen, runner.pool)
    started = time.perf_counter()
    starts_before = runner.pool.start_seconds()
    costs, walls, order, outcomes = {}, {}, [], []
    for scenario in chosen:
        starts, t, cpu = runner.pool.start_seconds(), time.perf_counter(), cpu_seconds(runner.pool)
        outcome = runner.outcome(scenario)
        restarted = runner.pool.start_seconds() - starts
        walls[scenario] = time.perf_counter() - t - restarted
        # A world restarted inside the scenario (after an error) took its old ranks' CPU with it: wall time then.
        costs[scenario] = cpu_seconds(runner.pool) - cpu if not restarted else walls[scenario]
        outcomes.append(outcome)
        order.append(scenario)
        if len(order) % 25 == 0:
            print(f"{len(order)}/{len(chosen)} scenarios, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started
    world_starts = runner.pool.start_seconds() - starts_before  # restarts after an error, if any
    warnings = runner.pool.close()
    by_backend: dict[str, list[float]] = {}
    for scenario, spent in costs.items():
        by_backend.setdefault(scenario.backend, []).append(spent)
    if report_dir is not None:
        from harness.results import RunResults, environment

        write_all(RunResults(target="reference", outcomes=outcomes, environment=environment("reference"),
                             selection={"profile": "measured", "xfails": xfails}, wall_seconds=wall, warnings=warnings),
                  report_dir)
    values = list(costs.values())
    return {"costs": costs, "walls": walls, "wall_seconds": wall, "world_start_seconds": world_starts,
            "warmup_seconds": warmups, "cpu_seconds": sum(costs.values()), "scenario_wall_seconds": sum(walls.values()),
            "scenarios": len(values), "verdicts": sum(len(o.properties) for o in outcomes),
            "mean_seconds": statistics.fmean(values), "median_seconds": statistics.median(values),
            "per_backend_mean": {b: statistics.fmean(v) for b, v in sorted(by_backend.items())},
            "timings": runner.timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--backends", default=None)
    parser.add_argument("--sample", type=int, default=None, help="a seeded random sample of this many scenarios")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--xfails", default=None, help="a vendor's xfails file, added to the known bugs shipped with "
                        "accumgate (as every face applies them)")
    parser.add_argument("--report-dir", default=None, help="also write the run's results.json here")
    parser.add_argument("--write", action="store_true", help=f"write the durations to {DURATIONS_FILE.relative_to(REPO)}")
    parser.add_argument("--out", default=None, help="write the measurement summary (JSON) here")
    parser.add_argument("--chunk", default=None, metavar="I/N", help="only the I-th of N contiguous chunks of the selection")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="run nothing: combine the per-scenario costs of these --out files (with --write)")
    args = parser.parse_args()
    chosen = profile(args.profile, chosen_backends(args.backends))
    population = len(chosen)
    if args.combine:
        return combine(args.combine, chosen, args.write, args.profile)
    if args.sample:
        chosen = random.Random(args.seed).sample(chosen, min(args.sample, len(chosen)))
    if args.chunk:
        index, count = (int(x) for x in args.chunk.split("/"))
        size = -(-len(chosen) // count)
        chosen = chosen[(index - 1) * size:index * size]
    measured = measure(chosen, args.xfails, Path(args.report_dir) if args.report_dir else None)
    committed = load_durations()
    estimates = [committed.seconds(s) for s in measured["costs"]]
    summary = {
        "what": f"{args.profile} profile" + (f", random sample of {len(chosen)} (seed {args.seed})" if args.sample else "")
                + (f", chunk {args.chunk}" if args.chunk else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "population": population, **{k: v for k, v in measured.items() if k not in ("costs", "walls")},
        "estimated_from_committed_durations_seconds": sum(estimates),
        "measured_seconds": sum(measured["costs"].values()),
        "extrapolated_population_seconds": measured["mean_seconds"] * population,
    }
    print(json.dumps(summary, indent=1))
    if args.write:
        durations = durations_from(measured["costs"], program_seconds(),
                                   f"benchmarks/shard_durations.py --profile {args.profile}: {len(chosen)} scenarios, "
                                   f"one warm world, {time.strftime('%Y-%m-%d')}")
        write_atomic(DURATIONS_FILE, dump(durations))
    if args.out:
        per = [{"scenario": s.id, "seconds": round(c, 4), "wall_seconds": round(measured["walls"][s], 4),
                "estimate": round(committed.seconds(s), 4)} for s, c in measured["costs"].items()]
        write_atomic(Path(args.out), json.dumps({**summary, "per_scenario": per}, indent=1) + "\n")
    return 0


def dump(durations) -> str:
    """The durations file, one scenario a line (a diff of a re-measurement reads line by line)."""
    data = durations.to_json()
    head = {k: v for k, v in data.items() if k != "scenarios"}
    items = list(data["scenarios"].items())
    lines = [json.dumps(head)[:-1] + ', "scenarios": {']
    lines += [f"{json.dumps(i)}: {json.dumps(entry)}" + ("," if n < len(items) - 1 else "") for n, (i, entry) in enumerate(items)]
    return "\n".join(lines) + "\n}}\n"


def combine(files: list[str], chosen: list, write: bool, profile_name: str) -> int:
    """The durations file from the per-scenario costs of several chunk runs (each scenario measured once)."""
    by_id = {s.id: s for s in chosen}
    costs, sources = {}, []
    for file in files:
        data = json.loads(Path(file).read_text())
        sources.append(f"{data['what']} ({data['wall_seconds']:.0f} s, load {data['machine']['load_average'][0]:.1f})")
        for row in data["per_scenario"]:
            costs[by_id[row["scenario"]]] = row["seconds"]
    missing = [s.id for s in chosen if s not in costs]
    print(f"{len(costs)} scenarios measured, {len(missing)} of the {profile_name} profile missing")
    if write:
        durations = durations_from(costs, program_seconds(), "CPU seconds (controller + ranks), "
                                   f"benchmarks/shard_durations.py --profile {profile_name}, "
                                   f"{time.strftime('%Y-%m-%d')}: " + "; ".join(sources))
        write_atomic(DURATIONS_FILE, dump(durations))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
