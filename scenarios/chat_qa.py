"""Short chat Q&A: bundled everyday questions, short streamed answers."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.users import ChatUser

install()


class ChatQAUser(ChatUser):
    """Streams short answers to the bundled (CC0) questions."""

    max_tokens = 32
    request_name = "chat"
    scenario = "chat_qa"
