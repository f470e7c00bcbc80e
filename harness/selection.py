"""Which scenarios a run means: a profile generated for the chosen backends, cut to one shard (``--shard K/N``), narrowed
by ``-k`` and world size. One place, so that the CLI, the pytest plugin and the external-launcher worker select exactly
the same scenarios. The shard is cut from the profile before ``-k``, as the pytest face cuts it before pytest's own
``-k``: a scenario's shard never depends on the expression."""
from __future__ import annotations

import argparse

from .scenario import BACKENDS, PROFILES, Scenario, profile, select


class SelectionError(ValueError):
    """An option that selects nothing valid; the message is one line for the user."""


def available_backends() -> tuple[str, ...]:
    """Every backend runs here: FSDP2 on CPU too, in the harness's arrangement (backends._fsdp2_accelerator)."""
    return BACKENDS


def chosen_backends(text: str | None) -> tuple[str, ...]:
    """The backends a comma-separated option names (all available ones when empty), each checked."""
    backends = available_backends()
    if not text:
        return backends
    wanted = tuple(b.strip() for b in text.split(",") if b.strip())
    unknown = [b for b in wanted if b not in backends]
    if unknown:
        raise SelectionError(f"{', '.join(unknown)} not available here (expected some of {', '.join(backends)})")
    return wanted


# Generated programs the quick profile (the CLI's default run) carries per backend, beside the sentinel programs every
# profile replays (scenario.sentinels): drawn derandomized, so every run of a version draws the same ones.
QUICK_PROGRAMS = 8


def profile_scenarios(profile_name: str, backends: tuple[str, ...]) -> list[Scenario]:
    """The profile's scenarios; the quick profile also draws ``QUICK_PROGRAMS`` generated programs per backend, so a
    vendor's first, bare ``accumgate run`` is not a weaker suite than the explorer (the sentinels, the shrunk programs
    that caught each mutant of tests/mutants, come with every profile)."""
    chosen = profile(profile_name, backends)
    if profile_name == "quick":
        seen = set(chosen)
        chosen += [s for s in sampled_programs(backends, QUICK_PROGRAMS) if s not in seen and not seen.add(s)]
    return chosen


def sampled_programs(backends: tuple[str, ...], per_backend: int) -> list[Scenario]:
    """``per_backend`` generated programs on each backend the explorer covers, from the explorer's own program space
    with a fixed seed: every run of a version draws the same ones."""
    from .programs.strategies import EXPLORED_BACKENDS, sample
    from .stack import accelerate_forwards_boundary

    return [s for backend in backends if backend in EXPLORED_BACKENDS
            for s in sample(backend, per_backend, accelerate_forwards_boundary=accelerate_forwards_boundary())]


def scenarios(profile_name: str, backends: str | None = None, k: str | None = None,
              world_size: int | None = None, shard: str | None = None, durations: str | None = None) -> list[Scenario]:
    try:
        chosen = chosen_backends(backends)
    except SelectionError as exc:
        raise SelectionError(f"--backends: {exc}") from exc
    try:
        found = select(sharded(profile_scenarios(profile_name, chosen), shard, durations), k)
    except ValueError as exc:  # a bad --profile, --shard, --durations or -k expression (keywords.ExpressionError)
        raise SelectionError(str(exc)) from exc
    return [s for s in found if world_size is None or s.world_size == world_size]


def sharded(found: list[Scenario], shard: str | None, durations: str | None = None) -> list[Scenario]:
    """The scenarios of shard ``K/N`` of ``found`` (all of them without ``--shard``), balanced by the committed
    durations or the file ``durations`` names."""
    from .shards import load_durations, parse_shard, select_shard

    chosen = parse_shard(shard)
    if chosen is None:
        if durations:
            raise SelectionError(f"--durations {durations!r}: only balances shards; give --shard K/N too")
        return found
    return select_shard(found, chosen, load_durations(durations))


def add_arguments(parser: argparse.ArgumentParser, default_profile: str = "quick") -> None:
    parser.add_argument("--profile", default=default_profile, choices=PROFILES,
                        help=f"scenario set (default: {default_profile})")
    parser.add_argument("-k", metavar="EXPR", default=None, help="select by id, pytest -k syntax: 'ds3 and not kwarg'")
    parser.add_argument("--world-size", type=int, choices=(1, 2), default=None, help="only scenarios of this world size")
    parser.add_argument("--backends", default=None, metavar="B1,B2",
                        help="generate the profile for these backends alone (pairwise within them), e.g. ds3,ds3off")
    add_shard_arguments(parser)


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="run only shard K of N (a stable partition by scenario, balanced by recorded durations); "
                             "merge the N result directories with `accumgate report` / `accumgate gate`")
    parser.add_argument("--durations", default=None, metavar="JSON",
                        help="balance the shards by this durations file (default: the one shipped with accumgate)")


def from_arguments(args: argparse.Namespace) -> list[Scenario]:
    return scenarios(args.profile, getattr(args, "backends", None), args.k, getattr(args, "world_size", None),
                     getattr(args, "shard", None), getattr(args, "durations", None))
