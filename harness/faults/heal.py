"""Heals: the undo of one action of a fault, as plain data.

Each fault notes the heal of an action *before* it acts, so the injector (on revert), the guard
(if the harness dies) and `llm-chaos faults clear` (after a crash) all undo the same things the
same way. Every heal is idempotent: applying it twice, or after the thing already healed itself
(a TTL ran out, a process exited), does nothing more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import psutil

from ..errors import TargetError, UsageError
from ..launcher import terminate_tree
from .docker_engine import docker_client

__all__ = [
    "DockerConnect",
    "DockerStart",
    "DockerUnpause",
    "EnableProxy",
    "Heal",
    "KillProcess",
    "RemoveAdminFault",
    "RemoveToxic",
    "ResumeProcess",
    "StopProcess",
    "heal_from_json",
    "heal_to_json",
]

_TIMEOUT = 5.0
# the reference router asks each worker in turn, 5 s each, when it looks for a fault id: a
# paused worker must not make removing a fault of another one fail
_ADMIN_TIMEOUT = 20.0


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    # A PID can be reused after the process exits: act only on the very process noted.
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 0.01:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def _on_process(pid: int, create_time: float, act: Callable[[psutil.Process], str]) -> str:
    """`act(process)` on the very process noted; what it did, or that it is gone (before or
    while it acts)."""
    proc = _same_process(pid, create_time)
    if proc is None:
        return f"pid {pid} is gone"
    try:
        return act(proc)
    except psutil.NoSuchProcess:
        return f"pid {pid} is gone"


@dataclass(frozen=True)
class _ProcessHeal:
    """A heal that acts on the very process noted (pid and its start time)."""

    pid: int
    create_time: float

    def apply(self) -> str:
        return _on_process(self.pid, self.create_time, self.act)

    def act(self, proc: psutil.Process) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class ResumeProcess(_ProcessHeal):
    """SIGCONT a process that a pause fault stopped."""

    kind: ClassVar[str] = "resume_process"

    def act(self, proc: psutil.Process) -> str:
        proc.resume()
        # SIGCONT is delivered asynchronously: done means running again
        deadline = time.monotonic() + 2.0
        while proc.status() == psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.005)
        return f"resumed pid {self.pid}"


@dataclass(frozen=True)
class KillProcess(_ProcessHeal):
    """SIGKILL a process the harness started (a hog), and reap it if it is our child."""

    kind: ClassVar[str] = "kill_process"

    def act(self, proc: psutil.Process) -> str:
        proc.kill()
        deadline = time.monotonic() + _TIMEOUT
        # dead once it is a zombie: who reaps it (us if it is our child, else init) is not
        # ours to wait for
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                raise TargetError(f"pid {self.pid} did not die after SIGKILL")
            time.sleep(0.01)
        if proc.ppid() == os.getpid():
            proc.wait(timeout=_TIMEOUT)
        return f"killed pid {self.pid}"


@dataclass(frozen=True)
class StopProcess(_ProcessHeal):
    """Stop a process a run started (its target, Locust) and everything under it: SIGTERM to
    the process (a router stops its own workers), SIGKILL to what is left after `grace` s."""

    kind: ClassVar[str] = "stop_process"
    grace: float = 3.0

    def act(self, proc: psutil.Process) -> str:
        under = len(proc.children(recursive=True))
        left = terminate_tree(proc, self.grace)
        if left:
            raise TargetError(f"pid {self.pid}: {len(left)} process(es) still running after "
                              "SIGKILL: " + ", ".join(str(p.pid) for p in left))
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.ppid() == os.getpid():
                proc.wait(timeout=_TIMEOUT)
        return f"stopped pid {self.pid} and {under} process(es) under it"


@dataclass(frozen=True)
class RemoveAdminFault:
    """DELETE one admin-API fault of a target (it also expires by itself at its TTL)."""

    kind: ClassVar[str] = "remove_admin_fault"
    url: str
    token: str
    fault_id: str

    def apply(self) -> str:
        return _undo("DELETE", f"{self.url}/admin/faults/{self.fault_id}",
                     headers={"Authorization": f"Bearer {self.token}"}, timeout=_ADMIN_TIMEOUT,
                     done=f"removed admin fault {self.fault_id}",
                     gone=f"admin fault {self.fault_id} already gone",
                     unreachable=f"target {self.url} unreachable: fault {self.fault_id} went "
                                 "with it or expires at its TTL")


@dataclass(frozen=True)
class RemoveToxic:
    """DELETE a toxic from a Toxiproxy-compatible API."""

    kind: ClassVar[str] = "remove_toxic"
    api: str
    proxy: str
    toxic: str

    def apply(self) -> str:
        return _undo("DELETE", f"{self.api}/proxies/{self.proxy}/toxics/{self.toxic}",
                     ok=(200, 204), done=f"removed toxic {self.proxy}/{self.toxic}",
                     gone=f"toxic {self.proxy}/{self.toxic} already gone",
                     unreachable=f"proxy API {self.api} unreachable: its toxics went with it")


@dataclass(frozen=True)
class EnableProxy:
    """Re-enable a proxy that a `down` fault disabled (Toxiproxy: `enabled: true`)."""

    kind: ClassVar[str] = "enable_proxy"
    api: str
    proxy: str

    def apply(self) -> str:
        return _undo("POST", f"{self.api}/proxies/{self.proxy}", json={"enabled": True},
                     done=f"enabled proxy {self.proxy}", gone=f"proxy {self.proxy} is gone",
                     unreachable=f"proxy API {self.api} unreachable: its proxies went with it")


@dataclass(frozen=True)
class DockerUnpause:
    """Unpause a container that a pause fault paused."""

    kind: ClassVar[str] = "docker_unpause"
    container: str

    def apply(self) -> str:
        return _container_to(self.container, "unpause", "unpaused",
                             needed=lambda status: status == "paused", already="is not paused")


@dataclass(frozen=True)
class DockerStart:
    """Start a container that a kill fault stopped (Jepsen's heal for a killed node)."""

    kind: ClassVar[str] = "docker_start"
    container: str

    def apply(self) -> str:
        return _container_to(self.container, "start", "started",
                             needed=lambda status: status != "running", already="is running")


@dataclass(frozen=True)
class DockerConnect:
    """Connect a container back to the network a disconnect fault took it off."""

    kind: ClassVar[str] = "docker_connect"
    network: str
    container: str
    aliases: tuple[str, ...] = ()  # its names on the network (a compose service name)
    ipv4: str | None = None  # static addresses it had there
    ipv6: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", tuple(self.aliases))  # a list, read from JSON

    def apply(self) -> str:
        def connect(client: Any, container: Any) -> str:
            networks = container.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
            net = client.networks.get(self.network)
            if net.name in networks:
                return f"container {self.container} is on network {self.network}"
            net.connect(container, aliases=list(self.aliases) or None, ipv4_address=self.ipv4,
                        ipv6_address=self.ipv6)
            return f"connected container {self.container} to network {self.network}"

        return _on_container(
            self.container, connect,
            failed=f"could not connect {self.container} to {self.network}",
            gone=f"container {self.container} or network {self.network} is gone")


def _container_to(name: str, verb: str, done: str, *, needed: Callable[[str], bool],
                  already: str) -> str:
    """Call the container's method `verb` (unpause, start) when `needed(its status)`."""
    def act(_: Any, container: Any) -> str:
        if not needed(container.status):
            return f"container {name} {already}"
        getattr(container, verb)()
        return f"{done} container {name}"

    return _on_container(name, act, failed=f"could not {verb} container {name}")


def _on_container(name: str, act: Callable[[Any, Any], str], *, failed: str,
                  gone: str | None = None) -> str:
    """`act(client, container)` on container `name`, freshly read; what it did, or `gone` when
    the container (or what `act` looks up) no longer exists; TargetError(`failed`: why) when
    the engine refuses."""
    from docker.errors import APIError, NotFound

    client = _docker()
    try:
        container = client.containers.get(name)
        container.reload()
        return act(client, container)
    except NotFound:
        return gone or f"container {name} is gone"
    except APIError as exc:
        raise TargetError(f"{failed}: {exc}") from exc
    finally:
        client.close()


Heal = (ResumeProcess | KillProcess | StopProcess | RemoveAdminFault | RemoveToxic
        | EnableProxy | DockerUnpause | DockerStart | DockerConnect)

_KINDS: dict[str, type[Heal]] = {cls.kind: cls for cls in (
    ResumeProcess, KillProcess, StopProcess, RemoveAdminFault, RemoveToxic, EnableProxy,
    DockerUnpause, DockerStart, DockerConnect)}


def heal_to_json(heal: Heal) -> dict[str, Any]:
    """The heal as a JSON object with its `kind`."""
    return {"kind": heal.kind, **dataclasses.asdict(heal)}


def heal_from_json(data: dict[str, Any]) -> Heal:
    """Rebuild a heal written by `heal_to_json`; UsageError for an unknown kind."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise UsageError(f"unknown heal kind {kind!r} in the fault state file")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise UsageError(f"bad heal {data} in the fault state file: {exc}") from exc


def _docker() -> Any:
    try:
        return docker_client()
    except UsageError as exc:
        raise TargetError(str(exc)) from exc


def _http(method: str, url: str, headers: dict[str, str] | None = None,
          json: Any = None, timeout: float = _TIMEOUT) -> httpx.Response | None:
    """The answer, or None when nothing listens there any more (what lived there is gone)."""
    try:
        return httpx.request(method, url, headers=headers, json=json, timeout=timeout)
    except httpx.ConnectError:
        return None
    except httpx.HTTPError as exc:
        raise TargetError(f"{method} {url} failed: {exc}") from exc


def _undo(method: str, url: str, *, done: str, gone: str, unreachable: str,
          ok: tuple[int, ...] = (200,), headers: dict[str, str] | None = None, json: Any = None,
          timeout: float = _TIMEOUT) -> str:
    """An undo over HTTP: `done` when answered with one of `ok`, `gone` on 404 (undone
    already), `unreachable` when nothing listens (what the fault lived in is gone)."""
    resp = _http(method, url, headers, json, timeout)
    if resp is None:
        return unreachable
    if resp.status_code == 404:
        return gone
    _expect(resp, *ok)
    return done


def _expect(resp: httpx.Response, *codes: int) -> None:
    if resp.status_code not in codes:
        raise TargetError(f"{resp.request.method} {resp.request.url} answered "
                          f"{resp.status_code}: {resp.text[:200]}")
