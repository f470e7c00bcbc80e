"""Generated programs per second, per backend: ``accumgate explore``'s engine (Hypothesis drawing valid programs, the
runner judging each with every property against the model and the oracle) on the reference, derandomized.

    python benchmarks/explore_speed.py [--examples 150] [--backends single,ddp,ds0,ds1,ds2,ds3] [--out FILE]

Target (issue 15, never asserted in a test): >= 150 programs per backend in <= 90 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.explore import default_corpus, explore  # noqa: E402
from harness.results import write_atomic  # noqa: E402
from harness.stack import versions  # noqa: E402
from harness.xfails import for_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=150)
    parser.add_argument("--backends", default="single,ddp,ds0,ds1,ds2,ds3")
    parser.add_argument("--target", default="reference")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "explore_speed.json"))
    args = parser.parse_args()
    xfails, _ = for_run("reference")  # the known upstream bugs shipped with the package, as every face applies them
    rows = []
    started = time.perf_counter()
    for backend in args.backends.split(","):
        (exploration,) = explore(args.target, [backend], args.examples, None, xfails, default_corpus())
        runs = sum(1 for _ in exploration.outcomes)
        rows.append({"backend": backend, "programs": exploration.examples, "seconds": round(exploration.seconds, 1),
                     "programs_per_second": round(exploration.examples / exploration.seconds, 2),
                     "counterexamples": [c.scenario.id for c in exploration.counterexamples], "judged": runs})
        print(f"{backend:7} {exploration.examples:5} programs in {exploration.seconds:6.1f} s "
              f"({exploration.examples / exploration.seconds:.2f}/s), {len(exploration.counterexamples)} "
              "counterexample(s)", flush=True)
        # Written after every backend: a long on-demand run (2,000 per backend) keeps what it measured if cut off.
        result = {"benchmark": "explore_speed", "target": args.target, "examples_per_backend": args.examples,
                  "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
                  "versions": versions(), "rows": rows, "wall_seconds": round(time.perf_counter() - started, 1)}
        write_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
