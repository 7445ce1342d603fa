"""The supervisor: starts the fleet's workers, judges their liveness, restarts the dead,
recycles the bloated and scales the fleet on load.

Liveness is pulled: every `probe_interval` the supervisor asks each worker for its engine's
step counter (GET /debug/engine). A worker is live while it answers within
`liveness_timeout` and, when it has work, its step counter moved within `stall_timeout`.
A paused (SIGSTOP) worker stops answering; a hung engine answers but stops stepping: both
leave the routing set, and come back when they recover. The three timeouts are floors: each
stretches with the worker's own measured step time (`liveness.py`), so a slow CPU or a core
taken by another process slows a worker down without getting it declared lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from .registry import EventBus, Registry, WorkerInfo, WorkerState

__all__ = ["FleetSettings", "Supervisor"]


@dataclass
class FleetSettings:
    """How the fleet is run; defaults are short enough for tests (documented in the README)."""

    models: list[str]
    workers: int = 1
    min_workers: int | None = None
    max_workers: int | None = None
    worker_args: list[str] = field(default_factory=list)
    log_dir: Path = Path("/tmp")
    probe_interval: float = 0.2
    probe_timeout: float = 0.5
    liveness_timeout: float = 1.0
    stall_timeout: float = 3.0
    start_timeout: float = 300.0
    memory_limit_bytes: int | None = None
    drain_timeout: float = 2.0
    restart_backoff: float = 0.5
    restart_backoff_max: float = 10.0
    target_ongoing: float = 2.0
    upscale_delay: float = 1.0
    downscale_delay: float = 5.0
    autoscale: bool = True
    worker_env: dict[str, str] = field(default_factory=dict)
    # the router's own port: free until uvicorn binds it after the first spawns, so the OS may
    # offer it to a worker (seen once in CI: the worker then answered on the router's address)
    router_port: int | None = None

    @property
    def floor(self) -> int:
        return self.min_workers if self.min_workers is not None else self.workers

    @property
    def ceiling(self) -> int:
        return self.max_workers if self.max_workers is not None else self.workers


def _die_with_parent() -> None:
    # Linux: the worker gets SIGKILL if the router dies, even by SIGKILL: nothing outlives it.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _listening_socket(avoid: int | None = None) -> socket.socket:
    """A listening socket on a port the kernel picks (never `avoid`), for a worker to inherit:
    the port stays held from the moment it is chosen until the worker exits (choosing a free
    port, closing it and letting the worker bind it leaves a gap in which another process, an
    outgoing connection or another fleet, may take it: seen when tests ran two at a time)."""
    refused: list[socket.socket] = []
    try:
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", 0))
                if sock.getsockname()[1] == avoid:
                    refused.append(sock)  # held while the next is picked
                    continue
                sock.listen(2048)  # Popen's pass_fds makes it the worker's
            except OSError:
                sock.close()
                raise
            return sock
    finally:
        for sock in refused:
            sock.close()


class Supervisor:
    """Owns the worker processes of a fleet; runs inside the router's event loop."""

    def __init__(self, settings: FleetSettings, registry: Registry, events: EventBus,
                 queued: Callable[[str], int] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.events = events
        self.queued = queued or (lambda model: 0)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._counter = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(timeout=settings.probe_timeout)
        self._scale_since: dict[str, tuple[int, float]] = {}
        self._restarting: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._checks: dict[str, asyncio.Task[None]] = {}  # the look at each worker in flight
        self.stopping = False
        self.on_lost: Callable[[WorkerInfo, str], None] = lambda worker, why: None
        self.on_tokens: Callable[[str, int, int], None] = lambda model, prompt, generated: None

    # -- processes ----------------------------------------------------------------------------

    def _spawn(self, worker: WorkerInfo) -> None:
        listener = _listening_socket(avoid=self.settings.router_port)
        worker.port = int(listener.getsockname()[1])
        log = open(self.settings.log_dir / f"{worker.id}.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "targets.reference", "worker", "--model", worker.model,
               "--host", "127.0.0.1", "--port", str(worker.port),
               "--fd", str(listener.fileno()),
               "--stall-timeout", str(self.settings.stall_timeout), *self.settings.worker_args]
        env = {**os.environ, **self.settings.worker_env}
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                    pass_fds=(listener.fileno(),))
        finally:
            log.close()
            listener.close()  # the worker holds it now: the port is freed when it exits
        self._procs[worker.id] = proc
        worker.pid = proc.pid
        worker.started_at = time.time()
        worker.last_seen = 0.0
        worker.last_step = -1
        worker.last_progress = time.monotonic()
        worker.step_s_max = worker.stall_after = 0.0
        worker.ongoing = 0
        worker.prompt_tokens = worker.generated_tokens = 0
        worker.became_live = False
        self.registry.set_state(worker, WorkerState.STARTING, "spawned")
        self.events.emit("spawned", worker=worker.id, model=worker.model, pid=proc.pid,
                         port=worker.port)

    def add_worker(self, model: str) -> WorkerInfo:
        self._counter += 1
        worker = WorkerInfo(id=f"{model}-{self._counter}", model=model, port=0)
        self._spawn(worker)
        self.registry.add(worker)
        return worker

    def process(self, worker_id: str) -> subprocess.Popen[bytes] | None:
        return self._procs.get(worker_id)

    async def _terminate(self, worker: WorkerInfo, timeout: float = 5.0) -> None:
        proc = self._procs.get(worker.id)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused worker cannot act on SIGTERM
            proc.terminate()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            while proc.poll() is None:
                await asyncio.sleep(0.02)

    def _spawn_task(self, coro: Any) -> None:
        # keep a reference: the event loop holds tasks only weakly
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the initial workers and wait until each model has one live worker."""
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        for model in self.settings.models:
            for _ in range(self.settings.workers):
                self.add_worker(model)
        self._tasks.append(asyncio.create_task(self._monitor(), name="supervisor"))
        deadline = time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline:
            if all(any(w.state == WorkerState.LIVE for w in self.registry.of_model(m))
                   for m in self.settings.models):
                return
            for worker in self.registry.workers.values():
                proc = self._procs.get(worker.id)
                if proc is not None and proc.poll() is not None and worker.restarts >= 3:
                    raise RuntimeError(f"worker {worker.id} keeps exiting (status "
                                       f"{proc.returncode}); see {self.settings.log_dir}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no live worker after {self.settings.start_timeout:.0f} s; see "
                           f"{self.settings.log_dir}")

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and the monitor."""
        self.stopping = True
        checks = list(self._checks.values())
        for task in self._tasks + checks:
            task.cancel()
        await asyncio.gather(*self._tasks, *checks, return_exceptions=True)
        await asyncio.gather(*(self._terminate(w) for w in list(self.registry.workers.values())))
        await self._client.aclose()

    # -- monitoring ---------------------------------------------------------------------------

    async def _monitor(self) -> None:
        last_scale = last_probe = time.monotonic()
        while True:
            # exits and starting workers are looked at every 50 ms (a restart's latency);
            # live workers are probed every probe_interval
            full = time.monotonic() - last_probe >= self.settings.probe_interval
            if full:
                last_probe = time.monotonic()
            for worker in list(self.registry.workers.values()):
                # each worker is looked at on its own: a paused worker's probe waiting for its
                # timeout must not delay noticing that another worker died
                running = self._checks.get(worker.id)
                if running is None or running.done():
                    error = running.exception() if running and not running.cancelled() else None
                    if error is not None:
                        raise error  # a bug in _check ends the monitor loudly, as before
                    self._checks[worker.id] = asyncio.create_task(self._check(worker, full))
            for gone in self._checks.keys() - self.registry.workers.keys():
                del self._checks[gone]  # retired by a scale-down
            if self.settings.autoscale and time.monotonic() - last_scale >= 0.25:
                last_scale = time.monotonic()
                for model in self.settings.models:
                    self._autoscale(model)
            await asyncio.sleep(0.05)

    async def _check(self, worker: WorkerInfo, full: bool = True) -> None:
        if worker.id in self._restarting or worker.state == WorkerState.DRAINING:
            return
        proc = self._procs.get(worker.id)
        if proc is None:
            return
        if proc.poll() is not None:
            await self._on_exit(worker, proc.returncode)
            return
        if not full and worker.state != WorkerState.STARTING:
            return
        now = time.monotonic()
        try:
            resp = await self._client.get(worker.url + "/debug/engine",
                                          timeout=max(self.settings.probe_timeout,
                                                      2 * worker.step_s_max))
            stats: dict[str, Any] = resp.json() if resp.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            stats = {}
        if stats:
            worker.last_seen = now
            step = int(stats.get("step", 0))
            busy = bool(stats.get("running", 0) or stats.get("waiting", 0))
            if busy and not worker.engine_busy:
                # the stall clock starts when work arrives: the step counter stood still
                # through the idle spell before it, which is not a stall
                worker.last_progress = now
            worker.engine_busy = busy
            worker.step_s_max = float(stats.get("step_s_max") or 0.0)
            worker.stall_after = float(stats.get("stall_after_s") or 0.0)
            prompt, generated = int(stats.get("prompt_tokens", 0)), int(
                stats.get("generated_tokens", 0))
            self.on_tokens(worker.model, max(0, prompt - worker.prompt_tokens),
                           max(0, generated - worker.generated_tokens))
            worker.prompt_tokens, worker.generated_tokens = prompt, generated
            if step != worker.last_step:
                worker.last_step = step
                worker.last_progress = now
        with contextlib.suppress(psutil.Error):
            memory = psutil.Process(proc.pid).memory_info()
            worker.rss_bytes = memory.rss
            # the limit applies to private memory: the weights are a file mapping, shared
            # and reclaimable, and would count against the RSS as soon as they are read
            worker.private_bytes = memory.rss - memory.shared
        limit = self.settings.memory_limit_bytes
        if limit and worker.private_bytes > limit and worker.state == WorkerState.LIVE:
            self._restarting.add(worker.id)
            self._spawn_task(self._recycle(worker))
            return
        # a worker busy with slow steps answers slowly too (its server shares the GIL)
        answer_within = max(self.settings.liveness_timeout, 4 * worker.step_s_max)
        answered = worker.last_seen > 0 and now - worker.last_seen < answer_within
        stalled = worker.engine_busy and now - worker.last_progress > max(
            self.settings.stall_timeout, worker.stall_after)
        if worker.state == WorkerState.STARTING:
            if answered:
                worker.became_live = True
                self.registry.set_state(worker, WorkerState.LIVE, "ready")
            return
        if answered and not stalled:
            # a probe that failed keeps a live worker live until the liveness timeout, but
            # does not bring back one the router took out for refusing a connection (a
            # draining worker): only an answer does
            if stats or worker.state != WorkerState.UNLIVE:
                self.registry.set_state(worker, WorkerState.LIVE, "progressing")
        elif worker.state == WorkerState.LIVE:
            why = "engine made no progress" if answered else "not answering"
            self.registry.set_state(worker, WorkerState.UNLIVE, why)
            self.on_lost(worker, why)

    async def _on_exit(self, worker: WorkerInfo, status: int | None) -> None:
        self.registry.set_state(worker, WorkerState.DEAD, f"exited with status {status}",
                                status=status)
        self.on_lost(worker, f"worker process exited (status {status})")
        if self.stopping:
            return
        now = time.monotonic()
        if worker.became_live:
            # it served, then died: restart at once; backoff is for workers that die before
            # they ever become live (a crash loop)
            worker.crash_times = []
        worker.crash_times = [t for t in worker.crash_times if now - t < 30.0] + [now]
        crashes = len(worker.crash_times)
        delay = 0.0 if crashes <= 1 else min(self.settings.restart_backoff * 2 ** (crashes - 2),
                                             self.settings.restart_backoff_max)
        self._restarting.add(worker.id)
        try:
            if delay:
                self.events.emit("backoff", worker=worker.id, delay=delay, crashes=crashes)
                await asyncio.sleep(delay)
            worker.restarts += 1
            self._spawn(worker)
            self.events.emit("restarted", worker=worker.id, model=worker.model, pid=worker.pid,
                             restarts=worker.restarts)
        finally:
            self._restarting.discard(worker.id)

    async def drain(self, worker: WorkerInfo, reason: str) -> None:
        """Stop routing to a worker and wait (bounded) for its in-flight requests."""
        self.registry.set_state(worker, WorkerState.DRAINING, reason)
        deadline = time.monotonic() + self.settings.drain_timeout
        while worker.ongoing > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if worker.ongoing > 0:
            self.on_lost(worker, f"{reason}: drain timed out")

    async def _recycle(self, worker: WorkerInfo) -> None:
        try:
            rss = worker.private_bytes
            self.events.emit("recycle", worker=worker.id, rss_bytes=worker.rss_bytes,
                             private_bytes=rss,
                             limit_bytes=self.settings.memory_limit_bytes)
            await self.drain(worker, f"over memory limit ({rss // 2**20} MiB)")
            await self._terminate(worker)
            worker.restarts += 1
            self._spawn(worker)
            self.events.emit("restarted", worker=worker.id, model=worker.model, pid=worker.pid,
                             restarts=worker.restarts, reason="memory limit")
        finally:
            self._restarting.discard(worker.id)

    # -- autoscaling (Ray Serve's rule) -------------------------------------------------------

    def desired(self, model: str) -> tuple[int, int]:
        """(current, desired) worker count for `model` from ongoing requests per worker."""
        workers = [w for w in self.registry.of_model(model) if w.state != WorkerState.DRAINING]
        ongoing = sum(w.ongoing for w in workers) + self.queued(model)
        want = math.ceil(ongoing / self.settings.target_ongoing) if ongoing else 0
        return len(workers), max(self.settings.floor, min(self.settings.ceiling, want))

    def _autoscale(self, model: str) -> None:
        current, want = self.desired(model)
        if want == current:
            self._scale_since.pop(model, None)
            return
        direction = 1 if want > current else -1
        since = self._scale_since.get(model)
        now = time.monotonic()
        if since is None or since[0] != direction:
            self._scale_since[model] = (direction, now)
            return
        delay = self.settings.upscale_delay if direction > 0 else self.settings.downscale_delay
        if now - since[1] < delay:
            return
        self._scale_since.pop(model, None)
        if direction > 0:
            for _ in range(want - current):
                worker = self.add_worker(model)
                self.events.emit("scale_up", model=model, worker=worker.id, current=current,
                                 desired=want)
        else:
            victims = sorted((w for w in self.registry.of_model(model)
                              if w.state != WorkerState.DRAINING),
                             key=lambda w: (w.state == WorkerState.LIVE, w.ongoing))
            for worker in victims[: current - want]:
                self.events.emit("scale_down", model=model, worker=worker.id, current=current,
                                 desired=want)
                self._spawn_task(self._retire(worker))

    async def _retire(self, worker: WorkerInfo) -> None:
        self._restarting.add(worker.id)
        await self.drain(worker, "scale down")
        await self._terminate(worker)
        self._procs.pop(worker.id, None)
        self.registry.remove(worker.id)
        self._restarting.discard(worker.id)

    def kill_all_now(self) -> None:
        """Last resort (the router is exiting): SIGKILL every worker."""
        for proc in self._procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
