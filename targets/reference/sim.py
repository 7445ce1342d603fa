"""The simulated engine: no model, tokens on a known schedule, and a record of each emission.

It is the ground truth for measuring the harness: token i of a request is due at
`received_at + ttft + itl_1 + ... + itl_i`, and the engine records when it actually handed
each token over. A single scheduler thread sleeps until the next due token (time.sleep has
sub-millisecond precision; asyncio timers round up to whole milliseconds).
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import itertools
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .params import GenerationRequest, Output
from .protocol import EngineFull, EngineThread, Prompt

__all__ = ["WORDS", "Delay", "SimEngine"]

# Each is one token, with its leading space, in SmolLM2's tokenizer (checked by a test), so the
# tokenizer count of the received text equals the number of tokens the engine emitted.
WORDS = (
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " with", " on",
    " be", " at", " by", " this", " from", " or", " an", " are", " not", " can", " all", " one",
    " will", " more", " time", " about", " data", " model", " server", " token", " stream",
    " request", " system", " test", " load", " fault", " world", " light", " water", " city",
    " river", " music", " paper", " green", " blue", " small", " large", " first", " last",
)


@dataclass(frozen=True)
class Delay:
    """A delay in seconds: fixed, or drawn from a seeded distribution.

    Spec forms: `0.05`, `uniform:LO,HI`, `normal:MEAN,STD`, `exp:MEAN`.
    """

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str | float) -> Delay:
        if isinstance(spec, (int, float)):
            return cls("fixed", float(spec))
        name, _, rest = str(spec).partition(":")
        try:
            if not rest:
                return cls("fixed", float(name))
            nums = [float(x) for x in rest.split(",")]
        except ValueError as exc:
            raise ValueError(f"bad delay {spec!r}: expected a number of seconds, "
                             "uniform:LO,HI, normal:MEAN,STD or exp:MEAN") from exc
        if name == "uniform" and len(nums) == 2:
            return cls("uniform", nums[0], nums[1])
        if name == "normal" and len(nums) == 2:
            return cls("normal", nums[0], nums[1])
        if name == "exp" and len(nums) == 1:
            return cls("exp", nums[0])
        raise ValueError(f"bad delay {spec!r}: expected uniform:LO,HI, normal:MEAN,STD or exp:MEAN")

    def draw(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.a, self.b))
        return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0


@dataclass
class _Stream:
    request: GenerationRequest
    schedule: list[float]
    words: list[str]
    emitted: list[float] = field(default_factory=list)
    done: bool = False
    offset: int = 0  # tokens generated before a resume


class SimEngine(EngineThread):
    """Engine interface without a model: deterministic text on a configured schedule."""

    thread_name = "sim-engine"
    join_timeout = 5.0

    def __init__(
        self,
        model_name: str = "sim",
        *,
        ttft: str | float = 0.05,
        itl: str | float = 0.01,
        seed: int = 0,
        max_model_len: int = 8192,
        max_num_seqs: int = 4096,
        trace_size: int = 20000,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.ttft = Delay.parse(ttft)
        self.itl = Delay.parse(itl)
        self.seed = seed
        self._heap: list[tuple[float, int, _Stream, int]] = []
        self._tiebreak = itertools.count()
        self._streams: dict[str, _Stream] = {}
        self.traces: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.trace_size = trace_size
        self.last_progress = time.monotonic()
        self.step = 0
        self.generated_tokens = 0
        self.prompt_tokens = 0

    # Prompts are words, not tokens: the simulated engine has no tokenizer.
    def encode_chat(self, messages: list[dict[str, str]]) -> Prompt:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return self.encode_text(text)

    def encode_text(self, text: str) -> Prompt:
        return Prompt(list(range(len(text.split()))), text)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def check_resume(self, token_ids: list[int], text_sent: int) -> str | None:
        """Why a continuation could not come from this engine, or None (its token ids are
        positions, and each of its tokens is a word)."""
        bad = next((t for t in token_ids if not 0 <= t < self.max_model_len), None)
        if bad is not None:
            return f"token id {bad} is not one this engine generates (0..{self.max_model_len - 1})"
        most = len(token_ids) * (max(len(w) for w in WORDS) + 1)
        if text_sent > most:
            return (f"text_sent {text_sent} is past the end of the text {len(token_ids)} "
                    f"token(s) can make (at most {most} characters)")
        return None

    def start(self) -> None:
        # The scheduler thread must get the GIL back within a fraction of a millisecond when a
        # token is due; CPython's default switch interval (5 ms) would make it late.
        sys.setswitchinterval(0.0005)
        super().start()

    def submit(self, request: GenerationRequest) -> None:
        received = request.received_at or time.monotonic()
        digest = hashlib.sha256(request.prompt_text.encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big") ^ self.seed)
        n = max(1, request.params.max_tokens)
        start = rng.randrange(len(WORDS))
        words = [WORDS[(start + 7 * i) % len(WORDS)] for i in range(n)]
        due = received + self.ttft.draw(rng)
        schedule = [due]
        for _ in range(n - 1):
            due += self.itl.draw(rng)
            schedule.append(due)
        # a resumed stream continues the same text after the tokens it already has
        first = min(len(request.resume_ids), n - 1)
        shift = schedule[first] - schedule[0]
        schedule = [t - shift for t in schedule[first:]]
        stream = _Stream(request, schedule, words[first:], offset=first)
        with self._cond:
            if len(self._streams) >= self.max_num_seqs:
                raise EngineFull(f"{self.max_num_seqs} simulated streams already running")
            self._streams[request.request_id] = stream
            self.prompt_tokens += len(request.prompt_ids)
            heapq.heappush(self._heap, (schedule[0], next(self._tiebreak), stream, 0))
            self._cond.notify()

    def healthy(self) -> tuple[bool, str]:
        if not self.thread_alive():
            return False, "engine thread is not running"
        return True, "ok"

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "step": self.step,
                "running": len(self._streams),
                "waiting": 0,
                "generated_tokens": self.generated_tokens,
                "prompt_tokens": self.prompt_tokens,
                "last_progress": self.last_progress,
                "ttft": str(self.ttft),
                "itl": str(self.itl),
            }

    def trace(self, request_id: str) -> dict[str, Any] | None:
        """When the request was received, when each token was due and when it was emitted."""
        with self._cond:
            return self.traces.get(request_id)

    def _record(self, stream: _Stream) -> None:
        req = stream.request
        self.traces[req.request_id] = {
            "request_id": req.request_id,
            "received_at": req.received_at,
            "scheduled": stream.schedule[: len(stream.emitted)],
            "emitted": list(stream.emitted),
            "tokens": len(stream.emitted),
            "clock": "time.monotonic",
        }
        while len(self.traces) > self.trace_size:
            self.traces.popitem(last=False)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        # Condition.wait wakes early on new work; sleep the last stretch
                        # precisely outside the lock.
                        if wait > 0.002:
                            self._cond.wait(wait - 0.001)
                            continue
                        break
                    self._cond.wait()
                if self._stopping:
                    return
                due, _, stream, index = self._heap[0]
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Every token that is due now is stamped before any is handed over: a hand-off
            # may give the GIL to the server's event loop for a while. One token per stream
            # at a time, like a decode step: a stream's next token, due at once with no
            # inter-token delay, waits for the next round, so such a stream flows token by
            # token instead of being stamped whole before its first token is handed over.
            with self._cond:
                now = time.monotonic()
                batch = []
                following: list[tuple[float, int, _Stream, int]] = []
                while self._heap and self._heap[0][0] <= now:
                    _, _, stream, index = heapq.heappop(self._heap)
                    batch.append((stream.request, self._emit(stream, index, following)))
                for entry in following:
                    heapq.heappush(self._heap, entry)
            for request, output in batch:
                request.sink(output)

    def _emit(self, stream: _Stream, index: int,
              following: list[tuple[float, int, _Stream, int]]) -> Output:
        """Stamp token `index` of `stream`; its next token goes to `following`."""
        req = stream.request
        now = time.monotonic()
        self.step += 1
        self.last_progress = now
        if req.cancelled.is_set():
            self._close(stream)
            return Output(req.request_id, finished=True, finish_reason="cancelled",
                          prompt_tokens=len(req.prompt_ids),
                          completion_tokens=len(stream.emitted), emitted_at=now)
        stream.emitted.append(now)
        self.generated_tokens += 1
        last = index + 1 == len(stream.schedule)
        done_tokens = stream.offset + len(stream.emitted)
        if last:
            self._close(stream)
        else:
            following.append((stream.schedule[index + 1], next(self._tiebreak), stream,
                              index + 1))
        return Output(
            request_id=req.request_id,
            text=stream.words[index],
            token_ids=(stream.offset + index,),
            finished=last,
            finish_reason="length" if last else None,
            prompt_tokens=len(req.prompt_ids),
            completion_tokens=done_tokens,
            emitted_at=now,
        )

    def _close(self, stream: _Stream) -> None:
        stream.done = True
        self._streams.pop(stream.request.request_id, None)
        self._record(stream)
