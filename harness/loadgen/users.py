"""Abstract Locust users for OpenAI chat and completions, streaming or not.

Every request carries a fresh UUID in `X-Request-Id`, leaves one history record, and fires one
Locust request event, `<name>`: end-to-end time, output tokens as `response_length`. So Locust's
Aggregated row counts each request once; TTFT, ITL, TPOT and tokens/s go into the LLM table
(`llm_stats`), built from the records. Percentiles in our own reports come from the raw records,
not Locust's rounded histogram.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

import gevent
from locust import User, constant, task
from locust.exception import StopUser

from ..errors import UsageError
from .client import Outcome, Request, StreamClient, discover_model
from .plugin import LoadgenState, fail_run, run_in_thread, state
from .prompts import (
    BundledPrompts,
    Conversation,
    LengthDistribution,
    Prompt,
    PromptSource,
    SyntheticPrompts,
)
from .records import PendingRecord

__all__ = ["ChatUser", "CompletionUser", "LLMRequestError", "LLMUser", "MultiTurnChatUser"]


class LLMRequestError(Exception):
    """A failed LLM request, as Locust shows it: the record's status and error text."""


class LLMUser(User):
    """Base of the LLM users: one keep-alive connection, seeded prompts, records, events.

    Subclasses set `api` (chat / completions), `stream`, `max_tokens`, `request_name`, and
    override `prompt_source()` or `next_prompt()`.
    """

    abstract = True
    api: ClassVar[str] = "chat"
    stream: ClassVar[bool] = True
    max_tokens: ClassVar[int | None] = 64
    request_name: ClassVar[str] = "chat"
    scenario: ClassVar[str | None] = None
    prompt_tokens: ClassVar[str | None] = None
    extra_body: ClassVar[dict[str, Any]] = {}
    # In closed loop, wait as long as a 429's Retry-After asks (at most this many seconds)
    # before the next request, as a well-behaved client would; 0 turns it off.
    max_retry_after: ClassVar[float] = 30.0
    # Left out of a run that does not ask for it (`--completions`, or the class named on the
    # command line) when other users are there: for APIs that many servers lack.
    opt_in: ClassVar[bool] = False
    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.loadgen: LoadgenState = state(environment)
        self.rng, self.user_index = self.loadgen.user_rng(type(self).__name__)
        opts = environment.parsed_options
        timeout = getattr(opts, "request_timeout", 300.0) if opts is not None else 300.0
        st = self.loadgen
        self.client = StreamClient(self.host or "", timeout=timeout, headers=st.headers,
                                   api_key=st.api_key, tls=st.tls)
        self.prompts: PromptSource = self.prompt_source()

    # -- what to send ---------------------------------------------------------------------

    def prompt_source(self) -> PromptSource:
        """Where prompts come from: the user's --dataset, synthetic lengths when asked for,
        else the bundled set."""
        if self.loadgen.dataset is not None:
            return self.loadgen.dataset
        spec = self._option("prompt_tokens") or self.prompt_tokens
        if spec:
            return SyntheticPrompts(LengthDistribution.parse(spec), self.loadgen.tokenizer)
        return BundledPrompts(tokenizer=self.loadgen.tokenizer)

    def next_prompt(self) -> Prompt:
        return self.prompts.next(self.rng)

    def body(self, prompt: Prompt, max_tokens: int | None) -> dict[str, Any]:
        """The JSON body of one request (usage asked for, so output tokens come from it)."""
        body: dict[str, Any] = {"model": self._model()}
        if self.api == "chat":
            body["messages"] = [dict(m) for m in prompt.messages]
        else:
            body["prompt"] = prompt.text
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        body["stream"] = self.stream
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    # -- the task -------------------------------------------------------------------------

    @task
    def generate(self) -> None:
        self.request(self.next_prompt())

    def request(self, prompt: Prompt, max_tokens: int | None = None) -> Outcome:
        """Send one request (waiting for its open-loop slot first); record it; return it."""
        st = self.loadgen
        scheduled = None
        if st.arrivals is not None:
            now = self.client.clock()
            scheduled = st.arrivals.next_due(now)
            if scheduled > now:
                gevent.sleep(scheduled - now)
        limit = max_tokens or self._option("max_tokens") or self.max_tokens
        req = Request(self.api, self.body(prompt, limit), str(uuid.uuid4()))
        st.started += 1
        sent: list[Outcome] = []
        try:
            out = self.client.send(req, started=sent.append)
        except gevent.GreenletExit:
            # The user is being stopped mid-request: the outcome is unknown (Jepsen `info`).
            if sent:
                cut = sent[0]
                cut.end_mono = self.client.clock()
                st.add(self._pending(cut.fail("interrupted", "user stopped mid-request"),
                                     prompt, scheduled, req))
            raise
        counted = self._count_tokens(out)
        st.add(self._pending(out, prompt, scheduled, req, counted))
        self._fire(out, out.usage_completion if out.usage_completion is not None else counted)
        if out.retry_after and st.arrivals is None and self.max_retry_after > 0:
            gevent.sleep(min(out.retry_after, self.max_retry_after))
        return out

    # -- helpers --------------------------------------------------------------------------

    def _pending(self, out: Outcome, prompt: Prompt, scheduled: float | None, req: Request,
                 counted: int | None = None) -> PendingRecord:
        st = self.loadgen
        limit = req.body.get("max_tokens", req.body.get("max_completion_tokens"))
        return PendingRecord(
            outcome=out, scenario=self.scenario or type(self).__name__, api=self.api,
            process=f"{st.process_name()}:{self.user_index}", phase=st.phase,
            # as the server counts it: a chat through the model's template
            scheduled_mono=scheduled, prompt_tokens_client=(
                prompt.chat_tokens if self.api == "chat" and prompt.chat_tokens is not None
                else prompt.tokens),
            wall_offset=_wall_offset(), output_tokens_counted=counted,
            max_tokens=limit if isinstance(limit, int) and not isinstance(limit, bool) else None)

    def _count_tokens(self, out: Outcome) -> int | None:
        """The tokenizer's count of the answer, only when the server sent no usage (the record
        would count it later anyway; counted here it is also Locust's `response_length`)."""
        tokenizer = self.loadgen.tokenizer
        if out.usage_completion is not None or tokenizer is None:
            return None
        text = out.text
        # a real thread: tokenizing never stalls the other users' event loop
        return tokenizer.count(text) if not text else run_in_thread(tokenizer.count, text)

    def _fire(self, out: Outcome, output_tokens: int | None) -> None:
        e2e_ms = (out.end_mono - out.sent_mono) * 1000.0
        exc = None if out.ok else LLMRequestError(f"{out.status}: {out.error}")
        ctx = {"request_id": out.request_id, "status": out.status}
        self.environment.events.request.fire(
            request_type="POST", name=self.request_name, response_time=e2e_ms,
            response_length=output_tokens or 0, exception=exc, context=ctx)

    def _option(self, name: str) -> Any:
        opts = self.environment.parsed_options
        return getattr(opts, name, None) if opts is not None else None

    def _model(self) -> str:
        st = self.loadgen
        if not st.model and st.discovery_error is None:
            with st.discovery_lock:  # one GET /v1/models per process, the other users wait
                if not st.model and st.discovery_error is None:
                    try:
                        st.model = discover_model(self.client)
                    except UsageError as exc:
                        # a guessed model name would only turn into a run of failed requests
                        st.discovery_error = str(exc)
                        fail_run(self.environment, st.discovery_error)
        if not st.model:
            raise StopUser()
        return st.model

    def on_stop(self) -> None:
        self.client.close()


class ChatUser(LLMUser):
    """Streaming chat completions (`/v1/chat/completions`)."""

    abstract = True
    api = "chat"


class CompletionUser(LLMUser):
    """Streaming text completions (`/v1/completions`)."""

    abstract = True
    api = "completions"
    request_name = "completion"


class MultiTurnChatUser(ChatUser):
    """A chat that grows: each question is sent with the conversation so far."""

    abstract = True
    max_turns: ClassVar[int] = 4

    def prompt_source(self) -> PromptSource:
        return Conversation(super().prompt_source(), self.max_turns, self.loadgen.tokenizer)

    @task
    def generate(self) -> None:
        conv = self.prompts
        out = self.request(self.next_prompt())
        if isinstance(conv, Conversation):
            if out.ok:
                conv.answered(out.text)
            else:
                conv.retract()


_OFFSET: list[float] = []


def _wall_offset() -> float:
    # One offset per process: every record's epoch times come from the monotonic clock + this.
    if not _OFFSET:
        _OFFSET.append(time.time() - time.monotonic())
    return _OFFSET[0]
