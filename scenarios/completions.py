"""Text completions (`/v1/completions`), streamed, with a shared system-style prefix."""

from __future__ import annotations

from harness.loadgen.plugin import install
from harness.loadgen.prompts import BundledPrompts, PromptSource, SharedPrefixPrompts
from harness.loadgen.users import CompletionUser

install()


class CompletionsUser(CompletionUser):
    """Completions of a 256-token shared prefix plus a question (exercises prefix caches)."""

    opt_in = True  # chat-only servers reject /v1/completions: run with --completions
    max_tokens = 32
    request_name = "completion"
    scenario = "completions"

    def prompt_source(self) -> PromptSource:
        tok = self.loadgen.tokenizer
        return SharedPrefixPrompts(256, BundledPrompts(tokenizer=tok), tok, self.loadgen.seed)
