"""Worker entry point for worlds started by an external launcher (``torchrun``, ``accelerate launch``, a
cluster scheduler): multi-node or GPU worlds run the very jobs the warm pool runs, and the harness builds
no scheduler of its own.

    torchrun --nproc_per_node 2 -m harness.worker --profile quick -k ds3 --report-dir reports/gpu

Every rank runs every job (world.reset_between_scenarios + job.run, as in the pool); traces are gathered
on rank 0, which judges them with the same Runner and writes the same reports.

A rank that raises does not leave its peers blocked: it posts its traceback in the launcher's key-value store (its own
TCP connection, which outlives the process group) and, unless it is rank 0, ends its process, which closes its
connections, so a peer waiting on it in a collective fails at once and posts its own story (measured: a rank that
dies releases its peer in about a second, one that only destroys its process group does not). If rank 0 raised, the
peers' collectives end at the process group's timeout, which the worker sets to ``--timeout`` (a job's, not the 30
minutes of torch's default). Rank 0 reports the scenario ``error`` with every rank's story; the process group is gone
after that (warm-world.md: it cannot be recovered in place), so the scenarios left are reported as not run, and rank 0
exits 1 (the other ranks exit 0: rank 0's code is the verdict, and torchrun tears a job down on any other). A world
that cannot start is an infrastructure error: exit 3.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

from .scenario import Scenario
from .world import JobResult

EXIT_OK, EXIT_FAILURES, EXIT_INFRA = 0, 1, 3
STORE_PREFIX = "accumgate/error"


class LaunchedWorldPool:
    """A ``WorldPool`` look-alike over the world this process was launched into."""

    def __init__(self, timeout_s: float) -> None:
        import torch.distributed as dist
        from accelerate.state import PartialState

        from .world import _RankState

        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.timeout_s = timeout_s
        self.state = _RankState(self.rank, self.world_size, timeout_s)
        PartialState(backend=self.state.backend, timeout=timedelta(seconds=timeout_s))
        self.dist = dist
        self.jobs = 0
        self.lost_at: str | None = None
        self.store = self._store()

    def _store(self) -> Any:
        """The launcher's key-value store (it outlives a broken process group: its own TCP connection)."""
        try:
            from torch.distributed import distributed_c10d

            return distributed_c10d._get_default_store()
        except Exception:  # a launcher without a store: errors are then only each rank's own
            return None

    def run(self, scenario: Scenario, target: str, **options: object) -> JobResult:
        from . import job
        from .world import reset_between_scenarios

        options.pop("recoverable", None)  # under a launcher any failure ends the process group's usefulness
        self.jobs += 1
        if self.lost_at is not None:
            return JobResult("error", errors={self.rank: f"not run: the process group was lost at {self.lost_at}"})
        if scenario.world_size != self.world_size:
            return JobResult("error", errors={self.rank: f"{scenario.id} needs {scenario.world_size} ranks; "
                                              f"this launch has {self.world_size}"})
        started = time.perf_counter()
        try:
            reset_between_scenarios(self.state, scenario)
            result = job.run(scenario, target, self.rank, **options)  # type: ignore[arg-type]
            os.environ.update(self.state.launch_env)
            gathered: list = [None] * self.world_size
            self.dist.all_gather_object(gathered, result)
        except BaseException:  # noqa: BLE001 - a rank's failure becomes the scenario's error, for every rank
            return self._lost(scenario, traceback.format_exc(), time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if all(isinstance(r, str) for r in gathered):
            return JobResult("unsupported", reason=gathered[0], seconds=seconds)
        return JobResult("ok", traces=gathered, seconds=seconds)

    def _lost(self, scenario: Scenario, text: str, seconds: float) -> JobResult:
        """Post this rank's story; a rank other than 0 then ends its process (its peers' collectives fail at once);
        rank 0 collects every rank's story from the store."""
        self.lost_at = scenario.id
        key = f"{STORE_PREFIX}/{self.jobs}"
        errors = {self.rank: text}
        if self.store is not None:
            self.store.set(f"{key}/{self.rank}", text)
        if self.rank != 0:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_OK)
        if self.store is not None:
            for rank in range(1, self.world_size):
                try:
                    self.store.wait([f"{key}/{rank}"], timedelta(seconds=self.timeout_s + 30))
                    errors[rank] = self.store.get(f"{key}/{rank}").decode(errors="replace")
                except Exception:  # that rank is alive but silent, or gone: say so
                    errors[rank] = f"rank {rank} posted no report within {self.timeout_s + 30:g} s"
        return JobResult("error", errors=errors, seconds=seconds)

    def close(self) -> list[str]:
        if self.lost_at is None and self.dist.is_initialized():
            self.dist.barrier()
        return []


def main(argv: Sequence[str] | None = None) -> int:
    from .results import write_all
    from .runner import Runner
    from .selection import SelectionError, add_arguments, from_arguments
    from .xfails import XfailsError, for_run

    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--target", default="reference")
    parser.add_argument("--xfails", action="append", default=None, help="a vendor's own known failures (added)")
    parser.add_argument("--no-known-bugs", action="store_true", help="apply none of the shipped known upstream bugs")
    parser.add_argument("--report-dir", default="reports")
    parser.add_argument("--timeout", type=float, default=120.0, help="process-group timeout (s)")
    parser.add_argument("--ids", nargs="*", default=None, help="exact scenario ids instead of a profile")
    args = parser.parse_args(argv)
    try:
        scenarios = from_arguments(args)
        xfails, _ = for_run(args.target, args.xfails or [], not args.no_known_bugs)
    except (SelectionError, XfailsError) as exc:
        print(f"harness.worker: error: {exc}", file=sys.stderr)
        return 2
    if args.ids:
        scenarios = [s for s in scenarios if s.id in set(args.ids)]
    try:
        pool = LaunchedWorldPool(args.timeout)
    except Exception as exc:  # the launcher's world did not form: infrastructure, not conformance
        print(f"harness.worker: infrastructure error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INFRA
    scenarios = [s for s in scenarios if s.world_size == pool.world_size]
    runner = Runner(args.target, xfails=xfails, pool=pool)  # type: ignore[arg-type]
    results = runner.run(scenarios, selection={"profile": args.profile, "k": args.k, "launcher": "external"})
    if pool.rank == 0:
        write_all(results, Path(args.report_dir))
        print(f"{len(results.outcomes)} scenarios: " + ", ".join(f"{n} {k}" for k, n in results.counts().items() if n))
    if pool.lost_at is None and pool.dist.is_initialized():
        pool.dist.destroy_process_group()
    if pool.rank != 0:
        return EXIT_OK
    return EXIT_FAILURES if any(o.bad for o in results.outcomes) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
