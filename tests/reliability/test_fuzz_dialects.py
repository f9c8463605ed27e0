"""Fuzz: the dialect parsers and renderers never raise on what a backend or client sends.

Inputs are what can reach these functions on the wire: usage objects and SSE event data
decoded by orjson from arbitrary JSON text (so any JSON value: huge and negative numbers,
floats, booleans where counts belong, strings, nesting), and invalid JSON. For each:

* `from_openai` / `from_anthropic`: ``None`` for a non-object, else a `BackendUsage`
  whose counts are ints in 0..MAX_TOKENS or ``None`` and whose cost is a finite
  non-negative float or ``None``, with the documented normal form (Anthropic prompt =
  input + cache read + cache write; totals derived only from valid parts);
  `BackendUsage.merge` keeps those invariants;
* ``stream_usage`` of both dialects: ``(usage or None, bool)``, never an exception, and
  "usage-only" only for an OpenAI chunk with usage and an empty ``choices``;
* ``is_terminal``: a bool, true exactly for the documented terminal events;
* ``error_body`` and ``stream_error_event``: valid JSON of the dialect's exact error
  shape for any status and message, and an error event that an SSE scanner reads back as
  exactly one event (a message with newlines cannot break the framing).

Bounded in CI; ``HYPOTHESIS_PROFILE=long`` runs it longer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from fastproxy._speedups import SSE_EVENT, SSEScanner
from fastproxy.dataplane.dialects import anthropic, from_anthropic, from_openai, openai
from fastproxy.dataplane.dialects.usage import MAX_TOKENS, BackendUsage

from .fuzz_settings import fuzz

COUNT_FIELDS = ("prompt", "completion", "total", "cached", "cache_write", "reasoning")

# --------------------------------------------------------------------------------------
# JSON values, as orjson decodes them from a backend's text

edge_numbers = st.sampled_from(
    [
        0,
        1,
        -1,
        2**40,
        2**40 + 1,
        2**53,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        10**30,
        -(2**63),
        0.0,
        -0.0,
        0.5,
        1.0,
        1e308,
        1e-320,
        3.0,
        -3.0,
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_numbers,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
USAGE_KEYS = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cost",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "output_tokens_details",
]
DETAIL = st.one_of(
    st.fixed_dictionaries({}, optional={"cached_tokens": scalars, "reasoning_tokens": scalars}),
    json_values,
)
usage_objects = st.one_of(
    st.dictionaries(st.sampled_from(USAGE_KEYS), st.one_of(scalars, DETAIL), max_size=8),
    json_values,
)


def json_text(value: Any) -> bytes:
    """The value as a backend would write it (the stdlib writes ints of any size)."""
    return json.dumps(value).encode()


def decoded(value: Any) -> Any:
    """What orjson makes of that text (a number too big for it is a decode error)."""
    try:
        return orjson.loads(json_text(value))
    except orjson.JSONDecodeError:
        return None


# --------------------------------------------------------------------------------------
# invariants of a BackendUsage


def check_usage(u: Any) -> None:
    assert isinstance(u, BackendUsage), u
    for name in COUNT_FIELDS:
        v = getattr(u, name)
        assert v is None or (type(v) is int and v >= 0), (name, v)
    for name in ("completion", "cached", "cache_write", "reasoning"):
        v = getattr(u, name)
        assert v is None or v <= MAX_TOKENS, (name, v)
    # Prompt and total are sums of at most four bounded counts: still far inside the
    # signed 64-bit integers the usage store and the sums over records use.
    for name in ("prompt", "total"):
        v = getattr(u, name)
        assert v is None or v <= 4 * MAX_TOKENS, (name, v)
    assert u.cost is None or (type(u.cost) is float and math.isfinite(u.cost) and u.cost >= 0)
    assert len(u.as_row()) == len(u.as_dict()) == 7
    orjson.dumps(u.as_dict())  # storable as the usage record stores it


def valid_count(v: Any) -> int | None:
    return v if type(v) is int and 0 <= v <= MAX_TOKENS else None


@fuzz(ci=300)
@given(usage=usage_objects)
def test_from_openai(usage: Any) -> None:
    obj = decoded(usage)
    u = from_openai(obj)
    if not isinstance(obj, dict):
        assert u is None
        return
    check_usage(u)
    prompt = valid_count(obj.get("prompt_tokens"))
    if prompt is None:
        prompt = valid_count(obj.get("input_tokens"))
    assert u.prompt == prompt
    total = valid_count(obj.get("total_tokens"))
    if total is not None:
        assert u.total == total
    elif prompt is not None:
        assert u.total == prompt + (u.completion or 0)
    else:
        assert u.total is None
    assert u.cache_write is None


@fuzz(ci=300)
@given(usage=usage_objects)
def test_from_anthropic(usage: Any) -> None:
    obj = decoded(usage)
    u = from_anthropic(obj)
    if not isinstance(obj, dict):
        assert u is None
        return
    check_usage(u)
    inp = valid_count(obj.get("input_tokens"))
    read = valid_count(obj.get("cache_read_input_tokens"))
    write = valid_count(obj.get("cache_creation_input_tokens"))
    out = valid_count(obj.get("output_tokens"))
    assert (u.cached, u.cache_write, u.completion) == (read, write, out)
    # Normal form: the prompt counts every prompt token, cache reads and writes included.
    assert u.prompt == (None if inp is None else inp + (read or 0) + (write or 0))
    assert u.total == (None if u.prompt is None or out is None else u.prompt + out)


@fuzz(ci=200)
@given(first=usage_objects, second=usage_objects, dialect=st.sampled_from(["openai", "anthropic"]))
def test_merge_keeps_the_invariants(first: Any, second: Any, dialect: str) -> None:
    parse = from_openai if dialect == "openai" else from_anthropic
    a, b = parse(decoded(first)), parse(decoded(second))
    if a is None or b is None:
        return
    before = a.as_dict()
    later = b.as_dict()
    a.merge(b)
    check_usage(a)
    for name, value in a.as_dict().items():
        # A later report fills what it has; what it lacks keeps the earlier value.
        expected = later[name] if later[name] is not None else before[name]
        if (
            name == "total"
            and later["total"] is None
            and a.prompt is not None
            and a.completion is not None
        ):
            expected = a.prompt + a.completion
        assert value == expected, (name, before, later)


# --------------------------------------------------------------------------------------
# stream events

EVENTS = [
    b"",
    b"message_start",
    b"message_delta",
    b"message_stop",
    b"content_block_delta",
    b"response.completed",
    b"response.failed",
    b"response.incomplete",
    b"response.output_text.delta",
    b"error",
    b"ping",
]

event_payloads = st.one_of(
    st.builds(
        lambda u, ch: {"usage": u, **({"choices": ch} if ch is not None else {})},
        usage_objects,
        st.one_of(st.none(), st.just([]), json_values),
    ),
    st.builds(lambda u: {"type": "message_start", "message": {"usage": u}}, usage_objects),
    st.builds(lambda m: {"type": "message_start", "message": m}, json_values),
    st.builds(lambda u: {"type": "message_delta", "usage": u}, usage_objects),
    st.builds(
        lambda r: {"type": "response.completed", "response": r},
        st.one_of(json_values, st.builds(lambda u: {"usage": u}, usage_objects)),
    ),
    json_values,
)
event_data = st.one_of(
    event_payloads.map(json_text),
    event_payloads.map(json_text).flatmap(lambda t: st.integers(0, len(t)).map(lambda n: t[:n])),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"[DONE]",
            b"[DONE] ",
            b"null",
            b"{}",
            b'{"usage": null, "choices": []}',
            b'{"usage": {"prompt_tokens": 1e400}}',
            b"\xff\xfe",
        ]
    ),
)


@fuzz(ci=300)
@given(event=st.one_of(st.sampled_from(EVENTS), st.binary(max_size=12)), data=event_data)
def test_stream_usage_and_terminal(event: bytes, data: bytes) -> None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    for dialect in (openai, anthropic):
        usage, usage_only = dialect.stream_usage(event, data)
        assert type(usage_only) is bool
        if usage is not None:
            check_usage(usage)
        if not isinstance(obj, dict):
            assert (usage, usage_only) == (None, False)
        terminal = dialect.is_terminal(event, data)
        assert type(terminal) is bool
    usage, usage_only = openai.stream_usage(event, data)
    if usage_only:  # only an OpenAI usage chunk with no choices may be stripped
        assert isinstance(obj, dict) and obj.get("choices") == [] and usage is not None
        assert not event.startswith(b"response.")
    assert anthropic.stream_usage(event, data)[1] is False  # Anthropic never strips
    assert openai.is_terminal(event, data) == (
        data == b"[DONE]"
        or event in (b"response.completed", b"response.failed", b"response.incomplete")
    )
    assert anthropic.is_terminal(event, data) == (event == b"message_stop")


# --------------------------------------------------------------------------------------
# errors the gateway writes

messages = st.text(max_size=60)  # str from the gateway: never lone surrogates (orjson
# refuses those on input, and the gateway builds messages from decoded text)
codes = st.one_of(st.none(), st.text(max_size=20))
# The error types each provider documents: an SDK maps only these to its error classes.
OPENAI_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "timeout_error",
    "rate_limit_error",
    "server_error",
}
ANTHROPIC_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
}
statuses = st.one_of(
    st.integers(100, 599),
    st.sampled_from([400, 401, 404, 408, 413, 429, 431, 500, 502, 503, 504, 529]),
)


@fuzz(ci=300)
@given(
    status=statuses, message=messages, code=codes, param=st.one_of(st.none(), st.text(max_size=10))
)
def test_error_bodies_have_the_dialect_shape(
    status: int, message: str, code: str | None, param: str | None
) -> None:
    body = orjson.loads(openai.error_body(status, message, code, param))
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["message"], err["code"], err["param"]) == (message, code, param)
    assert err["type"] == openai.error_type(status) in OPENAI_TYPES
    body = orjson.loads(anthropic.error_body(status, message, code, param))
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["message"] == message
    assert body["error"]["type"] == anthropic.error_type(status) in ANTHROPIC_TYPES


@fuzz(ci=300)
@given(message=messages, code=st.text(max_size=20))
def test_stream_error_events_are_one_sse_event(message: str, code: str) -> None:
    for dialect, event_name in ((openai, b""), (anthropic, b"error")):
        raw = dialect.stream_error_event(message, code)
        scanner = SSEScanner()
        items = scanner.feed(raw)
        assert scanner.finish() == b""
        assert [i.kind for i in items] == [SSE_EVENT], raw
        item = items[0]
        assert item.event == event_name and item.raw == raw
        obj = orjson.loads(item.data)
        if dialect is openai:
            assert obj == {
                "error": {"message": message, "type": "server_error", "param": None, "code": code}
            }
            # A truncation event is not mistaken for the end of the stream.
            assert not openai.is_terminal(item.event, item.data)
        else:
            assert obj == {"type": "error", "error": {"type": "api_error", "message": message}}
            assert not anthropic.is_terminal(item.event, item.data)
