"""Worker entry point for worlds started by an external launcher (``torchrun``, ``accelerate launch``, a
cluster scheduler): multi-node or GPU worlds run the very jobs the warm pool runs, and the harness builds
no scheduler of its own.

    torchrun --nproc_per_node 2 -m harness.worker --profile quick -k ds3 --report-dir reports/gpu

Every rank runs every job (world.reset_between_scenarios + job.run, as in the pool); traces are gathered
on rank 0, which evaluates them with the same Runner and writes the same reports.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Sequence

from .scenario import Scenario
from .world import JobResult


class LaunchedWorldPool:
    """A ``WorldPool`` look-alike over the world this process was launched into."""

    def __init__(self, timeout_s: float) -> None:
        import torch.distributed as dist
        from accelerate.state import PartialState

        from .world import _RankState

        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.state = _RankState(self.rank, self.world_size, timeout_s)
        PartialState(backend=self.state.backend, timeout=timedelta(seconds=timeout_s))
        self.dist = dist

    def run(self, scenario: Scenario, target: str, **options: object) -> JobResult:
        import time

        from . import job
        from .world import reset_between_scenarios

        if scenario.world_size != self.world_size:
            return JobResult("error", errors={self.rank: f"{scenario.id} needs {scenario.world_size} ranks; "
                                              f"this launch has {self.world_size}"})
        started = time.perf_counter()
        reset_between_scenarios(self.state, scenario)
        result = job.run(scenario, target, self.rank, **options)  # type: ignore[arg-type]
        os.environ.update(self.state.launch_env)
        gathered: list = [None] * self.world_size
        self.dist.all_gather_object(gathered, result)
        seconds = time.perf_counter() - started
        if all(isinstance(r, str) for r in gathered):
            return JobResult("unsupported", reason=gathered[0], seconds=seconds)
        return JobResult("ok", traces=gathered, seconds=seconds)

    def close(self) -> list[str]:
        if self.dist.is_initialized():
            self.dist.barrier()
        return []


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import _add_selection, _scenarios
    from .results import write_all
    from .runner import Runner
    from .xfails import load

    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__.splitlines()[0])
    _add_selection(parser)
    parser.add_argument("--target", default="reference")
    parser.add_argument("--xfails", default=None)
    parser.add_argument("--report-dir", default="reports")
    parser.add_argument("--timeout", type=float, default=600.0, help="process-group timeout (s)")
    parser.add_argument("--ids", nargs="*", default=None, help="exact scenario ids instead of a profile")
    args = parser.parse_args(argv)
    scenarios = _scenarios(args)
    if args.ids:
        scenarios = [s for s in scenarios if s.id in set(args.ids)]
    pool = LaunchedWorldPool(args.timeout)
    scenarios = [s for s in scenarios if s.world_size == pool.world_size]
    runner = Runner(args.target, xfails=load(args.xfails) if args.xfails else [], pool=pool)  # type: ignore[arg-type]
    results = runner.run(scenarios, selection={"profile": args.profile, "k": args.k, "launcher": "external"})
    if pool.rank == 0:
        write_all(results, Path(args.report_dir))
        print(f"{len(results.outcomes)} scenarios: " + ", ".join(f"{n} {k}" for k, n in results.counts().items() if n))
    if pool.dist.is_initialized():
        pool.dist.destroy_process_group()
    return 1 if any(o.bad for o in results.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
