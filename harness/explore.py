"""``accumgate explore``: generated accumulation programs through the runner. Hypothesis draws valid programs per
backend (``programs/strategies.py``), the runner judges each with the property registry against the model of DESIGN
§3 and the float64 oracle, and a failure is shrunk to a minimal program, reported as code with the first micro-batch
where model and target part ways, and written as a standalone repro script.

It orchestrates nothing of its own: a program is a scenario like any other, so it runs, is judged, reported and
gated exactly as the named scenarios are. Distinct bugs are told apart by the first property they fail (Hypothesis
shrinks each to its own minimal program). Counterexamples are appended to a corpus file that every run replays first.

``untouched`` explores upstream as it is: only programs without the new API (``strategies.programs(untouched=True)``),
judged by the model and the oracle, so that ``--target native`` explores instead of reporting ``unsupported``; the
corpus then replays only its untouched programs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .results import Outcome
from .runner import Runner, WorldPool
from .scenario import Scenario
from .xfails import Xfail

CORPUS_IN_CHECKOUT = Path("conformance") / "programs_corpus.json"


def default_corpus() -> Path:
    here = Path(__file__).resolve().parent.parent / CORPUS_IN_CHECKOUT
    return CORPUS_IN_CHECKOUT if CORPUS_IN_CHECKOUT.is_file() else here


class ProgramFailed(AssertionError):
    """A program one or more properties failed; subclassed per first failing property so that Hypothesis keeps
    distinct bugs apart and shrinks each on its own."""

    scenario: Scenario
    outcome: Outcome


_FAILURES: dict[str, type[ProgramFailed]] = {}


def _failure(code: str, scenario: Scenario, outcome: Outcome) -> ProgramFailed:
    cls = _FAILURES.setdefault(code, type(f"Fails{code.replace('-', '_')}", (ProgramFailed,), {}))
    error = cls(f"{scenario.id}: {code} failed")
    error.scenario, error.outcome = scenario, outcome
    return error


@dataclass
class Counterexample:
    scenario: Scenario
    outcome: Outcome
    first_disagreement: str
    repro: Path | None = None
    no_repro: str = ""  # why no standalone script could be written


@dataclass
class Exploration:
    backend: str
    examples: int = 0  # programs run, the shrinking's included
    seconds: float = 0.0
    # The program (1-based, in the order run) that first failed: how far the explorer had to look before it found
    # something, shrinking aside (None: nothing failed)
    first_failure: int | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    counterexamples: list[Counterexample] = field(default_factory=list)


def load_corpus(path: Path | None) -> list[Scenario]:
    """The corpus's programs (past counterexamples) and the sentinels (the programs that caught each mutant), replayed
    before any new draw; no path (``--no-corpus``, the mutant benchmark's empty start): neither."""
    from .scenario import sentinels

    if path is None:
        return []
    found = [] if not path.is_file() else [
        Scenario.from_json(entry["scenario"]) for entry in json.loads(path.read_text()).get("programs", [])]
    return found + [s for s in sentinels() if s not in found]


def save_to_corpus(path: Path, found: Sequence[Counterexample], target: str) -> None:
    from .results import write_atomic

    data = json.loads(path.read_text()) if path.is_file() else {"schema": "accumgate.programs", "programs": []}
    known = {json.dumps(entry["scenario"], sort_keys=True) for entry in data["programs"]}
    for counterexample in found:
        entry = counterexample.scenario.to_json()
        if json.dumps(entry, sort_keys=True) not in known:
            data["programs"].append({"scenario": entry, "found_on": target,
                                     "first_disagreement": counterexample.first_disagreement})
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def first_disagreement(outcome: Outcome) -> str:
    """The first deviation of the worst property: where model (or oracle) and target part ways."""
    bad = [v for v in outcome.properties.values() if v.bad]
    if not bad:
        return ""
    first = bad[0]
    if first.deviations:
        return first.deviations[0]["message"].replace("\n", " ")
    return f"{first.name}: {first.outcome}: {first.reason or ''} {('xfails ' + first.known) if first.known else ''}".strip()


def untouched_implied(target: str, untouched: bool) -> bool:
    """Upstream accelerate has none of the new API: exploring it means exploring untouched code."""
    return untouched or target == "native"


def known_bugs_seen(outcomes: Sequence[Outcome], xfails: Sequence[Xfail]) -> dict[str, list[str]]:
    """Known upstream bugs whose signature programs showed (their verdicts are xfail, not counterexamples): bug
    thread -> program ids, so a run reports the bug it met instead of staying silent about it."""
    from .xfails import match_all

    seen: dict[str, list[str]] = {}
    for outcome in outcomes:
        for verdict in outcome.properties.values():
            if verdict.outcome != "xfail":
                continue
            for line in match_all(xfails, outcome.scenario, verdict.code):
                programs = seen.setdefault(line.bug, [])
                if outcome.scenario not in programs:
                    programs.append(outcome.scenario)
    return seen


def explore_backend(runner: Runner, backend: str, examples: int, seed: int | None, corpus: Sequence[Scenario],
                    database: object = None, on_example: Callable[[Outcome], None] | None = None,
                    untouched: bool = False) -> Exploration:
    """Draw up to ``examples`` programs on ``backend`` (after replaying the corpus), return every outcome and the
    minimal counterexamples; ``untouched``: only programs without the new API."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import seed as fixed_seed

    from .programs.strategies import programs
    from .stack import accelerate_forwards_boundary

    found = Exploration(backend)
    started = time.perf_counter()

    def check(scenario: Scenario) -> None:
        outcome = runner.outcome(scenario)
        found.examples += 1
        found.outcomes.append(outcome)
        if on_example:
            on_example(outcome)
        bad = [v for v in outcome.properties.values() if v.bad]
        if bad:
            if found.first_failure is None:
                found.first_failure = found.examples
            raise _failure(bad[0].code, scenario, outcome)

    test = given(programs(backend, accelerate_forwards_boundary(), untouched=untouched))(check)
    for scenario in corpus:
        if scenario.backend == backend and (scenario.untouched or not untouched):
            test = example(scenario)(test)
    test = settings(max_examples=examples, deadline=None, database=database, derandomize=seed is None,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=True, print_blob=False)(test)
    if seed is not None:
        test = fixed_seed(seed)(test)
    try:
        test()
    except ProgramFailed as failure:
        found.counterexamples.append(_counterexample(failure))
    except BaseExceptionGroup as group:  # several distinct bugs, each shrunk on its own
        for failure in _leaves(group):
            if isinstance(failure, ProgramFailed):
                found.counterexamples.append(_counterexample(failure))
            else:
                raise
    found.seconds = time.perf_counter() - started
    return found


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for error in group.exceptions:
        out += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return out


def _counterexample(failure: ProgramFailed) -> Counterexample:
    return Counterexample(failure.scenario, failure.outcome, first_disagreement(failure.outcome))


def write_repro(runner: Runner, counterexample: Counterexample, directory: Path) -> Path | None:
    """``repro/<id>.py`` for a counterexample: its first deviation as a standalone check (where, what was expected,
    the property's tolerance), upstream-only where the program uses none of the new API. None, with the reason kept
    on the counterexample, when the deviation is of a kind no standalone script can check."""
    from .programs.repro import NoRepro, write_for
    from .results import write_atomic
    from .stack import versions
    from .targets import target_path

    scenario = counterexample.scenario
    code = next(v.code for v in counterexample.outcome.properties.values() if v.bad)
    try:
        text = write_for(runner, scenario, code, target_path(runner.target), versions(), counterexample.first_disagreement)
    except NoRepro as why:
        counterexample.no_repro = str(why)
        return None
    path = directory / f"{scenario.id}.py"
    write_atomic(path, text)
    counterexample.repro = path
    return path


def explore(target: str, backends: Sequence[str], examples: int, seed: int | None, xfails: Sequence[Xfail] = (),
            corpus_path: Path | None = None, repro_dir: Path | None = None, database: object = None,
            on_example: Callable[[Outcome], None] | None = None, job_timeout_s: float = 120.0,
            untouched: bool = False) -> list[Exploration]:
    pool = WorldPool(job_timeout_s)
    corpus = load_corpus(corpus_path)
    untouched = untouched_implied(target, untouched)
    explored = []
    try:
        for backend in backends:
            runner = Runner(target, xfails=xfails, pool=pool)
            exploration = explore_backend(runner, backend, examples, seed, corpus, database, on_example, untouched)
            if repro_dir is not None:
                for counterexample in exploration.counterexamples:
                    write_repro(runner, counterexample, repro_dir)
            explored.append(exploration)
    finally:
        pool.close()
    return explored
