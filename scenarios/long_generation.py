"""Long generations: short prompts, long streamed answers (decode-bound load)."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.users import ChatUser

install()


class LongGenerationUser(ChatUser):
    """Asks for long answers (512 tokens unless --max-tokens says otherwise)."""

    weight = 1
    max_tokens = 512
    request_name = "chat-long"
    scenario = "long_generation"
