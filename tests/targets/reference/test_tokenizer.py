"""The worker's own tokenizer agrees with transformers' on encode, decode and chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from targets.reference.models import ensure_smollm2_folder
from targets.reference.tokenizer import FastTokenizer

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why? 日本語 🙂"}],
]


@pytest.mark.parametrize("chat", CHATS)
def test_matches_transformers(chat: list[dict[str, str]]) -> None:
    folder = ensure_smollm2_folder()
    ours, theirs = FastTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    for gen in (True, False):
        text = ours.apply_chat_template(chat, add_generation_prompt=gen)
        assert text == theirs.apply_chat_template(chat, add_generation_prompt=gen,
                                                  tokenize=False)
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
            ids, skip_special_tokens=True)
        assert ours.decode(ids) == theirs.decode(ids)
    assert ours.eos_token_id == theirs.eos_token_id
    assert len(ours) == len(theirs)
