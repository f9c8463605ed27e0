"""A whole JSON answer's usage and tool names, read without parsing the whole answer.

The request cycle reads a non-streaming answer's ``usage`` with the compiled member scan
(`responses.answer_usage`) and parses the document for tool names only when it names a
tool call (`responses.answer_doc`). Here both must give exactly what parsing the whole
document gives (`json_usage(json_obj(...))`, `json_tool_names(json_obj(...))`), with the
scan on and off, for every dialect's shape and for documents the scan declines (then
orjson decides, as before).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fastproxy.core.records import BackendUsage
from fastproxy.dataplane import responses
from fastproxy.dataplane.accounting import json_tool_names
from fastproxy.dataplane.responses import answer_doc, answer_usage, json_obj, json_usage

OPENAI = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "naïve café"}}],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 16,
        "total_tokens": 28,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
        "cost": 0.00015,
    },
}
TOOLS = {
    "object": "chat.completion",
    "choices": [
        {"message": {"tool_calls": [{"type": "function", "function": {"name": "lookup"}}]}}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2},
}
ANTHROPIC = {
    "id": "msg_1",
    "type": "message",
    "content": [{"type": "tool_use", "name": "get_weather", "input": {}}],
    "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5},
}
RESPONSES = {
    "object": "response",
    "output": [{"type": "function_call", "name": "f", "arguments": "{}"}],
    "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
}
BODIES: list[bytes] = [
    orjson.dumps(OPENAI),
    orjson.dumps(OPENAI, option=orjson.OPT_INDENT_2),
    orjson.dumps(TOOLS),
    orjson.dumps(ANTHROPIC),
    orjson.dumps(RESPONSES),
    orjson.dumps({"object": "list", "data": []}),  # no usage at all
    orjson.dumps({"usage": None}),
    orjson.dumps({"usage": {"prompt_tokens": True, "completion_tokens": -1}}),  # broken counts
    # declined by the scan, decided by orjson:
    b'{"usag\\u0065":{"prompt_tokens":9},"type":"message"}',  # an escaped top-level key
    b'{"a":1e999,"usage":{"prompt_tokens":9}}',  # infinity: orjson refuses the document
    b'{"usage":{"prompt_tokens":9}',  # cut short
    b"[1,2]",  # not an object
    b"",
]


def _fields(usage: BackendUsage | None) -> dict[str, Any] | None:
    return None if usage is None else usage.as_dict()


def _expected(body: bytes, frontend: str) -> tuple[Any, list[str]]:
    doc = json_obj(body)
    return _fields(json_usage(doc, frontend)), json_tool_names(doc)


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "parse"])
@pytest.mark.parametrize("frontend", ["openai", "anthropic"])
@pytest.mark.parametrize("body", BODIES)
def test_usage_and_tool_names_equal_a_whole_parse(
    monkeypatch: pytest.MonkeyPatch, scan: bool, frontend: str, body: bytes
) -> None:
    """Bad input among BODIES: an escaped key, infinity, a cut document, an array."""
    monkeypatch.setattr(responses, "SCAN_MEMBERS", scan and responses.SCAN_MEMBERS)
    usage, doc = answer_usage(body, frontend)
    got = (_fields(usage), json_tool_names(answer_doc(body, doc)))
    assert got == _expected(body, frontend)


def test_the_scan_spares_the_parse_when_no_tool_is_named() -> None:
    if not responses.SCAN_MEMBERS:
        pytest.skip("the member scan runs with the compiled core only")
    usage, doc = answer_usage(BODIES[0], "openai")
    assert usage is not None and usage.prompt == 12 and usage.cached == 4 and doc is None
    assert answer_doc(BODIES[0], doc) is None  # nothing names a tool: nothing parsed
    assert answer_doc(BODIES[2], None) == TOOLS  # a tool is named: parsed for its names
