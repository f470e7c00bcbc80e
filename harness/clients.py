"""Client programs the suite did not write, run against the target: code that uses none of the new API and must
keep working unchanged (DESIGN §7 "outside checks"). A client is a scenario whose API style names it; it runs in
the warm world like any job, with the target swapped in where the client takes its ``Accelerator`` from, and
reports whether it ran through and, if not, the assertion it stopped on.

- ``test_sync``: accelerate's own ``accelerate/test_utils/scripts/test_sync.py`` (``no_sync`` and ``accumulate()``
  equivalence loops), one process and 2 ranks, exactly as upstream runs it under ``torchrun``.
"""
from __future__ import annotations

import contextlib
import importlib
import traceback
from typing import Any, Iterator

from .scenario import Scenario
from .trace import Trace

CLIENTS = ("test_sync",)


@contextlib.contextmanager
def _process_group_kept() -> Iterator[None]:
    """test_sync's main() ends with ``state.destroy_process_group()``; in the warm world the group outlives the
    client, so that call is a no-op for its duration."""
    from accelerate.state import AcceleratorState, PartialState

    saved = [(cls, cls.__dict__.get("destroy_process_group")) for cls in (PartialState, AcceleratorState)]
    for cls, _ in saved:
        if "destroy_process_group" in cls.__dict__:
            cls.destroy_process_group = lambda self, group=None: None
    try:
        yield
    finally:
        for cls, original in saved:
            if original is not None:
                cls.destroy_process_group = original


def _test_sync(accelerator_cls: Any) -> str | None:
    module = importlib.import_module("accelerate.test_utils.scripts.test_sync")
    original = module.Accelerator
    module.Accelerator = accelerator_cls
    try:
        with _process_group_kept():
            module.main()
    except AssertionError:
        return traceback.format_exc(limit=-3).strip()
    finally:
        module.Accelerator = original
    return None


RUNNERS = {"test_sync": _test_sync}


def run(scenario: Scenario, accelerator_cls: Any, rank: int) -> Trace:
    """The client on this rank; an assertion it stops on is recorded (a conformance failure, not a crash)."""
    trace = Trace(rank=rank)
    trace.client_failure = RUNNERS[scenario.api](accelerator_cls)
    return trace
