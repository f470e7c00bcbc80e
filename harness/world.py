"""``World``: a persistent pool of rank processes, joined once, that hosts every backend in any order.

Owns rank processes and nothing else; never imports accelerate at module level, so a broken target cannot
break the pool. A failing rank reports its traceback and exits (its peers would otherwise block in a
collective until the process-group timeout); a crash or hang costs one scenario and a fresh world.
"""
from __future__ import annotations

import enum
import faulthandler
import gc
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from .scenario import Scenario


class ReplyKind(str, enum.Enum):
    """What a rank tells the coordinator (a ``Reply``'s kind)."""

    READY = "ready"  # joined the process group, waiting for jobs
    OK = "ok"  # the job's trace follows
    UNSUPPORTED = "unsupported"  # the target lacks the scenario's API (found by calling it): the reason follows
    RAISED = "raised"  # a recoverable job raised: the traceback follows; the rank waits for CONTINUE or dies
    ERROR = "error"  # the rank failed and is about to exit: the traceback follows
    PONG = "pong"  # answer to PING, after a barrier: the process group is whole
    IDLE = "idle"  # the job needs fewer ranks than this world has: this one sat it out


class Reply(NamedTuple):
    kind: ReplyKind
    payload: Any = None


@dataclass(frozen=True)
class Job:
    """What the coordinator asks of every rank: one scenario on one target (``options`` reach ``job.run``)."""

    scenario: Scenario
    target: str
    options: dict[str, Any]


# Coordinator -> rank besides a Job: PING (prove the process group whole), CONTINUE (after RAISED: go on), STOP.
PING, CONTINUE, STOP = "ping", "continue", None

# Ranks pose as a plain process for world-size-1 jobs by hiding these (warm-world.md).
_DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")
# How much of what the dependencies printed during a failing job is kept beside its traceback.
LOG_TAIL_LINES = 40
# How long a barrier may take to prove the process group whole after a recoverable error.
HEALTH_CHECK_S = 15.0


@dataclass
class JobResult:
    """What every rank returned for one job: traces on success, tracebacks on error, or the reason the
    target does not support the scenario's API."""

    status: str  # "ok" | "unsupported" | "error"
    traces: list[Any] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    reason: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------- rank side
class _RankState:
    """What one rank must restore between scenarios."""

    def __init__(self, rank: int, world_size: int, pg_timeout_s: float) -> None:
        self.rank = rank
        self.world_size = world_size
        self.timeout = timedelta(seconds=pg_timeout_s)
        self.launch_env = {name: os.environ[name] for name in _DISTRIBUTED_ENV if name in os.environ}
        import torch
        import torch.nn.functional

        self.original_linear = torch.nn.functional.linear
        # nccl where CUDA is there (GPU worlds), gloo on CPU; both go through the same jobs.
        self.cuda = torch.cuda.is_available()
        self.backend = "nccl" if self.cuda else "gloo"
        self.frozen_after: set[str] = set()


def reset_between_scenarios(state: _RankState, scenario: Scenario) -> None:
    """The one place that makes a warm world behave like a fresh launch (warm-world.md, measured bit-identical).

    Each step names the silent failure it prevents.
    """
    import torch.nn.functional
    from accelerate.state import AcceleratorState, GradientState, PartialState

    from .job import without_shm_op

    # 1. Without it accelerate reuses the previous state's plugins: a DDP scenario after a DeepSpeed one
    #    silently runs as a DeepSpeed engine with the previous config.
    AcceleratorState._reset_state(reset_partial_state=True)
    # 2. A kept GradientState carries the previous run's sync_gradients/step counter into the next loop.
    GradientState._reset_state()
    # 3. ZeRO-3's Init replaces F.linear process-wide and engine.destroy() does not restore it: under bf16
    #    autocast a later DDP scenario would differ from its fresh run.
    torch.nn.functional.linear = state.original_linear
    # 4. Each scenario chooses DeepSpeed or not through this variable, read when the state is created.
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true" if scenario.is_deepspeed else "false"
    # 5. World size 1 inside the 2-rank world: hide the launch variables so accelerate sees a plain process;
    #    restore them otherwise, or a later 2-rank scenario would run as one process on each rank.
    for name in _DISTRIBUTED_ENV:
        os.environ.pop(name, None)
    if scenario.world_size < state.world_size:
        os.environ["WORLD_SIZE"] = str(scenario.world_size)
    else:
        os.environ.update(state.launch_env)
    # 6. Re-create PartialState with exactly the launch's arguments: re-created without a backend, accelerate
    #    decides "one process" on a CPU host and rank 1 silently trains on rank 0's data. (DeepSpeed's comm backend
    #    starts here: its shm op, unused by training, is not built: job.without_shm_op.)
    if scenario.is_deepspeed:
        without_shm_op()
    if scenario.is_deepspeed or state.cuda:
        PartialState(backend=state.backend, timeout=state.timeout)
    else:
        PartialState(cpu=True, timeout=state.timeout)


class _CapturedOutput:
    """Everything the rank prints while a job runs (DeepSpeed's and accelerate's log lines, warnings printed by C++)
    goes to a file, not the console: a person reads one progress line per scenario, and the log of a failing
    scenario beside its traceback. File descriptors 1 and 2 are redirected, so output from C++ is caught too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: list[int] = []

    def __enter__(self) -> "_CapturedOutput":
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        target = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        import sys

        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = []

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except OSError:
            return ""


def _log_tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return "\n--- what the rank printed (last lines) ---\n" + "\n".join(lines[-LOG_TAIL_LINES:])


def _rank_main(rank: int, world_size: int, port: int, conn: Any, pg_timeout_s: float, stacks_path: str) -> None:
    os.environ.update({
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size), "LOCAL_SIZE": str(world_size),
        "OMP_NUM_THREADS": "1",
    })
    # On a hang the coordinator sends SIGUSR1: every thread's stack lands in this file for the report.
    stacks = open(stacks_path, "w")  # noqa: SIM115 - kept open for the life of the rank
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    captured = _CapturedOutput(Path(stacks_path).with_suffix(".log"))
    try:
        import torch

        torch.set_num_threads(1)
        from accelerate.state import PartialState

        from . import job

        state = _RankState(rank, world_size, pg_timeout_s)
        PartialState(backend=state.backend, timeout=state.timeout)
        conn.send_bytes(pickle.dumps(Reply(ReplyKind.READY)))
        while True:
            message = pickle.loads(conn.recv_bytes())
            if message is STOP:
                break
            if message == PING:  # after a recoverable error: is the process group still whole?
                import torch.distributed as dist

                dist.barrier()
                conn.send_bytes(pickle.dumps(Reply(ReplyKind.PONG)))
                continue
            scenario, target, options = message.scenario, message.target, dict(message.options)
            recoverable = options.pop("recoverable", False)
            if rank >= scenario.world_size:
                conn.send_bytes(pickle.dumps(Reply(ReplyKind.IDLE)))
                continue
            try:
                with captured:
                    reset_between_scenarios(state, scenario)
                    result = job.run(scenario, target, rank, **options)
            except Exception:
                if not recoverable:
                    raise
                # A probe that is meant to fail (the target refusing a configuration by name) need not cost a
                # world: report, then let the coordinator decide whether every rank stopped cleanly.
                conn.send_bytes(pickle.dumps(Reply(ReplyKind.RAISED, traceback.format_exc() + _log_tail(captured.text()))))
                if pickle.loads(conn.recv_bytes()) != CONTINUE:
                    os._exit(1)
                os.environ.update(state.launch_env)
                continue
            if not isinstance(result, str):
                result.log = captured.text()
            os.environ.update(state.launch_env)
            conn.send_bytes(pickle.dumps(Reply(ReplyKind.UNSUPPORTED, result) if isinstance(result, str)
                                         else Reply(ReplyKind.OK, result)))
            if scenario.backend not in state.frozen_after:
                # The first scenario of a backend pays its lazy imports; freezing what survives it keeps
                # DeepSpeed's own gc.collect() (ZeRO-3 build) from rescanning it: 0.4 s -> 0.06 s (warm-world.md).
                state.frozen_after.add(scenario.backend)
                gc.collect()
                gc.freeze()
        import torch.distributed as dist

        # Measured (versions.md): a barrier before destroying the group makes exits clean.
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    except BaseException:  # report, then die at once so that peers fail fast instead of hanging
        captured.restore()
        try:
            conn.send_bytes(pickle.dumps(Reply(ReplyKind.ERROR, traceback.format_exc() + _log_tail(captured.text()))))
        finally:
            os._exit(1)


# -------------------------------------------------------------------------------------- coordinator side
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorldStartError(RuntimeError):
    """The ranks did not join: an infrastructure error, not a conformance failure."""


class World:
    """Rank processes for one world size; ``run`` sends a job, ``close`` ends them.

    The first job after a failure starts a fresh world: the old process group is unusable (warm-world.md).
    """

    def __init__(self, world_size: int = 2, job_timeout_s: float = 120.0, start_timeout_s: float = 180.0) -> None:
        self.world_size = world_size
        self.job_timeout_s = job_timeout_s
        self.start_timeout_s = start_timeout_s
        # The process group's own timeout stays far above ours, so our deadline is what ends a hang.
        self.pg_timeout_s = max(10 * job_timeout_s, 600.0)
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._port: int | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="accumgate-world-"))
        self.starts = 0
        self.start_seconds = 0.0  # spent starting ranks (spawn, imports, process group), over every start

    # lifecycle
    def start(self) -> None:
        started = time.perf_counter()
        try:
            self._start()
        finally:
            self.start_seconds += time.perf_counter() - started

    def _start(self) -> None:
        # The profiler that counts collectives (P7) makes kineto print two "USDT: profiler_start/stop" lines per
        # micro-batch on stderr in torch 2.13; above its highest level (5) it says nothing. Spawned ranks inherit it.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        context = multiprocessing.get_context("spawn")
        port = self._port = _free_port()
        self._procs, self._conns = [], []
        for rank in range(self.world_size):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_rank_main, daemon=True, name=f"accumgate-rank{rank}",
                args=(rank, self.world_size, port, child, self.pg_timeout_s, str(self._stacks(rank))),
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        self.starts += 1
        replies = self._collect(self.start_timeout_s)
        failed = {rank: reply for rank, reply in replies.items() if reply.kind != ReplyKind.READY}
        if failed:
            self._kill()
            details = "; ".join(f"rank {rank}: {reply.payload}" for rank, reply in failed.items())
            raise WorldStartError(f"world of {self.world_size} ranks did not start: {details}")

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(proc.is_alive() for proc in self._procs)

    def close(self) -> list[str]:
        """End the ranks; a rank that dies at exit after its results are in is a warning, not an error."""
        warnings = []
        for conn in self._conns:
            try:
                conn.send_bytes(pickle.dumps(STOP))
            except OSError:
                pass
        for rank, proc in enumerate(self._procs):
            proc.join(timeout=20)
            if proc.is_alive():
                warnings.append(f"rank {rank} did not exit within 20 s; killed")
                proc.kill()
                proc.join()
            elif proc.exitcode not in (0, None):
                warnings.append(f"rank {rank} exited with code {proc.exitcode} after its results were in")
        self._procs, self._conns = [], []
        self._release_shared_memory()
        return warnings

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # jobs
    def run(self, scenario: Scenario, target: str, **options: Any) -> JobResult:
        """``options`` reach ``job.run`` (e.g. ``count_collectives=True``)."""
        if scenario.world_size > self.world_size:
            raise ValueError(f"{scenario.id} needs {scenario.world_size} ranks; this world has {self.world_size}")
        if not self.alive:
            self._kill()
            self.start()
        started = time.perf_counter()
        for conn in self._conns:
            conn.send_bytes(pickle.dumps(Job(scenario, target, options)))
        replies = self._collect(self.job_timeout_s)
        seconds = time.perf_counter() - started
        raised = {rank: reply.payload for rank, reply in replies.items() if reply.kind == ReplyKind.RAISED}
        if raised and self._recovered(replies, scenario):
            return JobResult("error", errors=raised, seconds=time.perf_counter() - started)
        errors = {rank: reply.payload for rank, reply in replies.items()
                  if reply.kind in (ReplyKind.ERROR, ReplyKind.RAISED)}
        if errors or len(replies) < self.world_size:
            self._kill()
            return JobResult("error", errors=errors, seconds=seconds)
        kinds = {replies[rank].kind for rank in range(scenario.world_size)}
        if kinds == {ReplyKind.UNSUPPORTED}:
            return JobResult("unsupported", reason=replies[0].payload, seconds=seconds)
        if kinds != {ReplyKind.OK}:  # ranks disagree on the target's API: a broken target, not a conformance result
            self._kill()
            return JobResult("error", errors={r: f"{replies[r].kind.value}: {replies[r].payload}" for r in replies},
                             seconds=seconds)
        traces = [replies[rank].payload for rank in range(scenario.world_size)]
        return JobResult("ok", traces=traces, seconds=seconds)

    def _recovered(self, replies: dict[int, Reply], scenario: Scenario) -> bool:
        """A recoverable job that every one of its ranks left by raising (none hung, none died): they go on, and a
        barrier proves the process group whole before the next job; anything less and the world is replaced."""
        workers = range(scenario.world_size)
        if len(replies) < self.world_size or any(replies[rank].kind != ReplyKind.RAISED for rank in workers):
            return False
        try:
            for rank in workers:
                self._conns[rank].send_bytes(pickle.dumps(CONTINUE))
            for conn in self._conns:
                conn.send_bytes(pickle.dumps(PING))
            pongs = self._collect(HEALTH_CHECK_S)
        except OSError:
            return False
        if len(pongs) < self.world_size or any(reply.kind != ReplyKind.PONG for reply in pongs.values()):
            self._kill()
            return False
        return True

    def _collect(self, timeout_s: float) -> dict[int, Reply]:
        """Replies by rank until all are in, one rank fails (peers get a short grace), or the deadline."""
        deadline = time.monotonic() + timeout_s
        replies: dict[int, Reply] = {}
        pending = dict(enumerate(self._conns))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready = multiprocessing.connection.wait(list(pending.values()), timeout=remaining)
            for conn in ready:
                rank = next(r for r, c in pending.items() if c is conn)
                del pending[rank]
                try:
                    replies[rank] = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    code = self._procs[rank].exitcode
                    replies[rank] = Reply(ReplyKind.ERROR, f"rank {rank} died without a report (exit code {code})")
                if replies[rank].kind in (ReplyKind.ERROR, ReplyKind.RAISED):
                    deadline = min(deadline, time.monotonic() + 5.0)
        for rank in pending:
            replies[rank] = Reply(ReplyKind.ERROR, self._hung_rank_report(rank, timeout_s))
        return replies

    def _hung_rank_report(self, rank: int, timeout_s: float) -> str:
        proc = self._procs[rank]
        if not proc.is_alive():
            return f"rank {rank} died (exit code {proc.exitcode})"
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
        stacks = self._stacks(rank).read_text(errors="replace").strip()
        return f"rank {rank} gave no result within {timeout_s:g} s (hung or waiting on a failed peer); stacks:\n{stacks}"

    def _stacks(self, rank: int) -> Path:
        return self._dir / f"rank{rank}.stacks"

    def _kill(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(timeout=10)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        self._release_shared_memory()

    def _release_shared_memory(self) -> None:
        """DeepSpeed's CPU shm comm op maps a 66 MB buffer per rank in /dev/shm, named after the master address
        and port, and never unlinks it: every world would leak 132 MB of RAM for the life of the machine
        (measured: 22 GB after a few hundred worlds, and the next builds crawled in swap-less memory pressure)."""
        if self._port is None:
            return
        for leftover in Path("/dev/shm").glob(f"deepspeed_*_127.0.0.1_{self._port}_*"):
            leftover.unlink(missing_ok=True)
