"""Locust with the harness's plugin and a thread of its own that keeps the interpreter busy,
as the observer does while it reads the target's metrics: a Ctrl-C mostly lands in it."""

from __future__ import annotations

import threading
import time
from typing import Any

from locust import User, constant, events, task

from harness.loadgen.plugin import install

install()


def _busy() -> None:
    while True:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:  # Python bytecode: where a signal is delivered
            pass
        time.sleep(0.001)  # monkey-patched: lets the other greenlets run


@events.init.add_listener
def _start_busy_thread(**_: Any) -> None:
    threading.Thread(target=_busy, name="busy", daemon=True).start()


class Idle(User):
    wait_time = constant(1)

    @task
    def nothing(self) -> None:
        pass
