"""``Scenario``: one training run to check, as plain frozen data with a stable, readable id.

Scenarios are generated, never hand-written per test: a new axis value is one entry here. This module
imports neither torch nor accelerate, so listing and selecting scenarios costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("single", "ddp", "ds0", "ds1", "ds2", "ds3")
API_STYLES = ("auto", "kwarg", "set_boundary", "step_and_zero_grad")
MANUAL_API_STYLES = ("kwarg", "set_boundary", "step_and_zero_grad")

# Schedules are the window lengths (micro-batches per optimizer step), at configured G = 4.
SCHEDULES: dict[str, tuple[int, ...]] = {
    "uni4": (4, 4, 4),
    "dyn3142": (3, 1, 4, 2),
    # Forced early boundary after micro-batch 6 (accumulate() says 8) and forced late one: 8 is held to 12.
    "forced4264": (4, 2, 6, 4),
    "every1": (1, 1, 1, 1),
}


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
    configured_g: int = 4
    micro_batch_size: int = 2
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.api not in API_STYLES:
            raise ValueError(f"api {self.api!r}: expected one of {', '.join(API_STYLES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.backend == "single" and self.world_size != 1:
            raise ValueError("backend 'single' runs in a world of size 1")

    @property
    def windows(self) -> tuple[int, ...]:
        return SCHEDULES[self.schedule]

    @property
    def micro_batches(self) -> int:
        return sum(self.windows)

    @property
    def boundaries(self) -> list[int]:
        """0-based indices of the micro-batches that end a window."""
        ends, total = [], 0
        for window in self.windows:
            total += window
            ends.append(total - 1)
        return ends

    @property
    def is_uniform(self) -> bool:
        return all(window == self.configured_g for window in self.windows)

    @property
    def zero_stage(self) -> int | None:
        return int(self.backend[2]) if self.backend.startswith("ds") else None

    @property
    def id(self) -> str:
        clip = "noclip" if self.clip is None else f"clip{self.clip:g}"
        parts = [self.backend, self.api.replace("_", ""), self.schedule, self.optimizer, self.precision, clip,
                 f"w{self.world_size}"]
        if self.model != "mlp":
            parts.insert(6, self.model)
        parts += [f"{k}{v}" for k, v in self.extra]
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id
