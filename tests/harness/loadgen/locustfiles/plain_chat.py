"""Locustfile of the tests: streamed chats of 8 tokens, closed or open loop per the options."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.users import ChatUser

install()


class PlainChatUser(ChatUser):
    """Short streamed chats."""

    max_tokens = 8
    request_name = "chat"
    scenario = "plain"
