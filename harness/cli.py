"""``accumgate`` command line: ``run``, ``list``, ``env``, ``report``, ``gate``, ``replay``. It parses, validates and prints; the runner
does the work. Exit codes (DESIGN §5): 0 ok, 1 conformance failures, 2 usage error, 3 infrastructure error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
OUTCOME_STYLES = {"pass": "green", "xfail": "yellow", "fail": "bold red", "error": "bold magenta",
                  "unsupported": "cyan", "xpass": "bold red"}


class UsageError(Exception):
    """One line for the user, exit 2."""


def _scenarios(args: argparse.Namespace) -> list:
    from .selection import SelectionError, from_arguments

    try:
        return from_arguments(args)
    except SelectionError as exc:
        raise UsageError(str(exc)) from exc


def _cmd_list(args: argparse.Namespace) -> int:
    for scenario in _scenarios(args):
        print(scenario.id)
    return EXIT_OK


def _cmd_env(args: argparse.Namespace) -> int:
    import contextlib

    from .stack import capabilities
    from .targets import TargetError, target_capabilities, target_path

    try:
        target_path(args.target)
    except TargetError as exc:
        raise UsageError(str(exc)) from exc
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed logs to stdout on import; keep stdout for the table
        caps = capabilities()
        caps |= {f"target: {key}": value for key, value in target_capabilities(args.target).items()}
    if args.json:
        print(json.dumps(caps, indent=2, sort_keys=True))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title="accumgate env: installed stack and boundary capabilities")
    table.add_column("capability")
    table.add_column("value")
    for key, value in caps.items():
        table.add_row(key, str(value))
    Console().print(table)
    return EXIT_OK


def _validate_run(args: argparse.Namespace) -> list:
    # A target module is imported as `python -m` would from here; the spawned ranks inherit sys.path.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    from .results import ResultsError, check_writable
    from .targets import TargetError, load_target, target_path
    from .xfails import XfailsError, for_run

    try:
        target_path(args.target)
        args.xfail_entries, args.xfails_said = for_run(args.target, args.xfails or [], not args.no_known_bugs)
        check_writable(Path(args.report_dir))
        load_target(args.target)  # importable here, so a typo is a usage error, not N scenario errors
    except (TargetError, XfailsError, ResultsError) as exc:
        raise UsageError(str(exc)) from exc
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout}: expected a positive number of seconds")
    return _scenarios(args)


def _cmd_run(args: argparse.Namespace) -> int:
    scenarios = _validate_run(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .results import write_all
    from .runner import Runner
    from .world import WorldStartError

    console = Console(stderr=True)
    selection = {"profile": args.profile, "k": args.k, "world_size": args.world_size, "xfails": args.xfails,
                 "backends": args.backends, "shard": args.shard, "known_bugs": not args.no_known_bugs}
    if not scenarios and args.shard:
        # More shards than this selection fills: an empty shard is a result (the merge counts its shards), not an error.
        from .results import RunResults, environment

        write_all(RunResults(target=args.target, outcomes=[], environment=environment(args.target), selection=selection),
                  Path(args.report_dir))
        console.print(f"shard {args.shard} holds no scenario of this selection · reports in {args.report_dir}")
        return EXIT_OK
    if not scenarios:
        console.print("no scenario matches the selection")
        return EXIT_USAGE
    for line in args.xfails_said:  # once: which known upstream bugs this run excuses, and from where
        console.print(line)
    runner = Runner(args.target, xfails=args.xfail_entries, job_timeout_s=args.timeout)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}"), console=console, transient=False) as progress:
        task = progress.add_task(f"accumgate [{args.target}]", total=len(scenarios), last="")

        def on_outcome(outcome) -> None:
            style = OUTCOME_STYLES.get(outcome.outcome, "")
            for verdict in outcome.properties.values():
                if verdict.bad:
                    vstyle = OUTCOME_STYLES.get(verdict.outcome, "")
                    progress.console.print(f"[{vstyle}]{verdict.outcome.upper():<11}[/] {outcome.scenario} · {verdict.name}")
                    first = verdict.first_line()
                    if first:
                        progress.console.print(f"            {first[:400]}", markup=False, highlight=False)
            progress.update(task, advance=1, last=f"[{style}]{outcome.outcome}[/] {outcome.scenario}")

        try:
            results = runner.run(scenarios, on_outcome=on_outcome, selection=selection)
        except WorldStartError as exc:
            console.print(f"[bold red]infrastructure error:[/] {exc}")
            return EXIT_INFRA
    write_all(results, Path(args.report_dir))
    counts = results.property_counts()
    line = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    console.print(f"{len(results.outcomes)} scenarios, {sum(counts.values())} (scenario, property) verdicts: {line} "
                  f"in {results.wall_seconds:.1f} s · reports in {args.report_dir}")
    return EXIT_FAILURES if any(o.bad for o in results.outcomes) else EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from .reports.merge import merge
    from .reports.render import write_reports
    from .results import ResultsError
    from .xfails import XfailsError, load

    rejudge = {}
    for spec in args.xfails or []:
        target, sep, path = spec.partition("=")
        if not sep or not target or not path:
            raise UsageError(f"--xfails {spec!r}: expected TARGET=FILE, e.g. reference=harness/known_bugs/reference.txt")
        try:
            rejudge[target] = load(path)
        except XfailsError as exc:
            raise UsageError(str(exc)) from exc
    try:
        merged = merge(args.paths, rejudge)
    except ResultsError as exc:
        raise UsageError(str(exc)) from exc
    written = write_reports(merged, Path(args.out))
    if args.screenshots:
        from .reports.browser import BrowserError
        from .reports.screenshots import write_screenshots

        try:
            written += write_screenshots(merged, Path(args.screenshots))
        except BrowserError as exc:
            raise UsageError(f"--screenshots: {exc}") from exc
    if args.support_matrix or args.known_bugs:
        written += _support_pages(args, merged)
    verdicts = merged.verdict_counts()
    counts = ", ".join(f"{n} {k}" for k, n in verdicts.most_common())
    print(f"{len(merged.runs)} result file(s), {sum(verdicts.values())} (scenario, property) verdicts of "
          f"{len(merged.outcomes)} scenarios ({counts})")
    for warning in merged.warnings:
        print(f"warning: {warning}")
    for path in written:
        print(f"  wrote {path}")
    return EXIT_OK


def _support_pages(args: argparse.Namespace, merged) -> list[Path]:
    """docs/support-matrix.md (+ its history, + the README's block) and docs/known-bugs.md."""
    import json

    from . import replay
    from .reports import support
    from .results import write_atomic
    from .xfails import SHIPPED, load

    bugs = replay.load(args.catalogue)
    bug_rows = replay.table(bugs, replay.read_all(args.paths))
    history_file = support.history_path(Path(args.support_matrix)) if args.support_matrix else None
    history = support.load_history(history_file)
    written = []
    if args.support_matrix:
        write_atomic(Path(args.support_matrix), support.render(merged, bug_rows, history, bugs=bugs))
        write_atomic(history_file, json.dumps(support.updated_history(merged, history, bug_rows), indent=1,
                                              ensure_ascii=False) + "\n")
        written += [Path(args.support_matrix), history_file]
        if args.readme:
            if not support.update_readme(Path(args.readme), merged, history):
                raise UsageError(f"--readme {args.readme}: no {support.README_START} … {support.README_END} markers")
            written.append(Path(args.readme))
    if args.known_bugs:
        lines = {path.name: load(path) for path in sorted(SHIPPED.glob("*.txt"))}
        write_atomic(Path(args.known_bugs), support.known_bugs_page(bugs, lines, bug_rows, history))
        written.append(Path(args.known_bugs))
    return written


def _cmd_gate(args: argparse.Namespace) -> int:
    from .reports.gate import compare, coverage, explain, margin_coverage, slim, table
    from .reports.merge import merge
    from .results import ResultsError, write_atomic

    try:
        current_runs = merge(args.current)
        current = current_runs.as_results()
        if args.update_baseline and not Path(args.baseline).exists():
            baseline = current  # the first baseline: nothing to compare with yet
        else:
            baseline = merge([args.baseline]).as_results()
    except ResultsError as exc:
        raise UsageError(str(exc)) from exc
    for warning in current_runs.warnings:  # an incomplete set of shards: its missing verdicts are regressions below
        print(f"warning: {warning}")
    changes = compare(baseline, current)
    print(explain(changes) if args.explain else table(changes))
    print(coverage(baseline, current))
    print(margin_coverage(baseline, current).line())
    regressions = [c for c in changes if c.regression]
    if args.update_baseline:
        write_atomic(Path(args.baseline), slim(current))
        print(f"baseline updated: {args.baseline} ({len(current.outcomes)} scenarios)")
    print(f"{len(regressions)} regression(s) against {args.baseline}")
    return EXIT_FAILURES if regressions and not args.update_baseline else EXIT_OK


def _cmd_explore(args: argparse.Namespace) -> int:
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .explore import default_corpus, explore, known_bugs_seen, save_to_corpus, untouched_implied
    from .programs.strategies import EXPLORED_BACKENDS
    from .results import ResultsError, RunResults, check_writable, environment, write_all
    from .shards import ShardError, parse_shard, shard_backends
    from .targets import TargetError, load_target, target_path
    from .xfails import XfailsError, for_run

    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else list(EXPLORED_BACKENDS)
    unknown = [b for b in backends if b not in EXPLORED_BACKENDS]
    if unknown:
        raise UsageError(f"--backends: {', '.join(unknown)}: programs are explored on {', '.join(EXPLORED_BACKENDS)}")
    asked = list(backends)
    try:
        backends = shard_backends(backends, parse_shard(args.shard))
    except ShardError as exc:
        raise UsageError(str(exc)) from exc
    if args.examples < 1:
        raise UsageError(f"--examples {args.examples}: expected a positive number")
    try:
        target_path(args.target)
        load_target(args.target)
        xfails, said = for_run(args.target, args.xfails or [], not args.no_known_bugs)
        check_writable(Path(args.report_dir))
    except (TargetError, XfailsError, ResultsError) as exc:
        raise UsageError(str(exc)) from exc
    corpus = None if args.no_corpus else Path(args.corpus) if args.corpus else default_corpus()
    database = None
    if args.database:
        from hypothesis.database import DirectoryBasedExampleDatabase

        database = DirectoryBasedExampleDatabase(args.database)
    console = Console(stderr=True, soft_wrap=True)
    for line in said:
        console.print(line)
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[last]}"), console=console) as progress:
        task = progress.add_task(f"explore [{args.target}]", total=args.examples * len(backends), last="")

        def on_example(outcome) -> None:
            progress.update(task, advance=1, last=f"{outcome.outcome} {outcome.scenario}")

        explored = explore(args.target, backends, args.examples, args.seed, xfails, corpus,
                           Path(args.report_dir) / "repro", database, on_example, args.timeout, args.untouched)
    outcomes = [o for e in explored for o in e.outcomes]
    found = [c for e in explored for c in e.counterexamples]
    write_all(RunResults(target=args.target, outcomes=outcomes, environment=environment(args.target),
                         selection={"explore": asked, "examples": args.examples, "seed": args.seed,
                                    "untouched": untouched_implied(args.target, args.untouched),
                                    "shard": args.shard, "shard_part": backends if args.shard else None},
                         wall_seconds=time.perf_counter() - started), Path(args.report_dir))
    for exploration in explored:
        rate = exploration.examples / exploration.seconds if exploration.seconds else 0.0
        console.print(f"{exploration.backend:7} {exploration.examples:5} programs in {exploration.seconds:6.1f} s "
                      f"({rate:.1f}/s): {len(exploration.counterexamples)} counterexample(s)")
    for bug, programs in known_bugs_seen(outcomes, xfails).items():
        console.print(f"[yellow]KNOWN UPSTREAM BUG[/] {bug}: {len(programs)} program(s) show its signature, excused "
                      f"(--no-known-bugs judges them), e.g. {programs[0]}")
    for counterexample in found:
        console.print(f"\n[bold red]COUNTEREXAMPLE[/] {counterexample.scenario.id}")
        # markup off: a deviation names tensors in brackets (grad[fc1.bias]), which rich would take for tags
        console.print(counterexample.outcome.program or "", markup=False, highlight=False)
        console.print(f"first disagreement: {counterexample.first_disagreement}", markup=False, highlight=False)
        if counterexample.repro:
            console.print(f"repro: {counterexample.repro}", markup=False)
        elif counterexample.no_repro:
            console.print(f"no standalone repro: {counterexample.no_repro}", markup=False)
    if found and corpus is not None and args.save_corpus:
        save_to_corpus(corpus, found, args.target)
        console.print(f"saved {len(found)} counterexample(s) to {corpus}")
    return EXIT_FAILURES if found else EXIT_OK


def _print_replay_table(bugs: list, rows: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from .replay import table

    grid = Table(title="accumgate replay: known upstream bugs", show_lines=True)
    for column in ("bug", "must show", "affected version", "fixed version"):
        grid.add_column(column, overflow="fold")
    for line in table(bugs, rows):
        grid.add_row(f"{line['bug']}\n{line['title']}", line["expect"], line["affected"],
                     f"{line['fixed']}\n(fixed in {line['fixed_in']})")
    Console(width=160).print(grid)


def _cmd_replay(args: argparse.Namespace) -> int:
    from . import replay

    try:
        bugs = replay.load(args.catalogue)
    except replay.CatalogueError as exc:
        raise UsageError(str(exc)) from exc
    if args.table:
        rows = replay.read_all(args.table)
        _print_replay_table(bugs, rows)
        return EXIT_OK
    backends = [b.strip() for b in args.backends.split(",")] if args.backends else None
    if args.bugs:
        import fnmatch

        patterns = [p.strip() for p in args.bugs.split(",")]
        bugs = [bug for bug in bugs if any(fnmatch.fnmatchcase(bug.id, p) for p in patterns)]
        if not bugs:
            raise UsageError(f"--bugs {args.bugs!r} names no catalogue entry")
    rows = replay.replay(bugs, backends=backends, job_timeout_s=args.timeout)
    for row in rows:
        print(f"{row.bug:28} {row.scenario:45} {row.role:8} {row.outcome:11} {row.verdict:22} {row.shows}")
    if not rows:
        print("no catalogue entry concerns the installed versions and selected backends")
    if args.out:
        print(f"wrote {replay.write(rows, args.out)}")
    bad = [r for r in rows if r.verdict not in replay.GOOD_VERDICTS]
    print(f"{len(rows)} replay run(s), {len(bad)} not as the catalogue says")
    return EXIT_FAILURES if bad else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from .selection import add_arguments

    parser = argparse.ArgumentParser(prog="accumgate", description="Conformance harness for boundary-aware "
                                     "gradient accumulation in accelerate + DeepSpeed.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run scenarios on a target and write reports")
    add_arguments(run)
    run.add_argument("--target", default="reference",
                     help="reference (default), native (installed accelerate), or module:attribute")
    run.add_argument("--xfails", action="append", default=None, metavar="FILE",
                     help="a vendor's own known failures, added to the shipped ones (repeatable; grammar: harness/xfails.py)")
    run.add_argument("--no-known-bugs", action="store_true",
                     help="judge everything: apply none of the known upstream bugs shipped with accumgate")
    run.add_argument("--report-dir", default="reports", metavar="DIR", help="where results.json, junit.xml, summary.md go")
    run.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-scenario timeout (default 120 s)")
    run.set_defaults(func=_cmd_run)
    listing = commands.add_parser("list", help="print scenario ids")
    add_arguments(listing)
    listing.set_defaults(func=_cmd_list)
    report = commands.add_parser("report", help="merge results.json files into matrix.md, matrix.html, merged.json")
    report.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="results.json files or directories holding them")
    report.add_argument("--out", default="reports", metavar="DIR", help="where the matrix goes (default reports/)")
    report.add_argument("--xfails", action="append", default=None, metavar="TARGET=FILE",
                        help="judge TARGET's recorded outcomes again with this xfails file (repeatable)")
    report.add_argument("--support-matrix", default=None, metavar="MD",
                        help="also write the versions × backends × API styles table and the replay table here; rows not "
                        "measured again come from (and this round's go to) the .json beside it")
    report.add_argument("--catalogue", default=None, metavar="TOML",
                        help="known-bug catalogue for the replay table (default: the shipped harness/known_bugs/catalogue.toml)")
    report.add_argument("--screenshots", default=None, metavar="DIR",
                        help="also paint the heatmap, the margin plots and the grid as PNGs here (headless Chromium)")
    report.add_argument("--readme", default=None, metavar="MD",
                        help="with --support-matrix: rewrite the table between the README's support-matrix markers")
    report.add_argument("--known-bugs", default=None, metavar="MD",
                        help="also write the known-bugs page: each catalogue entry, its xfails lines, replay and repro")
    report.set_defaults(func=_cmd_report)
    gate = commands.add_parser("gate", help="fail on regressions against a baseline results file")
    gate.add_argument("--baseline", required=True, metavar="BASE.json")
    gate.add_argument("--current", required=True, nargs="+", metavar="CUR", help="results files or directories")
    gate.add_argument("--update-baseline", action="store_true",
                      help="after an intentional change: write the current run as the new baseline (slimmed, atomic)")
    gate.add_argument("--explain", action="store_true", help="list each regression in one line instead of the table")
    gate.set_defaults(func=_cmd_gate)
    replay = commands.add_parser("replay", help="run the known-bug catalogue on the installed versions (or tabulate runs)")
    replay.add_argument("--catalogue", default=None, metavar="TOML",
                        help="default: the shipped harness/known_bugs/catalogue.toml")
    replay.add_argument("--backends", default=None, metavar="B1,B2", help="only bugs whose scenarios use these backends")
    replay.add_argument("--bugs", default=None, metavar="ID1,ID2",
                        help="only these catalogue entries (ids or globs: 'transformers#*')")
    replay.add_argument("--out", default=None, metavar="DIR", help="write replay.json here")
    replay.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-scenario timeout (default 120 s)")
    replay.add_argument("--table", nargs="+", default=None, metavar="DIR",
                        help="run nothing: merge the replay.json files under these directories into the table")
    replay.set_defaults(func=_cmd_replay)
    explore = commands.add_parser("explore", help="generated accumulation programs against the model of DESIGN §3")
    explore.add_argument("--target", default="reference", help="reference (default), native, or module:attribute")
    explore.add_argument("--backends", default=None, metavar="B1,B2", help="default: single,ddp,ds0,ds1,ds2,ds3")
    explore.add_argument("--examples", type=int, default=150, metavar="N", help="programs per backend (default 150)")
    explore.add_argument("--seed", type=int, default=None, metavar="S", help="Hypothesis seed (default: derandomized)")
    explore.add_argument("--xfails", action="append", default=None, metavar="FILE",
                         help="a vendor's own known failures, added to the shipped ones, as for run")
    explore.add_argument("--no-known-bugs", action="store_true",
                         help="judge everything: a known upstream bug's program is then a counterexample")
    explore.add_argument("--report-dir", default="reports/explore", metavar="DIR",
                         help="results.json, junit.xml, summary.md and repro/<id>.py go here")
    explore.add_argument("--corpus", default=None, metavar="JSON",
                         help="counterexamples replayed first (default conformance/programs_corpus.json)")
    explore.add_argument("--no-corpus", action="store_true", help="replay nothing: start from an empty corpus")
    explore.add_argument("--save-corpus", action="store_true", help="append the counterexamples found to the corpus")
    explore.add_argument("--database", default=None, metavar="DIR", help="Hypothesis example database (default: none)")
    explore.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-program timeout (default 120 s)")
    explore.add_argument("--untouched", action="store_true",
                         help="only programs without the new API: upstream's own code (accumulate() with plugin options, "
                              "DataLoaders of any length, lr sets, zero_grad, the raw engine, FSDP2's calls) judged by the "
                              "model and the oracle; --target native implies it")
    explore.add_argument("--shard", default=None, metavar="K/N",
                         help="explore only this shard's backends (balanced by measured programs per second); more "
                              "machines than backends: give each another --seed")
    explore.set_defaults(func=_cmd_explore)
    env = commands.add_parser("env", help="versions and boundary capabilities of the installed stack and the target")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.add_argument("--target", default="reference", help="whose self-reported capabilities to add (default reference)")
    env.set_defaults(func=_cmd_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line usage error
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"accumgate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
