"""Collect `accumgate explore --backends B --examples 2000` runs (one log per backend, as benchmarks/README's recipe
runs them two at a time on a 2-core machine) into benchmarks/results/explore_2000.json: programs, seconds, rate,
counterexamples and the known upstream bugs each backend excused.

    python benchmarks/explore_2000_from_logs.py LOG [LOG ...] --code COMMIT
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "explore_2000.json"
ROW = re.compile(r"^(\w+)\s+(\d+) programs in\s+([\d.]+) s \(([\d.]+)/s\): (\d+) counterexample", re.M)
KNOWN = re.compile(r"^KNOWN UPSTREAM BUG (.+?): (\d+) program\(s\)", re.M)
FOUND = re.compile(r"^COUNTEREXAMPLE (\S+)\n(?:.*\n)*?first disagreement: (.*)$", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--code", required=True, help="the commit the runs explored")
    args = parser.parse_args()
    rows = []
    for path in args.logs:
        text = Path(path).read_text()
        for m in ROW.finditer(text):
            rows.append({"backend": m.group(1), "programs": int(m.group(2)), "seconds": float(m.group(3)),
                         "programs_per_second": float(m.group(4)), "counterexamples": [
                             {"scenario": f.group(1), "first_disagreement": f.group(2)[:300]} for f in FOUND.finditer(text)],
                         "known_bugs_excused": {k.group(1): int(k.group(2)) for k in KNOWN.finditer(text)},
                         "code": args.code, "log": Path(path).name})
    from harness.stack import versions

    result = {"benchmark": "explore_2000", "target": "reference", "examples_per_backend": 2000,
              "machine": {"cpus": 2, "note": "two explorations at a time on the shared 2-core machine"},
              "versions": versions(), "rows": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(f"{r['backend']:6} {r['programs']:5} programs, {len(r['counterexamples'])} counterexample(s), "
                    f"known: {r['known_bugs_excused']}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
