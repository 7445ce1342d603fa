"""Container faults against a fake of the Docker Engine HTTP API: a contract test. It checks the
requests our code sends through the Docker SDK, in order, and how it reads the replies. It does
not replace the real-engine test in test_container.py, which skips where no engine is
reachable: the fake is only as right as our reading of the Engine API."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import HTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import pytest

from harness.errors import TargetError, UsageError
from harness.faults import ContainerFault
from harness.faults.base import Ledger
from harness.faults.heal import DockerConnect, heal_from_json, heal_to_json
from harness.target import Target
from tests.http_stub import JsonHandler

NOWHERE = Target("http://127.0.0.1:9")
API = "1.45"  # what the fake's /version reports; docker_client() then speaks it


def _id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _api(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class Call(NamedTuple):
    """One request the fake engine received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class Box:
    """A container as the fake engine keeps it."""

    name: str
    labels: dict[str, str]
    networks: dict[str, list[str]]  # network name -> the container's aliases on it
    status: str = "running"  # running, paused or exited
    starts: int = 1

    @property
    def id(self) -> str:
        return _id(self.name)

    def inspect(self) -> dict[str, Any]:
        return {"Id": self.id, "Name": f"/{self.name}", "Config": {"Labels": self.labels},
                "State": {"Status": self.status, "Paused": self.status == "paused",
                          "Running": self.status != "exited", "StartedAt": str(self.starts)},
                "NetworkSettings": {"Networks": {
                    net: {"NetworkID": _id(net), "Aliases": aliases}
                    for net, aliases in self.networks.items()}}}


# verb: the statuses it acts on (else 409 Conflict), the status after
MOVES = {"kill": ("running paused", "exited"), "pause": ("running", "paused"),
         "unpause": ("paused", "running"), "restart": ("running paused exited", "running"),
         "start": ("exited", "running")}


class FakeEngine:
    """The part of the Engine API that container faults and their heals use, with the
    engine's status codes: /_ping, /version, GET /containers/json (running and paused ones
    unless `all`; `name` is an unanchored regex on the name with or without its leading /,
    `label` is `key` or `key=value`), GET /containers/{id}/json, POST /containers/{id}/{kill,
    pause,unpause,restart,start}, GET /networks/{id}, POST /networks/{id}/{connect,disconnect}.
    A versioned path below `min_api` is refused with 400, as the engine does; anything else is
    a 404. Single-threaded: requests are answered in the order they come."""

    def __init__(self, boxes: list[Box], networks: tuple[str, ...] = ("bridge", "app")) -> None:
        self.boxes = {box.name: box for box in boxes}
        self.networks = {key: net for net in networks for key in (net, _id(net))}  # name or id
        self.calls: list[Call] = []
        self.min_api = "1.24"  # Docker Engine 25 to 28; 29 and later refuse below 1.44
        self._taken = 0
        engine = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size)) if size else None
                call = Call(self.command, url.path, dict(parse_qsl(url.query)), body)
                engine.calls.append(call)
                code, reply = engine.answer(call)
                if isinstance(reply, str):
                    self.send_body(code, reply.encode(), "text/plain")
                else:
                    self.send_json(code, reply)

            do_POST = do_GET

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])

    def take(self) -> list[Call]:
        """The calls received since the last take."""
        new, self._taken = self.calls[self._taken:], len(self.calls)
        return new

    def answer(self, call: Call) -> tuple[int, Any]:
        match = re.fullmatch(r"/v([0-9.]+)(/.*)", call.path)
        version, route = match.groups() if match else ("", call.path)
        if version and _api(version) < _api(self.min_api):
            return 400, {"message": f"client version {version} is too old. Minimum supported API "
                                    f"version is {self.min_api}, please upgrade your client to "
                                    "a newer version"}
        parts = route.strip("/").split("/")
        if route == "/_ping":
            return 200, "OK"
        if route == "/version":
            return 200, {"ApiVersion": API, "MinAPIVersion": self.min_api, "Version": "27.5.1"}
        if route == "/containers/json":
            return 200, [{"Id": b.id, "Names": [f"/{b.name}"], "Labels": b.labels,
                          "State": b.status} for b in self._listed(call.query)]
        box = self._box(parts[1]) if len(parts) == 3 and parts[0] == "containers" else None
        if box is not None and (
                (call.method, parts[2]) == ("GET", "json")
                or (call.method == "POST" and parts[2] in MOVES)):
            return self._act(box, parts[2])
        net = self.networks.get(parts[1], "") if parts[:1] == ["networks"] and parts[1:] else ""
        if net and (call.method, len(parts)) == ("GET", 2):
            return 200, {"Name": net, "Id": _id(net), "Containers": {
                b.id: {"Name": b.name} for b in self.boxes.values() if net in b.networks}}
        if net and call.method == "POST" and parts[2:] in (["connect"], ["disconnect"]):
            member = self._box(str((call.body or {}).get("Container")))
            if member is not None:
                return self._network(member, net, parts[2], call.body)
        return 404, {"message": f"No such object: {route}"}

    def _listed(self, query: dict[str, str]) -> list[Box]:
        filters = json.loads(query.get("filters", "{}"))
        return [b for b in self.boxes.values()
                if (query.get("all") == "1" or b.status != "exited")
                and all(re.search(p, f"/{b.name}") or re.search(p, b.name)
                        for p in filters.get("name", []))
                and all(b.labels.get(k) == v if v else k in b.labels
                        for k, _, v in (lb.partition("=") for lb in filters.get("label", [])))]

    def _box(self, ref: str) -> Box | None:
        return next((b for b in self.boxes.values() if ref in (b.name, b.id)), None)

    def _act(self, box: Box, verb: str) -> tuple[int, Any]:
        if verb == "json":
            return 200, box.inspect()
        if verb == "start" and box.status != "exited":
            return 304, None  # already started
        acts_on, after = MOVES[verb]
        if box.status not in acts_on.split():
            return 409, {"message": f"Container {box.id} is {box.status}: cannot {verb}"}
        box.status = after
        if verb in ("start", "restart"):
            box.starts += 1
        return 204, None

    def _network(self, box: Box, net: str, verb: str, body: Any) -> tuple[int, Any]:
        if verb == "disconnect":
            if net not in box.networks:
                return 500, {"message": f"container {box.id} is not connected to network {net}"}
            del box.networks[net]
        else:
            if net in box.networks:
                return 403, {"message": f"endpoint with name {box.name} already exists in "
                                        f"network {net}"}
            box.networks[net] = list((body.get("EndpointConfig") or {}).get("Aliases") or [])
        return 200, None


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEngine]:
    """A fake engine on a loopback port the OS picks, reached through DOCKER_HOST: `web` (on
    `app` with the alias `svc`), `web-2`, `db` (not on `app`), and `old`, which has exited."""
    fake = FakeEngine([
        Box("web", {"llm-chaos": "web"}, {"bridge": [], "app": ["svc"]}),
        Box("web-2", {"llm-chaos": "web-2"}, {"bridge": []}),
        Box("db", {"llm-chaos": "db"}, {"bridge": []}),
        Box("old", {"llm-chaos": "old"}, {"bridge": []}, status="exited")])
    # a short poll so that shutdown() does not wait the default half second
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.01},
                              name="fake-docker-engine")
    thread.start()
    try:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{fake.port}")
        monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
        monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
        yield fake
    finally:
        fake.server.shutdown()
        thread.join(timeout=5)
        fake.server.server_close()
    assert not thread.is_alive()


WEB, APP = _id("web"), _id("app")
C, N = f"/v{API}/containers", f"/v{API}/networks"
PROBE = ["GET /version"]  # docker_client() asks unversioned: every engine answers that
SELECT = [f"GET {C}/json", f"GET {C}/{WEB}/json"]  # list, then inspect each one listed
HEAL = [*PROBE, f"GET {C}/{WEB}/json", f"GET {C}/{WEB}/json"]  # containers.get, then reload
# action: (inject's own calls, the last one's query and body, first revert, second revert)
CALLS: dict[str, tuple[list[str], tuple[dict[str, str], Any], list[str], list[str]]] = {
    "kill": ([f"POST {C}/{WEB}/kill"], ({}, None), [*HEAL, f"POST {C}/{WEB}/start"], HEAL),
    "pause": ([f"POST {C}/{WEB}/pause"], ({}, None), [*HEAL, f"POST {C}/{WEB}/unpause"], HEAL),
    "restart": ([f"POST {C}/{WEB}/restart"], ({"t": "10"}, None), [], []),
    "disconnect": ([f"GET {N}/app", f"POST {N}/{APP}/disconnect"], ({}, {"Container": WEB}),
                   [*HEAL, f"GET {N}/{APP}", f"POST {N}/{APP}/connect"], [*HEAL, f"GET {N}/{APP}"]),
}


def _lines(calls: list[Call]) -> list[str]:
    return [f"{call.method} {call.path}" for call in calls]


@pytest.mark.parametrize("action", ["kill", "pause", "restart", "disconnect"])
def test_action_sends_the_expected_requests_and_reverts(engine: FakeEngine, action: str) -> None:
    own, (query, body), revert, again = CALLS[action]
    fault = ContainerFault(action, label="llm-chaos=web",  # type: ignore[arg-type]
                           network="app" if action == "disconnect" else None)
    web = engine.boxes["web"]

    # a disconnect selects among the containers on its network
    select = [*SELECT, f"GET {N}/app"] if action == "disconnect" else SELECT
    fault.validate(NOWHERE)
    calls = engine.take()
    assert _lines(calls) == [*PROBE, *select]
    assert json.loads(calls[len(PROBE)].query["filters"]) == {"label": ["llm-chaos=web"]}
    assert calls[len(PROBE)].query["all"] == "0"

    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    calls = engine.take()
    assert _lines(calls) == [*PROBE, *select, *own]
    assert (calls[-1].query, calls[-1].body) == (query, body)
    assert effect.value == {"action": action, "containers": ["web"], "network": fault.network}
    assert web.status == {"kill": "exited", "pause": "paused"}.get(action, "running")
    assert ("app" in web.networks) is (action != "disconnect")
    assert web.starts == (2 if action == "restart" else 1)

    fault.revert(NOWHERE, effect)
    assert _lines(engine.take()) == revert
    fault.revert(NOWHERE, effect)
    assert _lines(engine.take()) == again
    assert web.status == "running"
    assert "app" in web.networks
    assert web.starts == (1 if action in ("pause", "disconnect") else 2)


@pytest.mark.parametrize(("fault", "what"), [
    (ContainerFault("kill", label="llm-chaos=old"), "label=llm-chaos=old"),  # `old` exited
    (ContainerFault("pause", container="nope"), "name=nope")])
def test_a_selection_with_no_running_container_is_refused(engine: FakeEngine,
                                                          fault: ContainerFault,
                                                          what: str) -> None:
    with pytest.raises(UsageError, match=f"^no running container matches {what}$"):
        fault.validate(NOWHERE)
    with pytest.raises(TargetError, match=f"^no running container matches {what}$"):
        fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    assert {call.method for call in engine.calls} == {"GET"}
    assert engine.boxes["old"].status == "exited"


def test_an_engine_with_a_newer_minimum_api_is_reached(engine: FakeEngine) -> None:
    """Docker Engine 29 and later refuse versioned paths below API 1.44 with 400."""
    engine.min_api = "1.44"
    ContainerFault("kill", label="llm-chaos=web").validate(NOWHERE)
    assert all(not call.path.startswith("/v1.24/") for call in engine.calls)


def test_a_name_selects_only_the_container_of_that_name(engine: FakeEngine) -> None:
    """The Engine's `name` filter is an unanchored regex: `web` must not select `web-2`."""
    fault = ContainerFault("kill", container="web", count=2)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    assert effect.value["containers"] == ["web"]
    assert engine.boxes["web-2"].status == "running"
    fault.revert(NOWHERE, effect)


def test_a_name_with_its_leading_slash_and_a_network_by_id_are_understood(
        engine: FakeEngine) -> None:
    fault = ContainerFault("disconnect", container="/web", network=APP)
    fault.validate(NOWHERE)
    effect = fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    assert effect.value["containers"] == ["web"] and "app" not in engine.boxes["web"].networks
    fault.revert(NOWHERE, effect)
    assert engine.boxes["web"].networks["app"] == ["svc"]


def test_a_network_that_does_not_exist_is_named(engine: FakeEngine) -> None:
    fault = ContainerFault("disconnect", label="llm-chaos=web", network="nonet")
    with pytest.raises(UsageError, match="no network 'nonet' on the Docker engine"):
        fault.validate(NOWHERE)
    with pytest.raises(TargetError, match="no network 'nonet'"):
        fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30))
    assert {call.method for call in engine.calls} == {"GET"}


def test_a_disconnect_of_a_container_not_on_the_network_is_refused(engine: FakeEngine) -> None:
    """The heal is noted before the disconnect (write-ahead): a container that is not on the
    network must never be selected, or the revert would connect it to a network it was never
    on."""
    fault = ContainerFault("disconnect", label="llm-chaos=db", network="app")
    with pytest.raises(UsageError, match=r"^no running container matches label=llm-chaos=db "
                                         r"on network app$"):
        fault.validate(NOWHERE)
    ledger = Ledger(fault.name, 30)
    with pytest.raises(TargetError, match=r"on network app$"):
        fault.inject(NOWHERE, random.Random(0), ledger)
    fault.revert(NOWHERE, ledger.effect({"partial": True}))  # as the injector does
    assert list(engine.boxes["db"].networks) == ["bridge"]
    assert {call.method for call in engine.calls} == {"GET"}


def test_disconnect_revert_keeps_the_network_aliases(engine: FakeEngine) -> None:
    """Reconnected with the aliases it had (a compose service name), not an empty endpoint."""
    fault = ContainerFault("disconnect", label="llm-chaos=web", network="app")
    fault.revert(NOWHERE, fault.inject(NOWHERE, random.Random(0), Ledger(fault.name, 30)))
    assert engine.boxes["web"].networks["app"] == ["svc"]


def test_the_connect_heal_keeps_its_aliases_through_the_state_file() -> None:
    heal = DockerConnect("net", "box", aliases=("svc", "web"), ipv4="10.0.0.5")
    again = heal_from_json(json.loads(json.dumps(heal_to_json(heal))))
    assert again == heal and again.aliases == ("svc", "web")
    # a record written before aliases were kept still reads
    assert heal_from_json({"kind": "docker_connect", "network": "net", "container": "box"}) \
        == DockerConnect("net", "box")
