"""``accumgate`` command line: ``env`` and ``list`` for now (``run``, ``report``, ``gate`` follow the
harness engine). It orchestrates nothing itself; exit codes follow DESIGN §5 (0 ok, 2 usage error).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3


def _cmd_env(args: argparse.Namespace) -> int:
    from reference_impl.compat import capabilities

    caps = capabilities()
    if args.json:
        print(json.dumps(caps, indent=2, sort_keys=True))
        return EXIT_OK
    width = max(len(key) for key in caps)
    for key, value in caps.items():
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from .scenario import API_STYLES, BACKENDS, SCHEDULES, Scenario

    for backend in BACKENDS:
        for schedule in SCHEDULES:
            for api in API_STYLES:
                print(Scenario(backend, api, schedule, world_size=1 if backend == "single" else 2).id)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accumgate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="versions and boundary capabilities of the installed stack")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(func=_cmd_env)
    listing = commands.add_parser("list", help="scenario ids")
    listing.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors already; keep its code
        return int(exc.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
