"""User-count load shapes as pure functions of elapsed time (the Locust class is in `shape`).

steady: `users` from the start; ramp: 0 -> `users` linearly over `ramp_time`, then hold;
step: `step_users` more every `step_time` up to `users`; spike: `users`, jumping to
`spike_users` at `spike_at` for `spike_duration`; soak: a gentle ramp then a long hold (steady
with a ramp of a tenth of the run, at most 60 s). Each ends after `run_time` (None: never).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["SHAPES", "ShapeSpec"]

SHAPES = ("steady", "ramp", "step", "spike", "soak")


@dataclass(frozen=True)
class ShapeSpec:
    """A load shape and its parameters; `tick(t)` gives (users, spawn rate) or None to stop."""

    kind: str = "steady"
    users: int = 1
    spawn_rate: float = 1.0
    run_time: float | None = None
    ramp_time: float = 10.0
    step_users: int = 1
    step_time: float = 10.0
    spike_users: int = 0
    spike_at: float = 10.0
    spike_duration: float = 10.0

    def validate(self) -> ShapeSpec:
        if self.kind not in SHAPES:
            raise UsageError(f"--load-shape {self.kind}: choose one of {', '.join(SHAPES)}")
        if self.users < 0:
            raise UsageError("--users must be >= 0")
        if self.kind == "step" and (self.step_users < 1 or self.step_time <= 0):
            raise UsageError("--load-shape step needs --step-users >= 1 and --step-time > 0")
        if self.kind == "ramp" and self.ramp_time <= 0:
            raise UsageError("--load-shape ramp needs --ramp-time > 0")
        if self.kind == "spike" and self.spike_users <= 0:
            raise UsageError("--load-shape spike needs --spike-users > 0")
        if self.kind == "soak" and self.run_time is None:
            raise UsageError("--load-shape soak needs --run-time")
        return self

    def tick(self, t: float) -> tuple[int, float] | None:
        """Users and spawn rate wanted `t` seconds into the run, or None when it is over."""
        if self.run_time is not None and t >= self.run_time:
            return None
        if self.kind == "steady":
            return self.users, self.spawn_rate
        if self.kind in ("ramp", "soak"):
            ramp = self.ramp_time
            if self.kind == "soak":
                ramp = min(60.0, (self.run_time or 600.0) / 10)
            users = self.users if t >= ramp else math.ceil(self.users * t / ramp)
            return max(users, 1 if self.users else 0), max(self.users / ramp, 1.0)
        if self.kind == "step":
            steps = int(t // self.step_time) + 1
            return min(self.users, steps * self.step_users), max(self.step_users, 1.0)
        in_spike = self.spike_at <= t < self.spike_at + self.spike_duration
        burst = max(float(self.spike_users), self.spawn_rate)
        return (self.spike_users if in_spike else self.users), burst
