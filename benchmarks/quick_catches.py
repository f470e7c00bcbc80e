"""Does a bare `accumgate run` (the quick profile) catch every mutant the explorer catches within its budget? Issue 23:
the quick profile carries the sentinel programs (the shrunk counterexample of every caught mutant,
harness/programs/sentinels.json) beside seeded programs per backend; this measures, per mutant, that its program is in
the quick profile the CLI builds and that the quick profile's verdicts on it, against the mutant, include a failure.

    python benchmarks/quick_catches.py [--out benchmarks/results/quick_catches.json]

It runs one scenario per mutant (the quick profile's own program for it), not the whole profile 46 times: a mutant
caught by that scenario is caught by the run that holds it. Never asserted in a test (a benchmark, results to a file).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.results import write_atomic  # noqa: E402
from harness.runner import Runner, WorldPool  # noqa: E402
from harness.scenario import Scenario  # noqa: E402
from harness.selection import scenarios  # noqa: E402
from harness.xfails import for_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quick_catches.json"))
    args = parser.parse_args()
    rows_in = json.loads((REPO / "benchmarks" / "results" / "explore_mutants.json").read_text())["rows"]
    quick = {s.id: s for s in scenarios("quick")}
    xfails, _ = for_run("reference")
    pool = WorldPool()
    rows = []
    try:
        for row in rows_in:
            if not row.get("caught"):
                rows.append({"mutant": row["mutant"], "in_quick": False, "caught": False, "why": "explorer missed it"})
                continue
            scenario = Scenario.from_json(row["scenario"])
            started = time.perf_counter()
            outcome = Runner(f"tests.mutants.{row['mutant']}:Accelerator", pool=pool, xfails=xfails).outcome(scenario)
            bad = sorted(v.code for v in outcome.properties.values() if v.bad)
            rows.append({"mutant": row["mutant"], "scenario": scenario.id, "in_quick": scenario.id in quick,
                         "caught": bool(bad) and scenario.id in quick, "properties": bad,
                         "seconds": round(time.perf_counter() - started, 2)})
            print(f"{row['mutant']:32} {'in quick' if scenario.id in quick else 'NOT in quick'}  "
                  f"{', '.join(bad) or 'NOT caught'}", flush=True)
    finally:
        pool.close()
    result = {"benchmark": "quick_catches", "quick_profile_scenarios": len(quick), "mutants": len(rows),
              "caught": sum(r["caught"] for r in rows), "rows": rows}
    write_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    print(f"{result['caught']}/{result['mutants']} caught by the quick profile ({len(quick)} scenarios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
