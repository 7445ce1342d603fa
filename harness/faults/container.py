"""Container faults through the Docker SDK: kill, pause, restart, network disconnect of
containers selected by name or label."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import TargetError, UsageError
from ..target import Target
from .base import Effect, Ledger, one_of, revert_effect
from .docker_engine import docker_client
from .heal import DockerConnect, DockerStart, DockerUnpause

__all__ = ["ContainerFault", "docker_client"]

Action = Literal["kill", "pause", "restart", "disconnect"]
_ACTIONS = ("kill", "pause", "restart", "disconnect")


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
        one_of("container action", self.action, _ACTIONS)
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
