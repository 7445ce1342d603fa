"""Mixed sizes: synthetic prompts with lognormal token lengths (measured with the tokenizer)."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.users import ChatUser

install()


class MixedSizesUser(ChatUser):
    """Prompts of lognormal length (median 128 tokens) and medium answers."""

    max_tokens = 64
    prompt_tokens = "lognormal:128,0.8"
    request_name = "chat-mixed"
    scenario = "mixed_sizes"
