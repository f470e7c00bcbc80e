"""``Scenario``: one training run to check, as plain frozen data with a stable, readable id.

Scenarios are generated, never hand-written per test: a new axis value is one entry here. This module
imports neither torch nor accelerate, so listing and selecting scenarios costs nothing.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable

# Axis values. ``*off`` backends offload the optimizer state to CPU (ZeRO-Offload).
BACKENDS = ("single", "ddp", "fsdp", "ds0", "ds1", "ds2", "ds3", "ds2off", "ds3off")
API_STYLES = ("auto", "kwarg", "set_boundary", "step_and_zero_grad", "ds_native", "legacy")
MANUAL_API_STYLES = ("kwarg", "set_boundary", "step_and_zero_grad")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16")
CLIPS = (1.0, None)
WORLD_SIZES = (1, 2)
MODELS = ("mlp", "gpt2")

# Schedule name -> (configured gradient_accumulation_steps G, window lengths).
SCHEDULES: dict[str, tuple[int, tuple[int, ...]]] = {
    "uni4": (4, (4, 4, 4)),
    "dyn3142": (4, (3, 1, 4, 2)),
    # Forced early boundary after micro-batch 6 (accumulate() says 8), forced late one: 8 held to 12.
    "forced4264": (4, (4, 2, 6, 4)),
    "every1": (4, (1, 1, 1, 1)),
    # Configured G = 1 with windows of 4 (open-instruct #1498): each micro-batch loss is divided by 1.
    "g1win4": (1, (4, 4, 4)),
}

PROFILES = ("quick", "ci", "full")


@dataclass(frozen=True)
class Scenario:
    """What to train and how; ``id`` names it everywhere (pytest ids, reports, xfails patterns)."""

    backend: str
    api: str
    schedule: str
    optimizer: str = "sgd"
    precision: str = "fp32"
    clip: float | None = 1.0
    world_size: int = 2
    model: str = "mlp"
    seed: int = 0
    micro_batch_size: int = 2

    def __post_init__(self) -> None:
        problem = invalid_reason(self)
        if problem:
            raise ValueError(f"invalid scenario {self.id}: {problem}")

    @property
    def configured_g(self) -> int:
        return SCHEDULES[self.schedule][0]

    @property
    def windows(self) -> tuple[int, ...]:
        return SCHEDULES[self.schedule][1]

    @property
    def micro_batches(self) -> int:
        return sum(self.windows)

    @property
    def boundaries(self) -> list[int]:
        """0-based indices of the micro-batches that end a window."""
        return [end - 1 for end in itertools.accumulate(self.windows)]

    @property
    def is_uniform(self) -> bool:
        """``accumulate()`` alone produces these windows."""
        return all(window == self.configured_g for window in self.windows)

    @property
    def is_deepspeed(self) -> bool:
        return self.backend.startswith("ds")

    @property
    def zero_stage(self) -> int | None:
        return int(self.backend[2]) if self.is_deepspeed else None

    @property
    def offload(self) -> bool:
        return self.backend.endswith("off")

    @property
    def id(self) -> str:
        clip = "noclip" if self.clip is None else f"clip{self.clip:g}"
        parts = [self.backend, self.api.replace("_", ""), self.schedule, self.optimizer, self.precision, clip]
        if self.model != "mlp":
            parts.append(self.model)
        parts.append(f"w{self.world_size}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id

    def with_api(self, api: str) -> "Scenario":
        return Scenario(self.backend, api, self.schedule, self.optimizer, self.precision, self.clip,
                        self.world_size, self.model, self.seed, self.micro_batch_size)


def invalid_reason(s: Scenario) -> str | None:
    """Why an axis combination means nothing (None when it is a real scenario)."""
    checks = [
        (s.backend in BACKENDS, f"backend {s.backend!r}: expected one of {', '.join(BACKENDS)}"),
        (s.api in API_STYLES, f"api {s.api!r}: expected one of {', '.join(API_STYLES)}"),
        (s.schedule in SCHEDULES, f"schedule {s.schedule!r}: expected one of {', '.join(SCHEDULES)}"),
        (s.optimizer in OPTIMIZERS, f"optimizer {s.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"),
        (s.precision in PRECISIONS, f"precision {s.precision!r}: expected one of {', '.join(PRECISIONS)}"),
        (s.world_size in WORLD_SIZES, f"world size {s.world_size}: expected 1 or 2"),
        (s.model in MODELS, f"model {s.model!r}: expected one of {', '.join(MODELS)}"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    if s.backend == "single" and s.world_size != 1:
        return "backend 'single' is one process (world size 1)"
    if s.backend in ("ddp", "fsdp") and s.world_size != 2:
        return f"backend {s.backend!r} needs world size 2"
    if s.api in ("ds_native", "legacy") and not s.backend.startswith("ds"):
        return f"api {s.api!r} drives a DeepSpeed engine"
    if s.api == "legacy" and not s.is_uniform:
        return "api 'legacy' (the engine's own counter) can only produce uniform windows"
    return None


def is_valid(s: Scenario) -> bool:
    try:
        return invalid_reason(s) is None
    except KeyError:
        return False


# ------------------------------------------------------------------------------------------------- profiles
AXES: dict[str, tuple] = {
    "backend": BACKENDS, "api": API_STYLES, "schedule": tuple(SCHEDULES), "optimizer": OPTIMIZERS,
    "precision": PRECISIONS, "clip": CLIPS, "world_size": WORLD_SIZES, "model": MODELS,
}


def _build(values: dict) -> Scenario | None:
    try:
        return Scenario(**values)
    except ValueError:
        return None


def full_product(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    keep = set(backends)
    out = []
    for combo in itertools.product(*AXES.values()):
        values = dict(zip(AXES, combo))
        if values["backend"] in keep:
            scenario = _build(values)
            if scenario is not None:
                out.append(scenario)
    return out


def _pairs(s: Scenario) -> frozenset[tuple]:
    values = [(axis, getattr(s, axis)) for axis in AXES]
    return frozenset(itertools.combinations(values, 2))


def pairwise(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """Every pair of axis values that any valid scenario contains appears in at least one chosen scenario.

    Greedy set cover over the valid product: complete by construction, deterministic (ties by id). A
    constrained pairwise library (allpairspy with a partial-row filter) was tried first and missed 17 valid
    pairs, such as (ds0, kwarg): constraints between axes are what it cannot see ahead.
    """
    candidates = sorted(full_product(backends), key=lambda s: s.id)
    pairs = {s: _pairs(s) for s in candidates}
    uncovered = set().union(*pairs.values()) if pairs else set()
    chosen: list[Scenario] = []
    while uncovered:
        best = max(candidates, key=lambda s: len(pairs[s] & uncovered))
        chosen.append(best)
        uncovered -= pairs[best]
    return sorted(chosen, key=lambda s: s.id)


def quick(backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    """Every backend available here × the four accelerate API styles × uniform and dynamic windows: MLP, fp32."""
    keep = set(backends)
    return [
        Scenario(backend, api, schedule, world_size=1 if backend == "single" else 2)
        for backend in ("single", "ddp", "ds0", "ds1", "ds2", "ds3") if backend in keep
        for schedule in ("uni4", "dyn3142")
        for api in ("auto", "kwarg", "set_boundary", "step_and_zero_grad")
    ]


PROFILE_BUILDERS: dict[str, Callable[..., list[Scenario]]] = {"quick": quick, "ci": pairwise, "full": full_product}


def profile(name: str, backends: Iterable[str] = BACKENDS) -> list[Scenario]:
    if name not in PROFILE_BUILDERS:
        raise ValueError(f"--profile {name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILE_BUILDERS[name](backends)


def select(scenarios: Iterable[Scenario], expression: str | None) -> list[Scenario]:
    """``-k`` with pytest's own expression syntax (``ds3 and not kwarg``): a name matches as a substring of
    the id, case-insensitively, exactly as ``pytest -k`` matches test ids."""
    scenarios = list(scenarios)
    if not expression:
        return scenarios
    from _pytest.mark.expression import Expression

    compiled = Expression.compile(expression)

    def matches(scenario_id: str) -> bool:
        return compiled.evaluate(lambda name, *_args, **_kwargs: name.lower() in scenario_id)

    return [s for s in scenarios if matches(s.id.lower())]
