"""Our worker and `transformers serve` answer the same requests with chunks of the same JSON shape.

Both serve the same tiny model folder. For each request the two answers are compared field by
field: the set of keys at every level and the JSON type of every value (not the values: the
model name, ids and text differ). A difference either is fixed in the worker or is listed in
ALLOWED with the reason; an unlisted difference fails, and so does a listed one that no longer
occurs (the list must stay true).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import httpx
import transformers

from harness.launcher import ServerProcess
from targets.reference.models import ensure_tiny_folder
from tests.conftest import sse_events

ABSENT = "absent"

# The version of `transformers serve` the ALLOWED list below was written against (pinned in
# constraints.txt); another version may answer in another shape, and the failure says so.
WRITTEN_AGAINST = "5.24.0"

# transformers serve builds its answers from the `openai` package's models and serializes them
# with `model_dump(exclude_none=True)`, so every key whose value is null is dropped. OpenAI (and
# our worker) send these keys with null.
_NULLS_DROPPED = "transformers serve drops null-valued keys (exclude_none); OpenAI sends null"

# Each key is an fnmatch pattern over one difference line (see `Difference.line`); each value
# says why the difference is acceptable.
ALLOWED: dict[str, str] = {
    "* choices.0.logprobs: ours null, theirs absent": _NULLS_DROPPED,
    "* stream, role chunk: choices.0.finish_reason: ours null, theirs absent": _NULLS_DROPPED,
    "* stream, content chunk: choices.0.finish_reason: ours null, theirs absent": _NULLS_DROPPED,
    # With stream_options.include_usage OpenAI puts `usage: null` on every chunk but the last.
    "* stream, role chunk: usage: ours null, theirs absent": _NULLS_DROPPED,
    "* stream, content chunk: usage: ours null, theirs absent": _NULLS_DROPPED,
    # OpenAI's first chat chunk is {"role": "assistant", "content": ""}; transformers serve leaves
    # content None in the role chunk, so it is dropped too.
    "chat stream, role chunk: choices.0.delta.content: ours string, theirs absent":
        _NULLS_DROPPED,
    # OpenAI sends usage in one extra last chunk with `choices: []`; transformers serve puts it on
    # the finish_reason chunk instead (and sends it even without include_usage). The usage
    # objects themselves are still compared ("usage object" below).
    "* stream, finish chunk: usage: ours null, theirs object":
        "transformers serve attaches usage to the finish chunk",
    "* stream, chunk kinds: sequence: ours role,content,finish,usage, theirs role,content,finish":
        "transformers serve sends no separate usage chunk",
    "* stream, chunk kinds: sequence: ours content,finish,usage, theirs content,finish":
        "transformers serve sends no separate usage chunk",
    # Documented in DESIGN.md (interoperability facts): transformers serve 5.24 ends the stream
    # by closing the connection.
    "* stream, end: DONE line: ours present, theirs absent": "transformers serve omits [DONE]",
    # OpenAI's chat.completion and text_completion objects carry system_fingerprint too;
    # transformers serve sets it only on chat chunks.
    "chat, response: system_fingerprint: ours string, theirs absent":
        "transformers serve sets system_fingerprint only on chat chunks",
    "completion*: system_fingerprint: ours string, theirs absent":
        "transformers serve sets system_fingerprint only on chat chunks",
}


@dataclass(frozen=True, order=True)
class Difference:
    """One place where the two answers differ in shape."""

    where: str
    path: str
    ours: str
    theirs: str

    @property
    def line(self) -> str:
        return f"{self.where}: {self.path}: ours {self.ours}, theirs {self.theirs}"


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value (integer and number kept apart)."""
    if value is None:
        return "null"
    # bool before int: True is an int in Python, a boolean in JSON
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (list, "array"), (dict, "object")):
        if isinstance(value, kind):
            return name
    raise TypeError(f"not a JSON value: {value!r}")


def shape_differences(where: str, ours: Any, theirs: Any, path: str = "") -> Iterator[Difference]:
    """Every key that only one side has and every value whose JSON type differs, recursively."""
    ours_type, theirs_type = json_type(ours), json_type(theirs)
    if ours_type != theirs_type:
        yield Difference(where, path or "<root>", ours_type, theirs_type)
        return
    prefix = f"{path}." if path else ""
    if isinstance(ours, dict):
        for key in sorted(set(ours) | set(theirs)):
            if key not in theirs:
                yield Difference(where, prefix + key, json_type(ours[key]), ABSENT)
            elif key not in ours:
                yield Difference(where, prefix + key, ABSENT, json_type(theirs[key]))
            else:
                yield from shape_differences(where, ours[key], theirs[key], prefix + key)
    elif isinstance(ours, list):
        if len(ours) != len(theirs):
            yield Difference(where, prefix + "length", str(len(ours)), str(len(theirs)))
        for i, (mine, other) in enumerate(zip(ours, theirs, strict=False)):
            yield from shape_differences(where, mine, other, f"{prefix}{i}")


def chunk_kind(chunk: dict[str, Any]) -> str:
    """role / content / finish / usage: the part a chunk plays in an OpenAI stream."""
    choices = chunk["choices"]
    if not choices:
        return "usage"
    if choices[0].get("finish_reason") is not None:
        return "finish"
    if "role" in choices[0].get("delta", {}):
        return "role"
    return "content"


def stream_differences(where: str, ours: list[Any], theirs: list[Any]) -> set[Difference]:
    """Shape differences of two SSE streams, chunk kind by chunk kind."""
    diffs: set[Difference] = set()
    ours_done, theirs_done = "[DONE]" in ours, "[DONE]" in theirs
    if ours_done != theirs_done:
        diffs.add(Difference(f"{where}, end", "DONE line", "present" if ours_done else ABSENT,
                             "present" if theirs_done else ABSENT))
    assert ours_done, "our worker must end every stream with data: [DONE]"
    assert ours[-1] == "[DONE]", "nothing may follow data: [DONE]"
    ours_chunks = [c for c in ours if c != "[DONE]"]
    theirs_chunks = [c for c in theirs if c != "[DONE]"]
    by_kind: list[dict[str, list[dict[str, Any]]]] = []
    sequences: list[str] = []
    for chunks in (ours_chunks, theirs_chunks):
        kinds: dict[str, list[dict[str, Any]]] = {}
        order: list[str] = []
        for chunk in chunks:
            kind = chunk_kind(chunk)
            kinds.setdefault(kind, []).append(chunk)
            if not order or order[-1] != kind:
                order.append(kind)
        by_kind.append(kinds)
        sequences.append(",".join(order))
    if sequences[0] != sequences[1]:
        diffs.add(Difference(f"{where}, chunk kinds", "sequence", *sequences))
    for kind in sorted(set(by_kind[0]) & set(by_kind[1])):
        for mine in by_kind[0][kind]:
            for other in by_kind[1][kind]:
                diffs.update(shape_differences(f"{where}, {kind} chunk", mine, other))
    # Wherever each side puts its usage, the usage objects themselves must match.
    ours_usage = [c["usage"] for c in ours_chunks if c.get("usage") is not None]
    theirs_usage = [c["usage"] for c in theirs_chunks if c.get("usage") is not None]
    assert len(ours_usage) == 1, "include_usage asks for exactly one usage object"
    assert len(theirs_usage) == 1, "transformers serve sent no usage in its stream"
    diffs.update(shape_differences(f"{where}, usage object", ours_usage[0], theirs_usage[0]))
    return diffs


@dataclass(frozen=True)
class Case:
    """One request sent to both servers."""

    name: str
    path: str
    body: dict[str, Any]


_MESSAGES = [{"role": "user", "content": "Name three colours."}]
CASES = [
    Case("chat stream", "/v1/chat/completions",
         {"messages": _MESSAGES, "max_tokens": 4, "temperature": 0, "stream": True,
          "stream_options": {"include_usage": True}}),
    Case("chat", "/v1/chat/completions",
         {"messages": _MESSAGES, "max_tokens": 4, "temperature": 0}),
    Case("completion stream", "/v1/completions",
         {"prompt": "Red, green and", "max_tokens": 4, "temperature": 0, "stream": True,
          "stream_options": {"include_usage": True}}),
    Case("completion", "/v1/completions",
         {"prompt": "Red, green and", "max_tokens": 4, "temperature": 0}),
]


def _ask(client: httpx.Client, url: str, model: str, case: Case) -> Any:
    body = {"model": model, **case.body}
    if not case.body.get("stream"):
        resp = client.post(url + case.path, json=body)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        payload = resp.json()
        assert payload["model"] == model
        return payload
    with client.stream("POST", url + case.path, json=body) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert all(e["model"] == model for e in events if e != "[DONE]")
    return events


def _differences(case: Case, ours: Any, theirs: Any) -> set[Difference]:
    if case.body.get("stream"):
        return stream_differences(case.name, ours, theirs)
    return set(shape_differences(f"{case.name}, response", ours, theirs))


def test_same_json_shape_as_transformers_serve(tiny_worker: ServerProcess,
                                               transformers_serve: ServerProcess) -> None:
    folder = str(ensure_tiny_folder())
    found: set[Difference] = set()
    with httpx.Client(timeout=60) as client:
        for case in CASES:
            ours = _ask(client, tiny_worker.url, "tiny", case)
            theirs = _ask(client, transformers_serve.url, folder, case)
            found |= _differences(case, ours, theirs)
    lines = sorted(d.line for d in found)
    unexpected = [line for line in lines if not any(fnmatchcase(line, p) for p in ALLOWED)]
    stale = [p for p in ALLOWED if not any(fnmatchcase(line, p) for line in lines)]
    upstream = ("" if transformers.__version__ == WRITTEN_AGAINST else
                f"upstream changed: this list was written against transformers {WRITTEN_AGAINST}"
                f" (constraints.txt), {transformers.__version__} is installed; check what "
                "changed in `transformers serve` and update ALLOWED or the worker.\n")
    assert not unexpected, (upstream + "JSON shape differs from transformers serve:\n"
                            + "\n".join(unexpected))
    assert not stale, (upstream + "allowed differences that no longer occur (remove them):\n"
                       + "\n".join(stale))


def test_the_comparison_catches_a_difference() -> None:
    # The checker itself: a renamed key, a changed type and a missing list item are all found.
    ours = {"id": "x", "choices": [{"index": 0, "finish_reason": None}], "created": 1}
    theirs = {"id": "x", "choices": [{"index": "0", "stop_reason": None}, {}], "created": 1.5}
    lines = {d.line for d in shape_differences("t", ours, theirs)}
    assert lines == {
        "t: choices.length: ours 1, theirs 2",
        "t: choices.0.index: ours integer, theirs string",
        "t: choices.0.finish_reason: ours null, theirs absent",
        "t: choices.0.stop_reason: ours absent, theirs null",
        "t: created: ours integer, theirs number",
    }
