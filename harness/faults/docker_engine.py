"""A client for the Docker engine that container faults act through (and their heals undo
through); UsageError saying so when no engine answers."""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError

__all__ = ["docker_client"]


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
