"""Locustfile of the truth test: 32-token streamed chats against the simulated engine."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.users import ChatUser

install()


class TruthUser(ChatUser):
    """Every request asks for exactly 32 tokens."""

    max_tokens = 32
    request_name = "chat"
    scenario = "truth"
