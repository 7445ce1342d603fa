"""The load shape of every scenario: chosen with --load-shape over -u, -r and -t."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.shape import OptionsShape

install()


class CommandLineShape(OptionsShape):
    """steady (default), ramp, step, spike or soak; see `locust --help` (llm-chaos group)."""
