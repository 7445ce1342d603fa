"""A handle on a running target: its router URL, its admin API and its own processes.

The harness reaches a target only over HTTP (the admin API) and by process control; the set of
processes a fault may signal is computed here, from the target's registry (`/admin/workers`)
and the router's process tree, and nothing else.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from .errors import TargetError, UsageError

__all__ = ["Target", "Worker"]


@dataclass(frozen=True)
class Worker:
    """One worker as the target's registry reports it."""

    id: str
    pid: int
    port: int
    model: str
    state: str
    rss_bytes: int = 0
    ongoing: int = 0
    restarts: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Worker:
        return cls(id=str(data["id"]), pid=int(data["pid"]), port=int(data["port"]),
                   model=str(data["model"]), state=str(data["state"]),
                   rss_bytes=int(data.get("rss_bytes", 0)), ongoing=int(data.get("ongoing", 0)),
                   restarts=int(data.get("restarts", 0)))


class Target:
    """The router URL and admin token of a target, with the calls faults need.

    `pid` is the router's process id when the caller started it; otherwise it is found as the
    process listening on the router's port (the target must then run on this machine).
    The timeout is long because the reference router's fault listing and removal ask each
    worker in turn, waiting 5 s for one that is paused.
    """

    def __init__(self, url: str, admin_token: str | None = None, *, pid: int | None = None,
                 timeout: float = 20.0, verify: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.admin_token = admin_token
        self._pid = pid
        self._client = httpx.Client(timeout=timeout, verify=verify or True)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ---------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def is_local(self) -> bool:
        """Whether the router runs on this machine (process faults need that)."""
        host = self.host
        try:
            addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return False
        return any(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addrs)

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        """Call the admin API; raises TargetError when there is no token or no answer."""
        if not self.admin_token:
            raise UsageError(f"the target {self.url} needs an admin token for this "
                             "(--admin-token)")
        try:
            resp = self._client.request(method, self.url + path, json=json,
                                        headers={"Authorization": f"Bearer {self.admin_token}"})
        except httpx.HTTPError as exc:
            raise TargetError(f"{method} {self.url}{path} failed: {exc}") from exc
        if resp.status_code in (401, 403):
            raise UsageError(f"the target {self.url} refused the admin token "
                             f"({resp.status_code}); check --admin-token")
        return resp

    def workers(self) -> list[Worker]:
        """The workers in the target's registry (`GET /admin/workers`)."""
        resp = self.admin("GET", "/admin/workers")
        if resp.status_code != 200:
            raise TargetError(f"GET {self.url}/admin/workers answered {resp.status_code}: "
                              f"{resp.text[:200]}")
        return [Worker.from_json(w) for w in resp.json()["workers"]]

    def wait_live(self, want: int, timeout: float) -> None:
        """Wait until at least `want` workers are live; TargetError after `timeout` s."""
        deadline = time.monotonic() + timeout
        live = 0
        while time.monotonic() < deadline:
            try:
                live = sum(w.state == "live" for w in self.workers())
            except TargetError:
                live = 0
            if live >= want:
                return
            time.sleep(0.1)
        raise TargetError(f"the reference target has {live} live worker(s) after "
                          f"{timeout:.0f} s, wanted {want}")

    def faults(self) -> list[dict[str, Any]]:
        """The admin faults active on the router and its workers."""
        resp = self.admin("GET", "/admin/faults")
        if resp.status_code != 200:
            raise TargetError(f"GET {self.url}/admin/faults answered {resp.status_code}")
        return list(resp.json()["faults"])

    def add_fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Add one admin fault; returns the target's description of it (with its `id`)."""
        resp = self.admin("POST", "/admin/faults", json=spec)
        if resp.status_code == 400:
            raise UsageError(f"the target refused the fault {spec}: {_message(resp)}")
        if resp.status_code != 201:
            raise TargetError(f"POST {self.url}/admin/faults answered {resp.status_code}: "
                              f"{_message(resp)}")
        return dict(resp.json())

    def remove_fault(self, fault_id: str) -> bool:
        """Remove one admin fault; False when it is already gone (expired or removed)."""
        resp = self.admin("DELETE", f"/admin/faults/{fault_id}")
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            raise TargetError(f"DELETE {self.url}/admin/faults/{fault_id} answered "
                              f"{resp.status_code}: {_message(resp)}")
        return True

    def clear_faults(self) -> int:
        """Remove every admin fault; returns how many there were."""
        resp = self.admin("DELETE", "/admin/faults")
        if resp.status_code != 200:
            raise TargetError(f"DELETE {self.url}/admin/faults answered {resp.status_code}")
        return int(resp.json().get("removed", 0))

    # -- processes ----------------------------------------------------------------------------

    def router_pid(self) -> int:
        """The router's PID: as given, else the process listening on the router's port."""
        if self._pid is not None:
            return self._pid
        if not self.is_local():
            raise UsageError(f"the target {self.url} is not on this machine: process faults "
                             "need a local target")
        port = self.port
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                    and conn.pid:
                self._check_parent(int(conn.pid))
                return int(conn.pid)
        # another user's process: its listener is not visible; the workers' parent is
        for worker in self.workers():
            try:
                return psutil.Process(worker.pid).ppid()
            except psutil.Error:
                continue
        raise TargetError(f"no process of this user listens on port {port} of {self.url}")

    def _check_parent(self, pid: int) -> None:
        # the listener must be the workers' parent: a proxy in front of the router is not it
        parents = set()
        for worker in self.workers():
            try:
                parents.add(psutil.Process(worker.pid).ppid())
            except psutil.Error:
                continue
        if parents and pid not in parents:
            raise UsageError(f"the process listening on {self.url} (pid {pid}) is not the parent "
                             f"of the target's workers (pid {', '.join(map(str, parents))}): "
                             "give the router's own URL, not a proxy's")

    def processes(self) -> dict[int, str]:
        """The target's own processes: PID -> role (`router`, a worker id, or `child`)."""
        router = self.router_pid()
        roles: dict[int, str] = {router: "router"}
        try:
            for child in psutil.Process(router).children(recursive=True):
                roles[child.pid] = "child"
        except psutil.NoSuchProcess as exc:
            raise TargetError(f"the router process {router} of {self.url} is gone") from exc
        # a registry entry names a worker only if that PID is in the router's tree: a stale
        # entry whose PID was reused by an unrelated process must never become a victim
        for worker in self.workers():
            if worker.pid in roles and worker.pid != router:
                roles[worker.pid] = worker.id
        return roles


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body))
    return str(body)[:200]
