"""Steady-state probes (Chaos Toolkit's hypothesis): each answers ok or not, and leaves one
`f: probe` history line, so the steady_state check judges it offline."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from ..experiment import HttpProbe, MetricProbe, ProbeSpec
from ..faults import Recorder
from ..telemetry import parse_metrics

__all__ = ["probe_name", "run_probe", "run_probes"]

PROCESS = "steady-state"


def probe_name(probe: ProbeSpec, index: int) -> str:
    """The probe's name, or one made from what it looks at."""
    if probe.name:
        return probe.name
    if isinstance(probe, MetricProbe):
        return f"metric {probe.metric}"
    return f"http {probe.url}"


def _absolute(url: str, base: str) -> str:
    return url if url.startswith(("http://", "https://")) else base.rstrip("/") + url


def run_probe(probe: ProbeSpec, base_url: str, client: httpx.Client,
              headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run one probe now: a dict with `ok` and what it saw (an error when it could not ask).
    `headers` (the target's own, its API key among them) go only to URLs under `base_url`."""
    url = _absolute(probe.url, base_url)
    if headers and not url.startswith(base_url.rstrip("/") + "/"):
        headers = None
    if isinstance(probe, HttpProbe):
        try:
            resp = client.get(url, timeout=probe.timeout, headers=headers)
        except httpx.HTTPError as exc:
            return {"ok": False, "url": url, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": resp.status_code == probe.status, "url": url,
                "status": resp.status_code, "expected_status": probe.status}
    try:
        resp = client.get(url, timeout=5.0, headers=headers)
        resp.raise_for_status()
        metrics = parse_metrics(resp.text)
    except (httpx.HTTPError, ValueError) as exc:
        return {"ok": False, "url": url, "metric": probe.metric,
                "error": f"{type(exc).__name__}: {exc}"}
    value = metrics.get(probe.metric)
    ok = value is not None and (probe.min is None or value >= probe.min) \
        and (probe.max is None or value <= probe.max)
    return {"ok": ok, "url": url, "metric": probe.metric, "observed": value,
            "min": probe.min, "max": probe.max}


def run_probes(probes: Sequence[ProbeSpec], when: str, base_url: str, recorder: Recorder,
               wall: Callable[[], float] = time.time, *,
               headers: Mapping[str, str] | None = None,
               verify: ssl.SSLContext | None = None) -> list[tuple[str, bool]]:
    """Run every probe once, recording each as a history line; (name, ok) per probe.
    `headers` and `verify`: how to reach the target (its API key, its TLS settings)."""
    results: list[tuple[str, bool]] = []
    with httpx.Client(verify=verify or True) as client:
        for i, probe in enumerate(probes):
            name = probe_name(probe, i)
            seen = run_probe(probe, base_url, client, headers)
            ok = bool(seen["ok"])
            recorder.write([{"type": "ok" if ok else "fail", "f": "probe", "process": PROCESS,
                             "time": wall(), "value": {"name": name, "when": when,
                                                       "type": probe.type, **seen}}])
            results.append((name, ok))
    return results
