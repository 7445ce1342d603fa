"""Issue 18: the harness counts a chat prompt's tokens as the server does, through the model's
chat template, so `prompt_tokens` is the same figure whether a server sends usage or not."""

from __future__ import annotations

import random

import httpx

from harness.launcher import ServerProcess
from harness.loadgen.prompts import BundledPrompts, Conversation, SyntheticPrompts
from harness.loadgen.prompts import LengthDistribution as Lengths
from harness.loadgen.tokens import WhitespaceCounter, default_tokenizer_dir, load_tokenizer


def test_chat_prompt_counts_equal_the_servers_usage(smollm2_worker: ServerProcess) -> None:
    tok = load_tokenizer(str(default_tokenizer_dir()))
    assert tok is not None
    rng = random.Random(3)
    conversation = Conversation(BundledPrompts(tokenizer=tok), tokenizer=tok)
    sources = [BundledPrompts(tokenizer=tok), SyntheticPrompts(Lengths("fixed", 20), tok,
                                                               system="Answer briefly."),
               conversation]
    with httpx.Client(base_url=smollm2_worker.url, timeout=60) as client:
        for source in sources:
            for _ in range(2):
                prompt = source.next(rng)
                answer = client.post("/v1/chat/completions", json={
                    "model": "smollm2", "messages": list(prompt.messages), "max_tokens": 1})
                assert answer.status_code == 200, answer.text
                usage = answer.json()["usage"]["prompt_tokens"]
                assert prompt.chat_tokens == usage, (type(source).__name__, prompt)
                # the template adds role markers (and a default system prompt): never fewer
                assert prompt.tokens is not None and prompt.chat_tokens > prompt.tokens
                if source is conversation:
                    conversation.answered(answer.json()["choices"][0]["message"]["content"])


def test_without_a_template_the_contents_are_counted() -> None:
    counter = WhitespaceCounter()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}]
    assert counter.count_messages(messages) == 5
