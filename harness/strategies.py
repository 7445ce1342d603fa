"""Hypothesis strategies for OpenAI request bodies and experiment files: valid ones, and ones
invalid by construction.

`chat_bodies` and `completion_bodies` draw bodies that any OpenAI-compatible server accepts.
`bad_requests` draws raw request bodies that any such server must refuse with a 4xx: a valid
body with one to three of its fields broken (wrong type, out of range, missing, unknown model,
prompt over the context length), or a body that is not a JSON object at all. Each case says
what was broken, so a failure reads as a reproducer.

Only the OpenAI API's own rules make a body invalid here (no server's extensions or limits),
so the same strategies can fuzz the reference worker, the router or another server.

`experiment_documents` draws valid experiment files (as data); `broken_experiments` draws files
that `harness.experiment.load_experiment` must refuse, each with the field path (or YAML
problem) its error message must name.

`fault_entries`, `fault_schedules` and `load_profiles` draw the `faults:` and `load:` sections
that `llm-chaos explore` searches: times on a grid relative to the load's start (so a schedule
replays), overlapping windows, random victims (the run's seeded RNG picks them) or named ones,
and a blast radius; they shrink towards fewer, earlier, shorter faults of the first kinds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar, cast

from hypothesis import strategies as st

__all__ = [
    "CHAT_PATH",
    "COMPLETION_PATH",
    "SCHEDULE_KINDS",
    "BadRequest",
    "BrokenExperiment",
    "Json",
    "JsonObject",
    "bad_requests",
    "broken_experiments",
    "chat_bodies",
    "chat_messages",
    "completion_bodies",
    "experiment_documents",
    "fault_entries",
    "fault_schedules",
    "json_values",
    "load_profiles",
]

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None
JsonObject = dict[str, Json]

_T = TypeVar("_T")

CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"

_ROLES = ("system", "user", "assistant", "developer", "tool")
_WORDS = ("the", "river", "model", "token", "blue", "server", "of", "and", "fault", "light")


@dataclass(frozen=True)
class BadRequest:
    """A request body a server must refuse with a 4xx, and what makes it invalid."""

    path: str
    content: bytes
    reason: str
    fields: frozenset[str]
    """Top-level fields that were broken; empty when the body as a whole is invalid."""

    def __repr__(self) -> str:
        shown = self.content if len(self.content) <= 300 else self.content[:300] + b"..."
        return f"BadRequest({self.path}, {self.reason}, {shown!r})"


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Json]:
    """Any JSON value (no NaN or infinities), nested a few levels."""
    leaves: st.SearchStrategy[Json] = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=4),
        max_leaves=max_leaves,
    )


def chat_messages() -> st.SearchStrategy[list[Json]]:
    """A valid `messages` list: optional system message, then user/assistant turns."""
    content = st.text(max_size=60)
    turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                  "content": content})
    system = st.fixed_dictionaries({"role": st.just("system"), "content": content})
    last = st.fixed_dictionaries({"role": st.just("user"), "content": content})
    return st.builds(lambda s, t, u: [*s, *t, u], st.lists(system, max_size=1),
                     st.lists(turn, max_size=2), last)


def _sampling_fields(max_tokens: int) -> dict[str, st.SearchStrategy[Json]]:
    # Every value valid in OpenAI's API reference.
    return {
        "max_tokens": st.integers(1, max_tokens),
        "temperature": st.floats(0.0, 2.0),
        "top_p": st.floats(0.01, 1.0),
        "n": st.just(1),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": st.text(min_size=1, max_size=5)
        | st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4),
        "seed": st.integers(0, 2**31 - 1),
        "user": st.text(max_size=10),
    }


def chat_bodies(model: str, max_tokens: int = 16) -> st.SearchStrategy[JsonObject]:
    """Valid `/v1/chat/completions` bodies for `model`."""
    optional = {**_sampling_fields(max_tokens),
                "max_completion_tokens": st.integers(1, max_tokens)}
    return st.fixed_dictionaries({"model": st.just(model), "messages": chat_messages()},
                                 optional=optional)


def completion_bodies(model: str, max_tokens: int = 16) -> st.SearchStrategy[JsonObject]:
    """Valid `/v1/completions` bodies for `model`."""
    prompt: st.SearchStrategy[Json] = (
        st.text(max_size=60) | st.lists(st.text(max_size=60), min_size=1, max_size=1))
    return st.fixed_dictionaries({"model": st.just(model), "prompt": prompt},
                                 optional=_sampling_fields(max_tokens))


# -- breaking a body ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Break:
    """One way to make a valid body invalid: the field it touches, why, and the change."""

    field: str
    reason: str
    apply: Callable[[JsonObject], None]


def _set(field: str, reason: str, value: Json) -> _Break:
    def apply(body: JsonObject) -> None:
        body[field] = value

    return _Break(field, reason, apply)


def _wrong_type(field: str, *kinds: str) -> st.SearchStrategy[_Break]:
    """A value of none of the JSON types `kinds` (names as in `json_type`)."""
    pool: dict[str, st.SearchStrategy[Json]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "integer": st.integers(-(2**70), 2**70),
        "fraction": st.builds(lambda i, f: i + f, st.integers(-(10**6), 10**6),
                              st.sampled_from([0.5, 0.25, 0.001])),
        "string": st.text(max_size=10),
        "array": st.lists(json_values(3), max_size=3),
        "object": st.dictionaries(st.text(max_size=5), json_values(3), max_size=3),
    }
    if "number" in kinds:
        kinds = (*kinds, "integer", "fraction")
    wrong = [strategy for name, strategy in pool.items() if name not in kinds]
    return st.one_of(wrong).map(
        lambda v: _set(field, f"{field}: wrong type {type(v).__name__} {_short(v)}", v))


def _short(value: Json) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _value(field: str, reason: str, values: st.SearchStrategy[Json]) -> st.SearchStrategy[_Break]:
    return values.map(lambda v: _set(field, f"{field}: {reason} {_short(v)}", v))


def _missing(field: str) -> st.SearchStrategy[_Break]:
    def apply(body: JsonObject) -> None:
        body.pop(field, None)

    return st.just(_Break(field, f"{field}: missing", apply))


def _limit_breaks(field: str, max_model_len: int) -> st.SearchStrategy[_Break]:
    over = st.integers(max_model_len + 1, 10**30)

    def too_many(value: int) -> _Break:
        def apply(body: JsonObject) -> None:
            body[field] = value
            other = body.get("max_completion_tokens")
            if field == "max_tokens" and isinstance(other, int) and 1 <= other <= max_model_len:
                # A valid max_completion_tokens takes precedence over max_tokens in chat: drop
                # it so that the huge value is the one that counts.
                del body["max_completion_tokens"]

        return _Break(field, f"{field}: {value} is more than the context length", apply)

    return st.one_of(
        _wrong_type(field, "integer", "null"),
        _value(field, "not positive", st.integers(-(2**70), 0)),
        over.map(too_many),
    )


def _model_breaks(model: str) -> st.SearchStrategy[_Break]:
    return st.one_of(
        _value("model", "unknown model", st.text(max_size=30).filter(lambda m: m != model)),
        _wrong_type("model", "string"),
        _missing("model"),
    )


def _sampling_breaks() -> st.SearchStrategy[_Break]:
    return st.one_of(
        _wrong_type("temperature", "number", "null"),
        _value("temperature", "out of [0, 2]",
               st.floats(max_value=-1e-9) | st.floats(min_value=2.000001) | st.just(float("nan"))),
        _wrong_type("top_p", "number", "null"),
        _value("top_p", "out of [0, 1]",
               st.floats(max_value=-1e-9) | st.floats(min_value=1.000001)),
        _wrong_type("n", "integer", "null"),
        _value("n", "not positive", st.integers(-(2**70), 0)),
        _wrong_type("stream", "boolean", "null"),
        _wrong_type("stream_options", "object", "null"),
        _value("stream_options", "include_usage not a boolean",
               st.fixed_dictionaries({"include_usage": st.integers() | st.text(max_size=5)})),
        _wrong_type("seed", "integer", "null"),
        _value("seed", "outside 64 bits",
               st.integers(2**64, 2**80) | st.integers(-(2**80), -(2**63) - 1)),
    )


def _stop_breaks() -> st.SearchStrategy[_Break]:
    bad_item: st.SearchStrategy[Json] = (
        st.none() | st.booleans() | st.integers() | st.lists(st.text(max_size=3), max_size=2)
    )
    return st.one_of(
        _wrong_type("stop", "string", "array", "null"),
        _value("stop", "more than 4 sequences",
               st.lists(st.text(min_size=1, max_size=3), min_size=5, max_size=12)),
        _value("stop", "an entry that is not a string",
               st.builds(lambda good, bad, at: [*good[:at], bad, *good[at:]],
                         st.lists(st.text(min_size=1, max_size=3), max_size=2), bad_item,
                         st.integers(0, 2))),
    )


def _oversized(field: str, max_model_len: int,
               wrap: Callable[[str], Json]) -> st.SearchStrategy[_Break]:
    """A prompt of at least `max_model_len` words: over the context in any tokenizer."""
    # Sizes: just over the context, far over it, and a body over 9 MiB (past any size limit).
    words = st.one_of(st.integers(max_model_len, 2 * max_model_len),
                      st.just(64 * max_model_len), st.just(9 * 2**20 // 5))

    def build(count: int, start: int) -> _Break:
        text = " ".join(itertools.islice(itertools.cycle(_WORDS), start, start + count))
        return _set(field, f"{field}: prompt of {count} words, context is {max_model_len} tokens",
                    wrap(text))

    return st.builds(build, words, st.integers(0, len(_WORDS) - 1))


def _message_breaks() -> st.SearchStrategy[_Break]:
    def into_messages(reason: str, bad: st.SearchStrategy[Json]) -> st.SearchStrategy[_Break]:
        # The bad message replaces one of a valid list's messages, or is added to it.
        def build(good: list[Json], item: Json, at: int, replace: bool) -> _Break:
            at = at % (len(good) + 1)
            messages = [*good[:at], item, *good[at + int(replace):]]
            return _set("messages", f"messages[{at}]: {reason} {_short(item)}", messages)

        return st.builds(build, chat_messages(), bad, st.integers(0, 3), st.booleans())

    content = st.text(max_size=20)
    known_part_types = {"text", "image_url", "input_audio", "file", "refusal"}
    bad_part: st.SearchStrategy[Json] = st.one_of(
        st.just({"type": "text"}),
        st.fixed_dictionaries({"type": st.just("text"), "text": st.none() | st.integers()
                               | st.lists(st.text(max_size=3), max_size=2)}),
        st.fixed_dictionaries({"type": st.text(max_size=8).filter(
            lambda t: t not in known_part_types), "text": st.text(max_size=5)}),
        st.none() | st.integers() | st.text(max_size=5),
    )
    return st.one_of(
        _missing("messages"),
        _wrong_type("messages", "array"),
        st.just(_set("messages", "messages: empty list", [])),
        into_messages("not an object", st.none() | st.integers() | st.text(max_size=5)
                      | st.lists(st.text(max_size=3), max_size=2)),
        into_messages("no role", st.fixed_dictionaries({"content": content})),
        into_messages("unknown role", st.fixed_dictionaries({
            "role": st.text(max_size=10).filter(lambda r: r not in _ROLES), "content": content})),
        into_messages("role not a string", st.fixed_dictionaries({
            "role": st.none() | st.integers() | st.lists(st.just("user"), max_size=1),
            "content": content})),
        into_messages("user message without content", st.just({"role": "user"})),
        into_messages("content of the wrong type", st.fixed_dictionaries({
            "role": st.sampled_from(["user", "system"]),
            "content": st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)})),
        into_messages("bad content part", st.fixed_dictionaries({
            "role": st.just("user"),
            "content": st.lists(bad_part, min_size=1, max_size=2)})),
    )


def _prompt_breaks() -> st.SearchStrategy[_Break]:
    short: st.SearchStrategy[Json] = st.text(max_size=3)
    not_text: st.SearchStrategy[Json] = (
        st.none() | st.dictionaries(st.text(max_size=3), short, max_size=2)
        | st.lists(st.text(max_size=3), min_size=1, max_size=1)
    )
    return st.one_of(
        _missing("prompt"),
        _wrong_type("prompt", "string", "array"),
        _value("prompt", "a list with an entry that is neither text nor a token",
               st.builds(lambda good, bad: [*good, bad], st.lists(st.text(max_size=5), max_size=2),
                         not_text)),
    )


def _broken_body(path: str, valid: st.SearchStrategy[JsonObject],
                 breaks: st.SearchStrategy[_Break]) -> st.SearchStrategy[BadRequest]:
    # One to three breaks of distinct fields: any one of them makes the body invalid.
    chosen = st.lists(breaks, min_size=1, max_size=3, unique_by=lambda b: b.field)

    def build(body: JsonObject, changes: list[_Break]) -> BadRequest:
        for change in changes:
            change.apply(body)
        return BadRequest(path, json.dumps(body).encode(), "; ".join(c.reason for c in changes),
                          frozenset(c.field for c in changes))

    return st.builds(build, valid, chosen)


def _not_an_object(path: str,
                   valid: st.SearchStrategy[JsonObject]) -> st.SearchStrategy[BadRequest]:
    """Bodies that are not one JSON object: bad bytes, other JSON values, cut or nested bodies."""

    def raw(reason: str, content: bytes) -> BadRequest:
        return BadRequest(path, content, reason, frozenset())

    def not_json(data: bytes) -> bool:
        try:
            json.loads(data)
        except (ValueError, RecursionError):
            return True
        return False

    def truncated(body: JsonObject, cut: int) -> BadRequest:
        text = json.dumps(body).encode()
        return raw(f"body cut after {cut % len(text)} bytes", text[: cut % len(text)])

    def lone_surrogate(body: JsonObject, at: int) -> BadRequest:
        # `\ud800` alone is not a Unicode character (RFC 8259 section 8.2; I-JSON forbids it).
        text = "hi"[: at % 3] + "\ud800"
        if "messages" in body:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        return raw("a lone surrogate escape in a string", json.dumps(body).encode())

    return st.one_of(
        st.binary(max_size=64).filter(not_json).map(lambda b: raw("bytes that are not JSON", b)),
        st.builds(truncated, valid, st.integers(0, 10**6)),
        valid.map(lambda b: raw("trailing bytes after the object", json.dumps(b).encode() + b"}x")),
        valid.map(lambda b: raw("invalid UTF-8 in the body",
                                json.dumps(b).encode().replace(b'"model"', b'"mod\xffel"', 1))),
        json_values().filter(lambda v: not isinstance(v, dict)).map(
            lambda v: raw(f"JSON {type(v).__name__}, not an object", json.dumps(v).encode())),
        valid.map(lambda b: raw("a list holding a valid body", json.dumps([b]).encode())),
        st.integers(2_000, 200_000).map(
            lambda depth: raw(f"arrays nested {depth} deep", b"[" * depth + b"]" * depth)),
        st.builds(lone_surrogate, valid, st.integers(0, 3)),
    )


def bad_requests(model: str, max_model_len: int) -> st.SearchStrategy[BadRequest]:
    """Requests to both endpoints that an OpenAI-compatible server serving `model` must refuse."""
    chat = chat_bodies(model)
    completion = completion_bodies(model)
    # The first group is drawn most often (Hypothesis favours the first choice), so it is the
    # one with the most variants.
    chat_breaks = _groups(
        _sampling_breaks(),
        st.one_of(_limit_breaks("max_tokens", max_model_len),
                  _limit_breaks("max_completion_tokens", max_model_len)),
        _model_breaks(model),
        _stop_breaks(),
        _message_breaks(),
        _oversized("messages", max_model_len, lambda text: [{"role": "user", "content": text}]),
    )
    completion_breaks = _groups(
        _sampling_breaks(),
        _limit_breaks("max_tokens", max_model_len),
        _model_breaks(model),
        _stop_breaks(),
        _prompt_breaks(),
        _oversized("prompt", max_model_len, lambda text: text),
    )
    return _groups(
        _broken_body(CHAT_PATH, chat, chat_breaks),
        _broken_body(COMPLETION_PATH, completion, completion_breaks),
        _groups(_not_an_object(CHAT_PATH, chat), _not_an_object(COMPLETION_PATH, completion)),
    )


def _groups(*groups: st.SearchStrategy[_T]) -> st.SearchStrategy[_T]:
    """One of `groups`, each as likely as the others however many variants it holds."""
    # st.one_of flattens nested one_ofs (mapped ones too) into one list of branches, where a
    # group of twenty variants would crowd out a group of three; flatmap keeps each group whole.
    return st.sampled_from(groups).flatmap(_same)


def _same(strategy: st.SearchStrategy[_T]) -> st.SearchStrategy[_T]:
    return strategy


# -- experiment files --------------------------------------------------------------------------

_FAULT_WORDS = ("process-kill", "process-pause", "admin-latency", "admin-error_rate",
                "network-latency", "host-cpu-hog")


def _fault_entry(duration: float) -> st.SearchStrategy[JsonObject]:
    def build(kind: str, at: float, hold: float, every: float | None) -> JsonObject:
        entry: JsonObject = {"kind": kind, "at": at, "for": hold}
        if every is not None:
            entry["every"] = hold + every
        if kind == "admin-latency":
            entry["params"] = {"latency_s": 0.2}
        elif kind == "network-latency":
            entry["attributes"] = {"latency": 100, "jitter": 10}
        elif kind == "process-kill":
            entry["count"] = 1
        return entry

    return st.builds(build, st.sampled_from(_FAULT_WORDS),
                     st.floats(0, duration * 0.9, allow_nan=False),
                     st.floats(0.1, 30, allow_nan=False),
                     st.none() | st.floats(0, 30, allow_nan=False))


def experiment_documents() -> st.SearchStrategy[JsonObject]:
    """Valid experiment files, as the data their YAML holds."""
    target = st.fixed_dictionaries(
        {"model": st.sampled_from(["sim", "tiny", "smollm2"])},
        optional={"workers": st.integers(1, 4), "max_workers": st.integers(4, 8),
                  "resume_streams": st.booleans(), "audit_log": st.booleans(),
                  "memory_limit_mb": st.integers(64, 4096)})
    duration = st.one_of(st.integers(5, 600).map(float),
                         st.sampled_from(["30s", "2m", "90s"]))

    def build(target_: JsonObject, length: Json, load_extra: JsonObject,
              faults: list[JsonObject], top: JsonObject) -> JsonObject:
        return {**top, "target": target_, "load": {"duration": length, **load_extra},
                "faults": list[Json](faults)}

    seconds = 5.0  # the shortest duration drawn: every fault's `at` must be before it
    load_extra = st.fixed_dictionaries({}, optional={
        "users": st.integers(1, 32), "spawn_rate": st.floats(0.5, 10),
        "shape": st.sampled_from(["steady", "ramp", "step", "spike"]),
        "locustfile": st.sampled_from(["scenarios/chat_qa.py", "scenarios/completions.py"])})
    top = st.fixed_dictionaries({}, optional={
        "name": st.text(max_size=10), "seed": st.integers(0, 2**31 - 1),
        "steady_state": st.just([{"url": "/health"},
                                 {"metric": "vllm:num_requests_waiting", "max": 0}]),
        "checks": st.just({"slo": {"ttft": {"p95": 2.0}}})})
    return st.builds(build, target, duration, load_extra,
                     st.lists(_fault_entry(seconds), max_size=4), top)


@dataclass(frozen=True)
class BrokenExperiment:
    """An experiment file that must be refused, and what its error message must name: a field
    path such as `faults[1].at`, or `YAML`, or `mapping` (None: only that it is refused)."""

    content: bytes
    reason: str
    names: str | None

    def __repr__(self) -> str:
        shown = self.content if len(self.content) <= 400 else self.content[:400] + b"..."
        return f"BrokenExperiment({self.reason}, names={self.names!r}, {shown!r})"


def _dump(doc: Json) -> bytes:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()


_NOT_NUMBER: st.SearchStrategy[Json] = st.one_of(
    st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from("ab"), st.integers(),
                                                         max_size=2),
    st.sampled_from(["river", "blue light", "fast"]))
_NOT_TEXT: st.SearchStrategy[Json] = st.one_of(
    st.lists(st.integers(), min_size=1, max_size=2), st.integers(), st.floats(-10, 10),
    st.dictionaries(st.sampled_from("ab"), st.integers(), min_size=1, max_size=2))


def _at_path(doc: JsonObject, path: tuple[str | int, ...]) -> Json:
    node: Json = doc
    for part in path:
        node = node[part]  # type: ignore[index]
    return node


def _path_text(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def broken_experiments() -> st.SearchStrategy[BrokenExperiment]:
    """Experiment files that must be refused with a UsageError naming what is wrong."""
    docs = experiment_documents()

    def field_break(doc: JsonObject, choice: int, draw_value: Json, index: int) -> \
            BrokenExperiment:
        faults = doc["faults"]
        assert isinstance(faults, list)
        i = index % len(faults) if faults else None
        # (path, new value or a marker to delete, reason)
        options: list[tuple[tuple[str | int, ...], Json | type[KeyError], str]] = [
            (("target", "workers"), draw_value, "wrong type"),
            (("load", "users"), draw_value, "wrong type"),
            (("load", "duration"), draw_value, "wrong type"),
            (("seed",), draw_value, "wrong type"),
            (("target", "model"), [1, 2], "wrong type"),
            (("load", "duration"), -abs(float(choice)), "negative duration"),
            (("target", "zz_unknown"), 1, "unknown field"),
            (("load", "zz_unknown"), 1, "unknown field"),
            (("zz_unknown",), 1, "unknown field"),
            (("target",), KeyError, "missing required"),
            (("load",), KeyError, "missing required"),
            (("load", "duration"), KeyError, "missing required"),
        ]
        if i is not None:
            options += [
                (("faults", i, "at"), -1.0 - abs(float(choice)), "negative duration"),
                (("faults", i, "for"), -abs(float(choice)), "negative duration"),
                (("faults", i, "at"), draw_value, "wrong type"),
                (("faults", i, "kind"), f"zz-{choice}", "unknown fault kind"),
                (("faults", i, "kind"), KeyError, "missing required"),
                (("faults", i, "zz_unknown"), True, "unknown field"),
            ]
        path, value, reason = options[choice % len(options)]
        parent = _at_path(doc, path[:-1])
        assert isinstance(parent, dict)
        key = path[-1]
        assert isinstance(key, str)
        if value is KeyError:
            parent.pop(key, None)
        else:
            parent[key] = value  # type: ignore[assignment]
            if path == ("faults", i, "for"):
                parent.pop("every", None)  # else `every` < `for` would be the first error
        return BrokenExperiment(_dump(doc), f"{_path_text(path)}: {reason}", _path_text(path))

    def not_mapping(value: Json) -> BrokenExperiment:
        return BrokenExperiment(_dump(value), "document is not a mapping", "mapping")

    def bad_yaml(doc: JsonObject, line: int, junk: str) -> BrokenExperiment:
        lines = _dump(doc).decode().splitlines()
        at = line % (len(lines) + 1)
        lines.insert(at, junk)
        return BrokenExperiment("\n".join(lines).encode(), f"bad YAML at line {at + 1}",
                                "YAML")

    def yaml_fails(case: BrokenExperiment) -> bool:
        import yaml

        try:
            yaml.safe_load(case.content)
        except yaml.YAMLError:
            return True
        return False

    junk = st.sampled_from(["key: [unclosed", "  - : : :", "\tindented: with a tab",
                            "a: {b: c", "- item\nx: y", "'quote: never closed", "*undefined"])
    return _groups(
        st.builds(field_break, docs, st.integers(0, 10**6), _NOT_NUMBER, st.integers(0, 3)),
        st.one_of(st.lists(json_values(3), max_size=3), st.integers(), st.booleans(),
                  st.sampled_from(["just a sentence", "- a\n- b", "3.5", "'quoted'"])
                  ).map(not_mapping),
        st.builds(bad_yaml, docs, st.integers(0, 50), junk).filter(yaml_fails),
        st.binary(max_size=200).map(lambda b: BrokenExperiment(b, "random bytes", None)),
    )


# -- fault schedules and load profiles (llm-chaos explore) -------------------------------------

# What `llm-chaos explore` draws by default: faults of the reference target's workers that a
# correct fleet rides out without losing a request (an error-rate fault would fail the checks by
# design; `--kinds` adds others). Hypothesis shrinks towards the first kind.
SCHEDULE_KINDS = ("process-pause", "process-kill", "process-terminate")

_GRID = 0.5  # seconds: `at` and `for` are multiples of it, so a schedule reads and replays


def _grid(low: float, high: float, step: float = _GRID) -> st.SearchStrategy[float]:
    """Multiples of `step` in [low, high] (shrinking towards `low`)."""
    first, last = round(low / step), round(high / step)
    return st.integers(first, max(first, last)).map(lambda i: i * step)


def _fault_params(kind: str, max_count: int) -> st.SearchStrategy[JsonObject]:
    """The fields of one fault `kind` beyond kind/at/for, each in a range that keeps a short
    run meaningful (no fault so strong it only proves the obvious)."""
    count = st.integers(1, max(1, max_count))
    if kind.startswith("process-"):
        return st.fixed_dictionaries({"on": st.just("worker"), "count": count})
    admin: dict[str, st.SearchStrategy[JsonObject]] = {
        "admin-latency": st.fixed_dictionaries({
            "latency_s": st.sampled_from([0.1, 0.25, 0.5, 1.0])}),
        "admin-slow_tokens": st.fixed_dictionaries({"delay_s": st.sampled_from([0.02, 0.05, 0.1])}),
        "admin-error_rate": st.fixed_dictionaries({
            "probability": st.sampled_from([0.1, 0.5, 1.0]), "status": st.sampled_from([500, 503]),
            "seed": st.integers(0, 2**16)}),
        "admin-hang": st.fixed_dictionaries({}),
        "admin-truncate": st.fixed_dictionaries({"after_tokens": st.integers(0, 16),
                                                 "error_frame": st.booleans()}),
        "admin-memory_leak": st.fixed_dictionaries({"mb_per_s": st.sampled_from([10, 50]),
                                                    "cap_mb": st.sampled_from([100, 200])}),
        "admin-cpu_burn": st.fixed_dictionaries({"threads": st.integers(1, 2)}),
    }
    if kind in admin:
        on_router = kind in ("admin-latency", "admin-error_rate", "admin-truncate")
        where: st.SearchStrategy[JsonObject] = (
            st.just({"on": "router"}) if on_router
            else st.fixed_dictionaries({"on": st.just("worker"), "count": count}))
        return st.builds(lambda w, p: {**w, "params": p}, where, admin[kind])
    toxics: dict[str, st.SearchStrategy[JsonObject]] = {
        "network-latency": st.fixed_dictionaries({"latency": st.sampled_from([50, 200, 1000]),
                                                  "jitter": st.sampled_from([0, 20])}),
        "network-bandwidth": st.fixed_dictionaries({"rate": st.sampled_from([1, 10, 100])}),
        "network-slicer": st.fixed_dictionaries({"average_size": st.sampled_from([1, 16]),
                                                 "delay": st.sampled_from([0, 1000])}),
        "network-slow_close": st.fixed_dictionaries({"delay": st.sampled_from([100, 1000])}),
        "network-timeout": st.fixed_dictionaries({"timeout": st.sampled_from([0, 500])}),
        "network-reset_peer": st.fixed_dictionaries({"timeout": st.sampled_from([0, 500])}),
        "network-limit_data": st.fixed_dictionaries({"bytes": st.sampled_from([100, 4096])}),
    }
    if kind in toxics:
        return toxics[kind].map(lambda a: {"attributes": a})
    if kind == "host-cpu-hog":
        return st.fixed_dictionaries({"processes": st.integers(1, 2)})
    if kind == "host-memory-hog":
        return st.fixed_dictionaries({"mb": st.sampled_from([64, 256])})
    return st.fixed_dictionaries({})  # network-down: no parameters


def _entry(kind: str, at: float, hold: float, params: JsonObject,
           last_end: float, step: float) -> JsonObject:
    return {"kind": kind, "at": at, "for": max(step, min(hold, last_end - at)), **params}


def _timed(kinds: Sequence[str], max_for: float, max_count: int, step: float
           ) -> st.SearchStrategy[tuple[str, float, JsonObject]]:
    """(kind, for, parameters) of one fault."""
    if not kinds:
        raise ValueError("kinds: give at least one fault kind")

    # one_of, not sampled_from(...).flatmap: a flatmap redraws what depends on the kind when
    # the kind shrinks, which leaves the shrinker stuck at longer schedules
    return st.one_of([st.tuples(st.just(kind), _grid(step, max_for, step),
                                _fault_params(kind, max_count)) for kind in kinds])


def fault_entries(duration: float, kinds: Sequence[str] = SCHEDULE_KINDS, *,
                  max_for: float = 3.0, tail: float = 1.5, max_count: int = 1,
                  step: float = _GRID) -> st.SearchStrategy[JsonObject]:
    """One entry of an experiment's `faults:` list for a load of `duration` seconds: a kind of
    `kinds` (no container kinds: they need a Docker engine), `at` and `for` on a grid of `step`
    seconds, ending `tail` seconds before the load does (so the checks see the way back), and
    the kind's parameters. `max_count` bounds the workers one fault hits (its blast radius)."""
    last_end = max(step * 2, duration - tail)
    return st.builds(lambda at, t: _entry(t[0], at, t[1], t[2], last_end, step),
                     _grid(0.0, last_end - step, step), _timed(kinds, max_for, max_count, step))


def fault_schedules(duration: float, kinds: Sequence[str] = SCHEDULE_KINDS, *,
                    max_faults: int = 3, max_for: float = 3.0, max_gap: float = 2.0,
                    tail: float = 1.5, max_count: int = 1, victims: Sequence[str] = (),
                    step: float = _GRID) -> st.SearchStrategy[list[JsonObject]]:
    """A whole `faults:` list of 1..`max_faults` entries (as in `fault_entries`) in the order
    they strike: the first at a drawn time, each next one 0..`max_gap` s after the one before,
    so windows overlap often and shrink towards striking together (ties keep the list order,
    which is the injection order). With `victims` (worker ids) a process fault may name its
    worker instead of letting the run's seeded RNG pick one."""
    last_end = max(step * 2, duration - tail)
    named: st.SearchStrategy[str | None] = (
        st.none() | st.sampled_from(tuple(victims)) if victims else st.none())
    item = st.tuples(_grid(0.0, max_gap, step), _timed(kinds, max_for, max_count, step), named)

    def build(first: float, items: list[tuple[float, tuple[str, float, JsonObject],
                                              str | None]]) -> list[JsonObject]:
        out: list[JsonObject] = []
        at = first
        for gap, (kind, hold, params), worker in items:
            at = min(at + gap, last_end - step) if out else first
            entry = _entry(kind, at, hold, params, last_end, step)
            if worker is not None and kind.startswith("process-"):
                entry = {**entry, "count": 1, "workers": [worker]}
            out.append(entry)
        return out

    return st.builds(build, _grid(0.0, last_end - step, step),
                     st.lists(item, min_size=1, max_size=max_faults))


def load_profiles(duration: float, max_users: int = 8) -> st.SearchStrategy[JsonObject]:
    """A `load:` section of `duration` seconds: closed-loop users (steady, ramp, step or spike)
    or an open loop (Poisson or constant arrivals at a rate)."""
    users = st.integers(1, max_users)
    closed = st.one_of(
        st.fixed_dictionaries({"users": users, "spawn_rate": st.just(float(max_users)),
                               "shape": st.just("steady")}),
        st.fixed_dictionaries({"users": users, "shape": st.just("ramp"),
                               "ramp_time": _grid(_GRID, max(_GRID, duration / 2))}),
        st.fixed_dictionaries({"users": users, "shape": st.just("step"),
                               "step_users": st.integers(1, 2),
                               "step_time": _grid(_GRID, max(_GRID, duration / 3))}),
        st.fixed_dictionaries({"users": users, "shape": st.just("spike"),
                               "spike_users": st.integers(1, max_users),
                               "spike_at": _grid(0.0, duration / 2),
                               "spike_duration": _grid(_GRID, max(_GRID, duration / 3))}),
    )
    opened = st.fixed_dictionaries({"users": users,
                                    "arrival": st.sampled_from(["poisson", "constant"]),
                                    "rate": st.sampled_from([1.0, 2.0, 5.0, 10.0])})
    def timed(load: dict[str, object]) -> JsonObject:
        # the values come from the JSON strategies above
        return {**cast(JsonObject, load), "duration": duration}

    return st.one_of(closed, opened).map(timed)
