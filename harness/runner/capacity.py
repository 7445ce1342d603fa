"""Load sized to the target (`load.users: auto`): its capacity measured before the load, so the
same experiment loads a slow and a fast machine alike (issue 16).

Right after the steady-state probes, against the URL the run uses: one stream alone, twice
(median e2e `e2e_1` and its output tokens), then `streams` streams at once, one round
(aggregate output tokens/s `C`). A closed-loop user issues about `tokens / e2e_1` tokens/s on
an unloaded target, so `utilization * C` tokens/s take

    users = clamp(round(utilization * C * e2e_1 / tokens), 1, max_users)

The streams go through the load generator's own client (`harness.loadgen.client`, its SSE
reader) with the load's `max_tokens`. They are not the run's requests: they stay out of
history.jsonl (the audit check only counts audited requests the client did not record), and
every figure with the rule goes into `capacity.json` in the run directory.
"""

from __future__ import annotations

import ast
import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import TargetError
from ..experiment import LoadConfig
from ..loadgen.client import Outcome, Request, StreamClient

__all__ = ["CAPACITY_FILE", "Capacity", "measure_capacity", "scenario_max_tokens", "size_users"]

CAPACITY_FILE = "capacity.json"
STREAMS = 16
DEFAULT_MAX_TOKENS = 32
SINGLE_RUNS = 2
PROMPT = "Name three primary colours and say one thing about each."
RULE = "users = clamp(round(utilization * C * e2e_1 / tokens), 1, max_users)"

Clock = Callable[[], float]


class _Client(Protocol):
    """What the measurement needs of a client (StreamClient; a fake in tests)."""

    def get_json(self, path: str) -> Any: ...

    def send(self, req: Request) -> Outcome: ...

    def close(self) -> None: ...


ClientFactory = Callable[[str, float], _Client]


def size_users(e2e_1: float, tokens: int, tokens_per_s: float, utilization: float,
               max_users: int) -> int:
    """The users that draw `utilization` of a capacity of `tokens_per_s` when one user alone
    gets `tokens` tokens every `e2e_1` seconds (each closed-loop user: tokens / e2e_1 tokens/s)."""
    if e2e_1 <= 0 or tokens <= 0 or tokens_per_s <= 0:
        raise ValueError(f"no capacity to size from (e2e_1 {e2e_1}, tokens {tokens}, "
                         f"tokens/s {tokens_per_s})")
    return max(1, min(max_users, round(utilization * tokens_per_s * e2e_1 / tokens)))


@dataclass(frozen=True)
class Capacity:
    """Every figure of one measurement, the rule's inputs and the users it chose."""

    model: str
    max_tokens: int
    max_tokens_source: str
    prompt: str
    single_e2e: tuple[float, ...]
    single_tokens: tuple[int, ...]
    e2e_1: float
    tokens: int
    streams: int
    streams_completed: int
    streams_rejected: int
    streams_tokens: int
    streams_wall: float
    tokens_per_s: float
    utilization: float
    max_users: int
    unclamped: float
    users: int
    started: float
    ended: float

    def line(self) -> str:
        """The progress line printed before the load starts."""
        capped = (f", capped at max_users {self.max_users}"
                  if self.unclamped > self.max_users + 0.5 else "")
        return (f"capacity: 1 stream e2e {self.e2e_1:.2f} s ({self.tokens} tokens), "
                f"{self.streams} streams {self.tokens_per_s:.0f} tokens/s -> {self.users} users "
                f"(utilization {self.utilization:g}{capped})")

    def to_json(self) -> dict[str, Any]:
        return {"requested": "auto", "rule": RULE, **asdict(self)}

    def write(self, run_dir: Path) -> Path:
        """Write `capacity.json` into `run_dir`; its path."""
        path = run_dir / CAPACITY_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        return path


def scenario_max_tokens(locustfiles: Sequence[str]) -> tuple[int | None, str]:
    """The `max_tokens` the scenarios' user classes set, read from their source without
    importing them (a locustfile imports locust); (None, why) when absent or they differ."""
    found: dict[int, str] = {}
    for name in locustfiles:
        try:
            tree = ast.parse(Path(name).read_text(encoding="utf-8"), name)
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                targets = (item.targets if isinstance(item, ast.Assign)
                           else [item.target] if isinstance(item, ast.AnnAssign) else [])
                value = getattr(item, "value", None)
                if any(isinstance(t, ast.Name) and t.id == "max_tokens" for t in targets) \
                        and isinstance(value, ast.Constant) and type(value.value) is int:
                    found.setdefault(value.value, name)
    if len(found) == 1:
        ((tokens, name),) = found.items()
        return tokens, name
    if found:
        return None, f"scenarios differ ({', '.join(map(str, sorted(found)))})"
    return None, "no scenario sets it"


def _tokens(out: Outcome) -> int:
    # the server's usage count; else one per content chunk (the load generator would count
    # with a tokenizer, which the harness process does not load)
    return out.usage_completion if out.usage_completion is not None else len(out.content_times)


def _round(url: str, body: dict[str, Any], count: int, timeout: float,
           client: ClientFactory) -> list[Outcome]:
    """`count` streams at once, each on its own connection; TargetError when they are not all
    answered within `timeout` seconds."""
    outcomes: list[Outcome | None] = [None] * count

    def one(i: int) -> None:
        c = client(url, timeout)
        try:
            outcomes[i] = c.send(Request("chat", body, str(uuid.uuid4())))
        finally:
            c.close()

    # daemon threads: one stuck past the deadline ends with its socket timeout, not the run
    threads = [threading.Thread(target=one, args=(i,), name=f"llm-chaos-capacity-{i}",
                                daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    done = [o for o in outcomes if o is not None]
    if len(done) < count:
        raise TargetError(f"capacity measurement: {count - len(done)} of {count} stream(s) to "
                          f"{url} not answered within {timeout:.3g} s")
    return done


def _failed(outcomes: Sequence[Outcome], allowed: frozenset[str]) -> None:
    for out in outcomes:
        if out.status != "ok" and out.status not in allowed:
            raise TargetError(f"capacity measurement: a stream failed ({out.status}: "
                              f"{out.error})")


def measure_capacity(url: str, load: LoadConfig, *, streams: int = STREAMS,
                     client: ClientFactory = lambda url, timeout: StreamClient(
                         url, timeout=timeout),
                     wall: Clock = time.time) -> Capacity:
    """Measure the target at `url` and size `load`'s users; TargetError when it cannot
    answer (one stream alone is bounded by the load's request_timeout, the rest by
    10 x e2e_1 + 30 s)."""
    started = wall()
    if load.max_tokens is not None:
        max_tokens, source = load.max_tokens, "load.max_tokens"
    else:
        found, why = scenario_max_tokens(load.locustfile)
        max_tokens, source = ((found, why) if found is not None
                              else (DEFAULT_MAX_TOKENS, f"default ({why})"))
    probe = client(url, load.request_timeout)
    try:
        model = str(probe.get_json("/v1/models")["data"][0]["id"])
    except Exception as exc:  # unreachable, an HTTP error or not an OpenAI model list
        raise TargetError(f"capacity measurement: GET {url}/v1/models failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        probe.close()
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}

    singles: list[Outcome] = []
    timeout = load.request_timeout
    for _ in range(SINGLE_RUNS):
        singles += _round(url, body, 1, timeout, client)
        _failed(singles, frozenset())
        timeout = 10 * (singles[0].end_mono - singles[0].sent_mono) + 30.0
    single_e2e = tuple(o.end_mono - o.sent_mono for o in singles)
    single_tokens = tuple(_tokens(o) for o in singles)
    e2e_1 = statistics.median(single_e2e)
    tokens = round(statistics.median(single_tokens))
    if tokens <= 0:
        raise TargetError("capacity measurement: a stream alone produced no output tokens")
    bound = 10 * e2e_1 + 30.0

    many = _round(url, body, streams, bound, client)
    _failed(many, frozenset({"rate_limited"}))  # a full queue answers 429: less capacity
    completed = [o for o in many if o.ok]
    if not completed:
        raise TargetError(f"capacity measurement: all {streams} concurrent streams were "
                          "rejected (429)")
    wall_s = max(o.end_mono for o in many) - min(o.sent_mono for o in many)
    produced = sum(_tokens(o) for o in completed)
    rate = produced / wall_s if wall_s > 0 else 0.0
    if rate <= 0:
        raise TargetError(f"capacity measurement: {streams} concurrent streams produced no "
                          "output tokens")
    users = size_users(e2e_1, tokens, rate, load.utilization, load.max_users)
    return Capacity(
        model=model, max_tokens=max_tokens, max_tokens_source=source, prompt=PROMPT,
        single_e2e=single_e2e, single_tokens=single_tokens, e2e_1=e2e_1, tokens=tokens,
        streams=streams, streams_completed=len(completed),
        streams_rejected=len(many) - len(completed), streams_tokens=produced,
        streams_wall=wall_s, tokens_per_s=rate, utilization=load.utilization,
        max_users=load.max_users, unclamped=load.utilization * rate * e2e_1 / tokens,
        users=users, started=started, ended=wall())
