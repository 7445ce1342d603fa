"""Locust users of `llm-chaos bench client`: ours and the common `iter_content` baseline.

A locustfile (Locust loads it as a top-level module, so its imports are absolute).

Run one at a time: `locust -f harness/loadgen/calibration.py CalibrationUser ...` or
`... IterContentBaselineUser ...`. Both ask for `--max-tokens` tokens per streamed chat and
leave one history record per request, so the benchmark compares them the same way.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from locust import HttpUser, constant, task

from harness.loadgen.client import Outcome, extract_text
from harness.loadgen.plugin import install, state
from harness.loadgen.records import PendingRecord
from harness.loadgen.users import ChatUser

__all__ = ["CalibrationUser", "IterContentBaselineUser"]

install()


class CalibrationUser(ChatUser):
    """Our user: streamed chats of --max-tokens tokens (32 by default)."""

    max_tokens = 32
    scenario = "calibration"


class IterContentBaselineUser(HttpUser):
    """How people stream from Locust today: HttpUser + `iter_content`, a clock read per chunk."""

    wait_time = constant(0)

    @task
    def chat(self) -> None:
        st = state(self.environment)
        opts = self.environment.parsed_options
        max_tokens: int = getattr(opts, "max_tokens", None) or 32
        body = {"model": st.model or "sim", "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
        rid = str(uuid.uuid4())
        out = Outcome(rid, sent_mono=time.monotonic())
        st.started += 1
        with self.client.post("/v1/chat/completions", json=body, stream=True,
                              headers={"X-Request-Id": rid}, name="chat",
                              catch_response=True) as resp:
            out.http_status = resp.status_code
            buf = b""
            for chunk in resp.iter_content(chunk_size=None):
                now = time.monotonic()
                buf += chunk
                while b"\n\n" in buf:
                    raw, buf = buf.split(b"\n\n", 1)
                    self._event(raw, now, out)
            out.end_mono = out.end_mono or time.monotonic()
            if out.finish_reason is None:
                out.fail("truncated", "no finish_reason")
                resp.failure("truncated")
        st.add(PendingRecord(out, "baseline", "chat", f"{st.process_name()}:b", st.phase, None,
                             None, time.time() - time.monotonic(),
                             max_tokens=max_tokens))

    @staticmethod
    def _event(raw: bytes, now: float, out: Outcome) -> None:
        data = raw.decode().removeprefix("data: ").strip()
        out.events += 1
        if data == "[DONE]":
            out.done_seen = True
            out.end_mono = now
            return
        payload: Any = json.loads(data)
        for choice in payload.get("choices") or []:
            text = extract_text(choice)
            if text:
                out.content_times.append(now)
                out.pieces.append(text)
            if choice.get("finish_reason"):
                out.finish_reason = choice["finish_reason"]
        usage = payload.get("usage")
        if isinstance(usage, dict):
            out.usage_completion = usage.get("completion_tokens")
            out.usage_prompt = usage.get("prompt_tokens")
