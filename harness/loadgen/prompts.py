"""Prompt sources, all driven by a seeded `random.Random` passed in.

- `SyntheticPrompts`: text with a token length drawn from a distribution (fixed, uniform,
  normal, lognormal), measured with the target model's tokenizer;
- `BundledPrompts`: the small CC0 set in `prompt_set`;
- `SharedPrefixPrompts`: one long common prefix (a system prompt) and a varying question;
- `Conversation`: a multi-turn chat that grows with every answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import UsageError
from .prompt_set import PROMPTS
from .tokens import TokenCounter, WhitespaceCounter

__all__ = [
    "BundledPrompts",
    "Conversation",
    "LengthDistribution",
    "Prompt",
    "PromptSource",
    "SharedPrefixPrompts",
    "SyntheticPrompts",
]

# Common English words; those that are one token (with their leading space) in the target's
# tokenizer make synthetic text whose length in tokens is exact.
_VOCAB = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "on", "be", "at",
    "by", "this", "from", "or", "an", "are", "not", "can", "all", "one", "will", "more",
    "time", "about", "data", "model", "server", "token", "stream", "request", "system", "test",
    "load", "fault", "world", "light", "water", "city", "river", "music", "paper", "green",
    "blue", "small", "large", "first", "last", "house", "road", "tree", "book", "story",
    "table", "window", "garden", "market", "student", "teacher", "number", "letter", "night",
    "morning", "day", "year", "week", "people", "family", "friend", "country", "state",
    "school", "group", "problem", "fact", "place", "point", "question", "answer", "reason",
    "result", "change", "order", "power", "money", "company", "service", "report", "level",
    "office", "door", "health", "person", "art", "war", "history", "party", "result", "area",
    "hand", "eye", "life", "child",
)


@dataclass(frozen=True)
class Prompt:
    """One request's input: chat messages (or completion text), the tokens of their contents,
    and of the prompt a server builds from them with the model's chat template (`chat_tokens`,
    what its usage counts)."""

    messages: tuple[dict[str, str], ...]
    tokens: int | None = None
    chat_tokens: int | None = None

    @property
    def text(self) -> str:
        """The prompt for the completions API: the messages' contents, joined."""
        return "\n".join(m["content"] for m in self.messages)


class PromptSource(Protocol):
    """Gives the next prompt, using only the RNG it is handed."""

    def next(self, rng: random.Random) -> Prompt: ...


@dataclass(frozen=True)
class LengthDistribution:
    """Token lengths: `fixed:N`, `uniform:LO,HI`, `normal:MEAN,STD`, `lognormal:MEDIAN,SIGMA`."""

    kind: str
    a: float
    b: float = 0.0
    low: int = 1
    high: int = 32768

    @classmethod
    def parse(cls, spec: str) -> LengthDistribution:
        name, _, rest = spec.partition(":")
        if not rest and name.strip().isdigit():
            return cls("fixed", float(name))
        try:
            nums = [float(x) for x in rest.split(",")] if rest else []
        except ValueError as exc:
            raise UsageError(f"prompt length {spec!r}: numbers expected") from exc
        wanted = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2}
        if name not in wanted or len(nums) != wanted[name]:
            raise UsageError(f"prompt length {spec!r}: use fixed:N, uniform:LO,HI, "
                             "normal:MEAN,STD or lognormal:MEDIAN,SIGMA")
        return cls(name, nums[0], nums[1] if len(nums) > 1 else 0.0)

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b + 1)
        elif self.kind == "normal":
            value = rng.gauss(self.a, self.b)
        else:
            value = rng.lognormvariate(_log(self.a), self.b)
        return max(self.low, min(self.high, int(value)))


def _log(x: float) -> float:
    import math

    return math.log(max(x, 1e-9))


class SyntheticPrompts:
    """User messages of exactly N tokens of the target's tokenizer, N drawn per request."""

    def __init__(self, lengths: LengthDistribution, tokenizer: TokenCounter | None,
                 system: str | None = None) -> None:
        self.lengths = lengths
        self.tokenizer = tokenizer or WhitespaceCounter()
        self.system = system
        self.words = [w for w in _VOCAB if self.tokenizer.is_single_token(" " + w)]
        if not self.words:
            raise UsageError(f"tokenizer {self.tokenizer.name} splits every vocabulary word")

    def text(self, n: int, rng: random.Random) -> str:
        """A text of exactly `n` tokens (corrected by measuring, since joins can merge)."""
        words = [rng.choice(self.words) for _ in range(n)]
        text = " " + " ".join(words)
        count = self.tokenizer.count(text)
        while count > n and words:
            words.pop()
            text = " " + " ".join(words)
            count = self.tokenizer.count(text)
        while count < n:
            words.append(rng.choice(self.words))
            text = " " + " ".join(words)
            count = self.tokenizer.count(text)
        return text

    def next(self, rng: random.Random) -> Prompt:
        n = self.lengths.draw(rng)
        messages: list[dict[str, str]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.text(n, rng)})
        return Prompt(tuple(messages), n, self.tokenizer.count_messages(messages))


class BundledPrompts:
    """The bundled CC0 prompts (or any list given), picked at random."""

    def __init__(self, prompts: Sequence[str] = PROMPTS,
                 tokenizer: TokenCounter | None = None) -> None:
        if not prompts:
            raise UsageError("no prompts given")
        self.prompts = list(prompts)
        self.tokenizer = tokenizer

    def next(self, rng: random.Random) -> Prompt:
        text = rng.choice(self.prompts)
        messages = ({"role": "user", "content": text},)
        if self.tokenizer is None:
            return Prompt(messages)
        return Prompt(messages, self.tokenizer.count(text),
                      self.tokenizer.count_messages(messages))


class SharedPrefixPrompts:
    """A fixed system prompt of `prefix_tokens` tokens (same for every request, so a server's
    prefix cache can reuse it) followed by a varying question."""

    def __init__(self, prefix_tokens: int, questions: PromptSource,
                 tokenizer: TokenCounter | None, seed: int = 0) -> None:
        synth = SyntheticPrompts(LengthDistribution("fixed", prefix_tokens), tokenizer)
        self.prefix = "You are a helpful assistant. Context:" + synth.text(
            prefix_tokens, random.Random(f"prefix:{seed}"))
        self.questions = questions
        self.tokenizer = tokenizer

    def next(self, rng: random.Random) -> Prompt:
        question = self.questions.next(rng)
        messages = ({"role": "system", "content": self.prefix}, *question.messages)
        if self.tokenizer is None:
            return Prompt(messages)
        return Prompt(messages, sum(self.tokenizer.count(m["content"]) for m in messages),
                      self.tokenizer.count_messages(messages))


@dataclass
class Conversation:
    """A chat that grows: each turn appends the user's question and the model's answer.

    After `max_turns` answers it starts over, so the history stays bounded.
    """

    questions: PromptSource
    max_turns: int = 4
    tokenizer: TokenCounter | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def next(self, rng: random.Random) -> Prompt:
        if len(self.history) >= 2 * self.max_turns:
            self.history.clear()
        question = self.questions.next(rng)
        self.history.extend(question.messages)
        if self.tokenizer is None:
            return Prompt(tuple(self.history))
        return Prompt(tuple(self.history),
                      sum(self.tokenizer.count(m["content"]) for m in self.history),
                      self.tokenizer.count_messages(self.history))

    def answered(self, text: str) -> None:
        """Record the model's answer to the last question (an empty one if it failed)."""
        self.history.append({"role": "assistant", "content": text})

    def retract(self) -> None:
        """Forget the last question (it got no answer), so roles keep alternating."""
        if self.history and self.history[-1]["role"] == "user":
            self.history.pop()
