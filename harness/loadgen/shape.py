"""The Locust load shape driven by the command line (`--load-shape` over -u, -r and -t)."""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape

from .plugin import shape_spec
from .shapes import ShapeSpec

__all__ = ["OptionsShape"]


class OptionsShape(LoadTestShape):
    """steady / ramp / step / spike / soak, as `--load-shape` says; reads -u, -r and -t."""

    abstract = True
    use_common_options = True

    def tick(self) -> Any:
        runner: Any = self.runner
        # Read every tick: the web UI can change -u, -r and -t between runs.
        spec: ShapeSpec = shape_spec(runner.environment.parsed_options)
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        return spec.tick(elapsed)
