"""Completion accounting on the data plane: token estimates, tool calls, TTFT, and what
a client that went away actually received."""

from __future__ import annotations

import socket
from collections.abc import Callable

import anthropic
import httpx
import openai
import orjson
import pytest

from fastproxy._speedups import estimate_tokens
from fastproxy.core.records import ExchangeRecord
from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

MSGS = [{"role": "user", "content": "hello"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


@pytest.fixture
def records(gateway: RunningGateway) -> list[ExchangeRecord]:
    got: list[ExchangeRecord] = []
    gateway.plane.accounting = True
    gateway.observe(got.append)
    return got


def _text_of_stream(body: bytes, key: str) -> str:
    out = []
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: {"):
                obj = orjson.loads(line[6:])
                if key == "openai":
                    out.extend(ch["delta"].get("content") or "" for ch in obj.get("choices") or [])
                elif obj.get("type") == "content_block_delta":
                    out.append(obj["delta"].get("text", ""))
    return "".join(out)


def test_openai_stream_estimate_matches_relayed_text(gateway: RunningGateway, records) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-4o", "stream": True, "messages": MSGS},
        headers={"x-mock-tokens": "40"},
        timeout=10,
    ) as r:
        body = r.read()
    wait_until(lambda: records, what="the record")
    rec = records[0]
    text = _text_of_stream(body, "openai")
    assert rec.btp_completion_est == estimate_tokens(text) > 0
    assert rec.ptc_completion_est == rec.btp_completion_est
    assert rec.usage is not None and rec.usage.completion == 40
    assert rec.started_at < rec.first_content_at <= rec.ended_at
    assert rec.streaming and rec.outcome == "ok" and rec.tool_call_count == 0


def test_anthropic_stream_tool_use_counted(gateway: RunningGateway, records) -> None:
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0) as c,
        c.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MSGS, tools=tools) as s,
    ):
        s.get_final_message()
    wait_until(lambda: records)
    assert records[0].tool_names == ["lookup"] and records[0].tool_call_count == 1


def test_openai_json_tool_calls_and_estimate(gateway: RunningGateway, records) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as c:
        resp = c.chat.completions.create(model="gpt-4o", messages=MSGS, tools=TOOLS)
        plain = c.chat.completions.create(model="gpt-4o", messages=MSGS)
        stream = c.chat.completions.create(model="gpt-4o", messages=MSGS, tools=TOOLS, stream=True)
        list(stream)
    wait_until(lambda: len(records) == 3)
    assert records[0].tool_names == [resp.choices[0].message.tool_calls[0].function.name]
    # The backend counted this completion itself: no estimate is made for it.
    assert (
        records[1].usage is not None
        and records[1].usage.completion == plain.usage.completion_tokens
    )
    assert records[1].btp_completion_est is None
    assert records[2].tool_names == ["lookup"]


def test_json_completion_without_backend_usage_is_estimated(
    gateway_factory: Callable[..., RunningGateway], raw_backend: Callable[[bytes], str]
) -> None:
    """Bad input from an OpenAI-compatible server: a JSON completion with no "usage" object.
    The record's completion count must then come from the body the client received."""
    content = "The quick brown fox jumps over the lazy dog, twice over."
    body = orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    url = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    gw: RunningGateway = gateway_factory(
        {"backends": {"openai.1": {"api_url": url, "models": ["m"]}}}
    )
    got: list[ExchangeRecord] = []
    gw.plane.accounting = True
    gw.observe(got.append)
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0) as c:
        assert (
            c.chat.completions.create(model="m", messages=MSGS).choices[0].message.content
            == content
        )
    wait_until(lambda: got, what="the record")
    assert got[0].usage is None
    assert got[0].btp_completion_est == got[0].ptc_completion_est == estimate_tokens(content) > 0


def test_client_abort_counts_only_what_left_the_gateway(gateway: RunningGateway, records) -> None:
    """The client reads nothing, so the gateway's write buffer fills and holds content
    the client never got: ptc (relayed) < btp (received from the backend)."""
    body = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": MSGS})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-mock-tokens: 100000\r\nx-mock-event-bytes: 2000\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )

    def client_buffer_full() -> bool:
        conns = [c for c in gateway.plane.connections if c.current is not None]
        return bool(conns) and conns[0].flow.write_paused

    wait_until(lambda: gateway.lt.call(client_buffer_full), what="gateway paused by the client")
    sock.close()
    wait_until(lambda: records, what="the record")
    rec = records[0]
    assert rec.outcome == "client_aborted"
    assert rec.btp_completion_est is not None and rec.ptc_completion_est is not None
    assert rec.ptc_completion_est < rec.btp_completion_est
