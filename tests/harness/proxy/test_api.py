"""Toxiproxy API conformance: the proxy driven only through the documented JSON API."""

from __future__ import annotations

import time

import httpx

from harness.proxy.cli import API_KEEP_ALIVE_S

from .conftest import Proxy, connect, recv_exactly


def test_version_and_empty_index(fresh: Proxy) -> None:
    assert fresh.api.get("/version").json()["version"].startswith("llm-chaos-")
    assert fresh.api.get("/proxies").json() == {}


def test_proxy_lifecycle_and_toxics(fresh: Proxy, echo: str) -> None:
    api = fresh.api
    resp = api.post("/proxies", json={"name": "echo", "listen": "127.0.0.1:0",
                                      "upstream": echo})
    assert resp.status_code == 201
    created = resp.json()
    assert set(created) == {"name", "listen", "upstream", "enabled", "toxics"}
    assert created["enabled"] is True and created["toxics"] == []
    assert created["listen"] != "127.0.0.1:0"  # port 0: the chosen port is shown
    assert api.post("/proxies", json={"name": "echo", "upstream": echo}).status_code == 409
    assert api.post("/proxies", json={"name": "x"}).json() == {
        "error": "missing required field: upstream", "status": 400}
    assert api.get("/proxies").json() == {"echo": created}
    assert api.get("/proxies/echo").json() == created
    assert api.get("/proxies/nope").json() == {"error": "proxy not found", "status": 404}

    # add: defaults as Toxiproxy's (name <type>_<stream>, downstream, toxicity 1)
    resp = api.post("/proxies/echo/toxics", json={"type": "latency",
                                                  "attributes": {"latency": 50}})
    assert resp.status_code == 200
    toxic = resp.json()
    assert toxic == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                     "toxicity": 1.0, "attributes": {"latency": 50, "jitter": 0}}
    assert api.post("/proxies/echo/toxics", json={"type": "latency"}).status_code == 409
    assert api.post("/proxies/echo/toxics", json={"type": "nope"}).status_code == 400
    assert api.post("/proxies/echo/toxics",
                    json={"type": "latency", "stream": "sideways"}).status_code == 400
    assert api.get("/proxies/echo/toxics").json() == [toxic]
    assert api.get("/proxies/echo/toxics/latency_downstream").json() == toxic
    assert api.get("/proxies/echo").json()["toxics"] == [toxic]

    sock = connect(created["listen"])
    start = time.perf_counter()
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    assert time.perf_counter() - start >= 0.045

    # update: attributes change, the rest stays
    resp = api.post("/proxies/echo/toxics/latency_downstream",
                    json={"attributes": {"latency": 150}})
    assert resp.status_code == 200
    assert resp.json()["attributes"] == {"latency": 150, "jitter": 0}
    start = time.perf_counter()
    sock.sendall(b"pong")
    assert recv_exactly(sock, 4) == b"pong"
    assert time.perf_counter() - start >= 0.145

    # remove
    assert api.delete("/proxies/echo/toxics/latency_downstream").status_code == 204
    assert api.delete("/proxies/echo/toxics/latency_downstream").status_code == 404
    start = time.perf_counter()
    sock.sendall(b"fast")
    assert recv_exactly(sock, 4) == b"fast"
    assert time.perf_counter() - start < 0.04
    sock.close()

    # update the proxy: down, then up again on the same address
    resp = api.post("/proxies/echo", json={"enabled": False})
    assert resp.status_code == 200 and resp.json()["enabled"] is False
    try:
        connect(created["listen"], timeout=1).close()
        raise AssertionError("a disabled proxy accepted a connection")
    except ConnectionRefusedError:
        pass
    assert api.post("/proxies/echo", json={"enabled": True}).json()["enabled"] is True
    with connect(created["listen"]) as sock:
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"

    assert api.delete("/proxies/echo").status_code == 204
    assert api.get("/proxies").json() == {}


def test_reset_enables_and_clears(fresh: Proxy, echo: str) -> None:
    listen = fresh.create("r", echo)
    fresh.toxic("r", type="timeout", stream="upstream", attributes={"timeout": 0})
    fresh.api.post("/proxies/r", json={"enabled": False})
    assert fresh.api.post("/reset").status_code == 204
    shown = fresh.api.get("/proxies/r").json()
    assert shown["enabled"] is True and shown["toxics"] == []
    with connect(listen) as sock:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


def test_populate_creates_keeps_and_replaces(fresh: Proxy, echo: str) -> None:
    body = [{"name": "a", "listen": "127.0.0.1:0", "upstream": echo},
            {"name": "b", "listen": "127.0.0.1:0", "upstream": echo, "enabled": False}]
    resp = fresh.api.post("/populate", json=body)
    assert resp.status_code == 201
    made = {p["name"]: p for p in resp.json()["proxies"]}
    assert set(made) == {"a", "b"} and made["b"]["enabled"] is False
    # the same again (with the shown addresses) leaves them untouched, toxics included
    fresh.toxic("a", type="latency", attributes={"latency": 1})
    again = [{**made["a"]}, {**made["b"]}]
    for p in again:
        p.pop("toxics")
    resp = fresh.api.post("/populate", json=again)
    assert resp.status_code == 201
    assert fresh.api.get("/proxies/a").json()["toxics"] != []
    # a different upstream replaces the proxy
    resp = fresh.api.post("/populate", json=[{"name": "a", "listen": "127.0.0.1:0",
                                              "upstream": "127.0.0.1:9"}])
    assert resp.json()["proxies"][0]["upstream"] == "127.0.0.1:9"
    assert fresh.api.get("/proxies/a").json()["toxics"] == []
    assert fresh.api.post("/populate", json={"name": "x"}).status_code == 400


def test_toxic_ttl_expires_by_itself(fresh: Proxy, echo: str) -> None:
    fresh.create("t", echo)
    toxic = fresh.toxic("t", type="latency", attributes={"latency": 10}, ttl=0.3)
    assert toxic["ttl"] == 0.3
    assert len(fresh.api.get("/proxies/t/toxics").json()) == 1
    time.sleep(0.6)
    assert fresh.api.get("/proxies/t/toxics").json() == []
    assert fresh.api.post("/proxies/t/toxics", json={"type": "latency", "ttl": 0}).json()[
        "status"] == 400


def test_the_api_keeps_idle_connections_longer_than_httpx() -> None:
    """Else the API could close an idle connection just as an httpx client reuses it."""
    expiry = httpx.Limits().keepalive_expiry
    assert expiry is not None and expiry < API_KEEP_ALIVE_S
