"""Issue 18: user prompt sets (`--dataset`): JSON Lines and ShareGPT files, token lengths by
the tokenizer, seeded draws, and a bad line named by its number."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.launcher import ServerProcess
from harness.loadgen.datasets import DatasetPrompts, load_dataset
from harness.loadgen.tokens import default_tokenizer_dir, load_tokenizer

from .conftest import LOCUSTFILES, RunLocust


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_takes_strings_prompts_and_chats(tmp_path: Path) -> None:
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]
    path = _write(tmp_path, "p.jsonl", "\n".join([
        json.dumps("What is a load balancer?"), "",
        json.dumps({"prompt": "Name three rivers.", "output_tokens": 20}),
        json.dumps({"messages": chat})]) + "\n")
    assert load_dataset(path) == [
        ({"role": "user", "content": "What is a load balancer?"},),
        ({"role": "user", "content": "Name three rivers."},),
        tuple(chat)]


def test_sharegpt_takes_each_conversation_up_to_its_first_human_turn(tmp_path: Path) -> None:
    entries = [
        {"id": "a", "conversations": [{"from": "human", "value": "Hi, who are you?"},
                                      {"from": "gpt", "value": "An assistant."}]},
        {"id": "b", "conversations": [{"from": "system", "value": "You are terse."},
                                      {"from": "human", "value": "Sum 2 and 2."},
                                      {"from": "gpt", "value": "4"}]},
        {"id": "c", "conversations": [{"from": "gpt", "value": "no human turn: skipped"}]},
    ]
    path = _write(tmp_path, "sharegpt.json", json.dumps(entries))
    assert load_dataset(path) == [
        ({"role": "user", "content": "Hi, who are you?"},),
        ({"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Sum 2 and 2."})]


@pytest.mark.parametrize(("text", "says"), [
    ('"fine"\n{"prompt": 3}\n', "line 2: expected a JSON string"),
    ('"fine"\n"also fine"\n{not json\n', "line 3: not valid JSON"),
    ('{"messages": [{"role": "user"}]}\n', "line 1: messages[0] must be"),
    ('[{"conversations": [{"from": "robot", "value": "x"}]}]', "entry 0: conversations[0]"),
    ('[{"turns": []}]', "entry 0: a ShareGPT entry needs `conversations`"),
    ("\n\n", "no prompt in it"),
    ('["unterminated"', "not valid JSON"),
])
def test_a_bad_file_names_what_and_where(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace("[", r"\[").replace("]", r"\]")):
        load_dataset(_write(tmp_path, "bad.jsonl", text))
    with pytest.raises(UsageError, match="cannot read it"):
        load_dataset(tmp_path / "missing.jsonl")


def test_draws_are_seeded_and_measured_by_the_tokenizer(tmp_path: Path) -> None:
    tok = load_tokenizer(str(default_tokenizer_dir()))
    assert tok is not None
    lines = [json.dumps(f"Question number {i}: what is {i} squared?") for i in range(50)]
    source = DatasetPrompts(_write(tmp_path, "q.jsonl", "\n".join(lines)), tok)
    first = [source.next(random.Random(7)).messages for _ in range(3)]
    assert first[0] == first[1] == first[2]  # same seed, same prompt
    drawn = [source.next(random.Random(seed)) for seed in range(20)]
    assert len({p.messages[0]["content"] for p in drawn}) > 10
    for prompt in drawn:
        assert prompt.tokens == tok.count(prompt.messages[0]["content"])
        assert prompt.chat_tokens == tok.count_messages(prompt.messages) > prompt.tokens


def test_locust_sends_the_dataset_and_records_server_comparable_counts(
        sim_worker: ServerProcess, run_locust: RunLocust, tmp_path: Path) -> None:
    tok = load_tokenizer(str(default_tokenizer_dir()))
    assert tok is not None
    chats = [[{"role": "user", "content": f"Tell me fact number {i} about rivers."}]
             for i in range(5)]
    path = _write(tmp_path, "chats.jsonl", "\n".join(json.dumps({"messages": m}) for m in chats))
    run = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "2", "-r",
                     "2", "-t", "2s", "--host", sim_worker.url, "--model", "sim",
                     "--dataset", str(path))
    assert run.code == 0, run.output[-3000:]
    records = [r["value"] for r in run.records() if r["value"]["status"] == "ok"]
    assert len(records) > 5
    # each request was one of the file's chats, counted through the chat template
    allowed = {tok.count_messages(m) for m in chats}
    assert {r["prompt_tokens_client"] for r in records} <= allowed, allowed

    bad = _write(tmp_path, "bad.jsonl", '{"prompt": "ok"}\n{"prompt": 42}\n')
    refused = run_locust("-f", str(LOCUSTFILES / "plain_chat.py"), "--headless", "-u", "1",
                         "-t", "1s", "--host", sim_worker.url, "--model", "sim",
                         "--dataset", str(bad))
    assert refused.code == 2 and "line 2" in refused.output, refused.output[-2000:]
