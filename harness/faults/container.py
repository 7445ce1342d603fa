"""Container faults through the Docker SDK: kill, pause, restart, network disconnect of
containers selected by name or label."""

from __future__ import annotations

import os
import random
import re
import socket
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from ..errors import TargetError, UsageError
from ..target import Target
from .base import Effect, Ledger, revert_effect
from .heal import DockerConnect, DockerStart, DockerUnpause

__all__ = ["ContainerFault", "docker_client"]

Action = Literal["kill", "pause", "restart", "disconnect"]
_ACTIONS = ("kill", "pause", "restart", "disconnect")


def docker_client() -> Any:
    """A Docker client speaking the engine's API version, which the engine just reported;
    UsageError saying so when no engine is reachable."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise UsageError("container faults need the `docker` package") from exc
    problem = _unreachable(os.environ.get("DOCKER_HOST", _DEFAULT_HOST))
    if problem is not None:
        raise UsageError(f"container faults need a Docker engine, and none is reachable "
                         f"(DOCKER_HOST={_docker_host()}): {problem}")
    # A fixed API version for the client that probes: with `auto`, from_env itself calls the
    # engine and leaks its socket when none answers. The probe asks the unversioned /version,
    # which every engine answers: a versioned path below the engine's minimum (1.44 from
    # Engine 29 on) is refused with 400.
    probe = docker.from_env(version="1.24", timeout=5)
    try:
        version = str(probe.api.version(api_version=False)["ApiVersion"])
    except DockerException as exc:
        raise UsageError(f"container faults need a Docker engine, and none is reachable "
                         f"(DOCKER_HOST={_docker_host()}): {exc}") from exc
    finally:
        probe.close()
    client = docker.from_env(version=version, timeout=5)
    return client


_DEFAULT_HOST = "unix:///var/run/docker.sock"


def _unreachable(host: str) -> str | None:
    """Why nothing answers at `host`, or None if a connection opens. The SDK leaks its socket
    when the connection fails, so this is tried with a plain socket first."""
    parts = urlsplit(host)
    try:
        if parts.scheme in ("unix", "http+unix"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(parts.path)
        elif parts.scheme in ("tcp", "http", "https"):
            port = parts.port or (2376 if parts.scheme == "https" else 2375)
            with socket.create_connection((parts.hostname or "localhost", port), timeout=5):
                pass
    except OSError as exc:
        return str(exc)
    return None  # other schemes (ssh, npipe): left to the SDK


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock (default)")


@dataclass(frozen=True)
class ContainerFault:
    """`action` on `count` random containers named `container` or carrying `label`
    (`key=value`)."""

    action: Action
    container: str | None = None
    label: str | None = None
    count: int = 1
    network: str | None = None  # for `disconnect`

    @property
    def name(self) -> str:
        return f"container-{self.action}"

    def validate(self, target: Target) -> None:
        if self.action not in _ACTIONS:
            raise UsageError(f"container action {self.action!r}: use one of "
                             f"{', '.join(_ACTIONS)}")
        if (self.container is None) == (self.label is None):
            raise UsageError("container fault: give exactly one of `container` (a name) or "
                             "`label`")
        if self.action == "disconnect" and not self.network:
            raise UsageError("container disconnect needs `network`")
        if self.count < 1:
            raise UsageError(f"container fault count must be at least 1, not {self.count}")
        client = docker_client()
        try:
            if not self._containers(client, UsageError):
                raise UsageError(self._no_match())
        finally:
            client.close()

    def inject(self, target: Target, rng: random.Random, ledger: Ledger) -> Effect:
        client = docker_client()
        try:
            return self._inject(client, rng, ledger)
        finally:
            client.close()

    def _inject(self, client: Any, rng: random.Random, ledger: Ledger) -> Effect:
        from docker.errors import APIError

        try:
            found = sorted(self._containers(client, TargetError), key=lambda c: str(c.name))
        except APIError as exc:
            raise TargetError(f"listing containers ({self._selector()}) failed: {exc}") from exc
        if not found:
            raise TargetError(self._no_match())
        victims = rng.sample(found, min(self.count, len(found)))
        done: list[str] = []
        for container in victims:
            try:
                if self.action == "kill":
                    ledger.note(DockerStart(container.id))
                    container.kill()
                elif self.action == "pause":
                    ledger.note(DockerUnpause(container.id))
                    container.pause()
                elif self.action == "restart":
                    container.restart(timeout=10)
                else:
                    assert self.network is not None
                    net = client.networks.get(self.network)
                    # the heal is noted before the disconnect (write-ahead), so it must only
                    # ever reconnect a container that was on the network, with its aliases
                    endpoint = _endpoint(container, str(net.name))
                    if endpoint is None:
                        raise TargetError(f"container {container.name} is not on network "
                                          f"{self.network}")
                    ipam = endpoint.get("IPAMConfig") or {}
                    ledger.note(DockerConnect(
                        net.id, container.id, aliases=tuple(endpoint.get("Aliases") or ()),
                        ipv4=ipam.get("IPv4Address") or None,
                        ipv6=ipam.get("IPv6Address") or None))
                    net.disconnect(container)
            except APIError as exc:
                raise TargetError(f"{self.action} of container {container.name} failed: "
                                  f"{exc}") from exc
            done.append(str(container.name))
        return ledger.effect({"action": self.action, "containers": done,
                              "network": self.network})

    def revert(self, target: Target, effect: Effect) -> None:
        revert_effect(effect)

    def _no_match(self) -> str:
        return (f"no running container matches {self._selector()}"
                + (f" on network {self.network}" if self.network else ""))

    def _selector(self) -> str:
        return (f"name={self.container}" if self.container is not None
                else f"label={self.label}")

    def _containers(self, client: Any, error: type[Exception]) -> list[Any]:
        """The running containers selected (for a disconnect: those on its network); `error`
        when the network does not exist."""
        from docker.errors import NotFound

        if self.container is None:
            found = list(client.containers.list(filters={"label": self.label}))
        else:
            # the engine's `name` filter is an unanchored regex on part of the name: anchor
            # it, and keep only the exact name (`web` must not select `web-2`)
            found = [c for c in client.containers.list(
                         filters={"name": f"^/?{re.escape(self.container)}$"})
                     if str(c.name) == self.container.lstrip("/")]
        if self.action == "disconnect" and self.network is not None:
            try:
                name = str(client.networks.get(self.network).name)
            except NotFound as exc:
                raise error(f"container disconnect: no network {self.network!r} on the "
                            "Docker engine (`docker network ls` lists them)") from exc
            found = [c for c in found if _endpoint(c, name) is not None]
        return found


def _endpoint(container: Any, network: str) -> dict[str, Any] | None:
    """The container's endpoint on `network` as the engine reports it, or None if not on it."""
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    endpoint = networks.get(network)
    return endpoint if isinstance(endpoint, dict) else None
