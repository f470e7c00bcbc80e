"""Every mutant of tests/mutants against the explorer: how many generated programs it takes (from an empty database,
derandomized) until one is caught and shrunk, on the backends where the bug can show, within the CI budget.

    python benchmarks/explore_mutants.py [--examples 150] [--out benchmarks/results/explore_mutants.json]

Target (issue 15, never asserted in a test): every mutant caught within 150 programs per backend.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.explore import explore  # noqa: E402
from harness.results import write_atomic  # noqa: E402
from harness.xfails import for_run  # noqa: E402

GENERIC = ("single", "ddp", "ds0")
DEEPSPEED = ("ds0", "ds1", "ds2", "ds3")
# Where each mutant's bug can show (tried in order until one is caught); the rest: GENERIC.
BACKENDS = {
    "reduce_every_micro_batch": ("ds0", "ds1"),
    "engine_step_every_backward": DEEPSPEED,
    "raises_on_schedule_boundary": DEEPSPEED,
    "doubled_third_step": DEEPSPEED,
    "override_does_not_lift_no_sync": ("ds0", "ds1"),
    "no_ddp_resync": ("ddp",),
    "set_boundary_keeps_sync": ("ddp",),
    "resyncs_user_no_sync": ("ddp",),
    "resync_only_in_accumulate": ("ddp",),
    "drops_backward_kwargs": DEEPSPEED,
    "override_leaks": GENERIC,
    "counts_boundary_twice": DEEPSPEED,
    "override_outlives_accelerator": GENERIC,
    # issue 23's public-API mutants, where their clause applies
    "none_clips_to_one": ("single", "ddp"),
    "without_model_measures_nothing": ("single", "ddp"),
    "off_boundary_zeroes": ("single", "ddp"),
    "second_call_steps_again": ("single", "ddp"),
    "inherits_override": ("single", "ddp"),
    "override_reaches_engine_late": DEEPSPEED,
    "never_warns_clip_mismatch": DEEPSPEED,
    "zero0_norm_unmeasured": ("ds0",),
    "builds_lower_stage": ("ds3",),  # asked for ZeRO-3 only; the built-stack check answers every program
}
# Mutants whose bug needs a model shape programs do not draw (two models, two heads) or that replace the DeepSpeed
# wrapper, not the accelerator: named scenarios and wrapper checks catch them (docs/contract.md).
NOT_EXPLORED = ("global_step_consumed", "per_tensor_resync")


def mutants() -> list[str]:
    """Accelerator mutants the explorer can run (wrapper mutants expose a ``Wrapper`` only)."""
    return sorted(p.stem for p in (REPO / "tests" / "mutants").glob("*.py")
                  if p.stem != "__init__" and p.stem not in NOT_EXPLORED and "class Accelerator" in p.read_text())


def _write_sentinels(rows: list[dict]) -> None:
    """The shrunk program of every caught mutant becomes a sentinel every profile replays (harness/programs/
    sentinels.json, package data; harness.scenario.sentinels)."""
    from harness.scenario import SENTINELS

    programs = [{"mutant": r["mutant"], "property": r["property"], "scenario": r["scenario"]}
                for r in rows if r.get("caught") and r.get("scenario")]
    write_atomic(SENTINELS, json.dumps({"written_by": "benchmarks/explore_mutants.py", "programs": programs},
                                       indent=1) + "\n")
    print(f"{len(programs)} sentinel programs written to {SENTINELS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=150)
    parser.add_argument("--only", default=None, help="comma-separated mutant names")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "explore_mutants.json"))
    args = parser.parse_args()
    xfails, _ = for_run("reference")  # the known upstream bugs shipped with the package, as every face applies them
    chosen = args.only.split(",") if args.only else mutants()
    rows = []
    for mutant in chosen:
        target = f"tests.mutants.{mutant}:Accelerator"
        row = {"mutant": mutant, "caught": False, "tried": []}
        for backend in BACKENDS.get(mutant, GENERIC):
            started = time.perf_counter()
            (exploration,) = explore(target, [backend], args.examples, None, xfails, None)
            tried = {"backend": backend, "programs": exploration.examples, "first_failure": exploration.first_failure,
                     "seconds": round(time.perf_counter() - started, 1)}
            row["tried"].append(tried)
            if exploration.counterexamples:
                found = exploration.counterexamples[0]
                row |= {"caught": True, "backend": backend, "program": found.scenario.id,
                        "micro_batches": len(found.scenario.program),
                        "scenario": found.scenario.to_json(),
                        "property": next(v.code for v in found.outcome.properties.values() if v.bad),
                        "first_disagreement": found.first_disagreement[:300]}
                break
        rows.append(row)
        where = (f"on {row['backend']} by {row['property']} ({row['micro_batches']} micro-batches; first failing program: "
                 f"{row['tried'][-1]['first_failure']})" if row["caught"] else "NOT caught")
        print(f"{mutant:32} {where} after {sum(t['programs'] for t in row['tried'])} programs, "
              f"{sum(t['seconds'] for t in row['tried']):.0f} s", flush=True)
    out = Path(args.out)
    if args.only and out.exists():  # a partial run refreshes its rows in the full table
        fresh = {r["mutant"] for r in rows}
        rows = sorted([r for r in json.loads(out.read_text())["rows"] if r["mutant"] not in fresh] + rows,
                      key=lambda r: r["mutant"])
    result = {"benchmark": "explore_mutants", "examples_per_backend": args.examples, "rows": rows,
              "caught": sum(r["caught"] for r in rows), "mutants": len(rows)}
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    if not args.only or out.exists():
        _write_sentinels(result["rows"])
    print(f"{result['caught']}/{result['mutants']} caught; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
