"""Multi-turn chat: each question is sent with the whole conversation so far."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.users import MultiTurnChatUser

install()


class MultiTurnUser(MultiTurnChatUser):
    """Conversations of up to four turns, then a fresh one."""

    max_tokens = 48
    max_turns = 4
    request_name = "chat-multiturn"
    scenario = "multi_turn"
