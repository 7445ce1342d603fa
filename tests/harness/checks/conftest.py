"""The end-to-end check uses the load generator's Locust fixture."""

from tests.harness.loadgen.conftest import run_locust

__all__ = ["run_locust"]
