"""Container faults through the Docker SDK: they run where an engine is reachable and skip
(with the reason) where there is none; validate always says clearly when there is none."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from harness.errors import UsageError
from harness.faults import ContainerFault
from harness.faults.base import Ledger
from harness.faults.container import docker_client
from harness.target import Target

NOWHERE = Target("http://127.0.0.1:9")


def _engine() -> tuple[Any, str]:
    try:
        return docker_client(), ""
    except UsageError as exc:
        return None, str(exc)


def test_validate_without_an_engine_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    with pytest.raises(UsageError, match="need a Docker engine, and none is reachable"):
        ContainerFault("kill", container="x").validate(NOWHERE)


def test_selection_is_checked() -> None:
    with pytest.raises(UsageError, match="exactly one of"):
        ContainerFault("kill").validate(NOWHERE)
    with pytest.raises(UsageError, match="needs `network`"):
        ContainerFault("disconnect", label="a=b").validate(NOWHERE)


@pytest.fixture
def container() -> Iterator[Any]:
    client, reason = _engine()
    if client is None:
        pytest.skip(f"no Docker engine: {reason}")
    label = f"llm-chaos-test={uuid.uuid4().hex[:8]}"
    key, value = label.split("=")
    try:
        box = client.containers.run("busybox", ["sleep", "300"], detach=True,
                                    labels={key: value}, network="bridge")
    except Exception as exc:  # e.g. no busybox image and no network to pull it
        pytest.skip(f"cannot start a busybox container: {exc}")
    box.label = label
    yield box
    box.remove(force=True)


@pytest.mark.docker
@pytest.mark.parametrize("action", ["kill", "pause", "restart", "disconnect"])
def test_container_fault_and_revert(container: Any, action: str) -> None:
    fault = ContainerFault(action, label=container.label,  # type: ignore[arg-type]
                           network="bridge" if action == "disconnect" else None)
    fault.validate(NOWHERE)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    container.reload()
    if action == "kill":
        assert container.status in ("exited", "dead")
    elif action == "pause":
        assert container.status == "paused"
    elif action == "disconnect":
        assert "bridge" not in container.attrs["NetworkSettings"]["Networks"]
    fault.revert(NOWHERE, effect)
    fault.revert(NOWHERE, effect)
    container.reload()
    assert container.status == "running"
    assert "bridge" in container.attrs["NetworkSettings"]["Networks"]
