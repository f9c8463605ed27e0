"""The data plane end to end on each _speedups implementation: what clients receive.

Each test runs twice, once against a gateway on the compiled core and once against one
forced onto the pure-Python twin (fixture ``twin``). The content the mock sends is
deterministic (`content_text`), so every assertion compares with the exact text, token
count and bytes the client should get, not with "something arrived".
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest

from fastproxy.mockllm.text import content_text
from tests.support.waiting import wait_until

from .conftest import TwinGateway

pytestmark = pytest.mark.twin

MSGS = [{"role": "user", "content": "Tell me about rivers and valleys."}]


def test_gateway_runs_the_requested_implementation(twin: TwinGateway) -> None:
    # The gateway's own report, and independently the shared objects the process mapped:
    # the compiled core is loaded by the cython gateway and never by the pure one.
    assert twin.speedups() == twin.impl
    maps = Path(f"/proc/{twin.proc.pid}/maps").read_text()
    assert ("fastproxy/_speedups/_core." in maps) == (twin.impl == "cython")


def test_openai_chat_json(twin: TwinGateway, session: str) -> None:
    n = 9
    with openai.OpenAI(base_url=twin.url + "/v1", api_key="client-key", max_retries=0) as c:
        resp = c.chat.completions.create(
            model="gpt-4o",
            messages=MSGS,
            extra_headers={"x-session-id": session, "x-mock-tokens": str(n)},
        )
    assert resp.choices[0].message.content == content_text("gpt-4o", n)
    assert resp.usage is not None and resp.usage.completion_tokens == n
    (rec,) = twin.records(session, 1)
    assert (rec["api"], rec["streaming"], rec["outcome"], rec["http_status_code"]) == (
        "chat",
        False,
        "ok",
        200,
    )
    assert rec["usage_source"] == "backend"
    assert rec["btp_completion_tokens"] == rec["ptc_completion_tokens"] == n
    assert rec["ptb_prompt_tokens"] == resp.usage.prompt_tokens


def _sse_data(body: bytes) -> list[bytes]:
    """The ``data:`` payload of every event in a client-side SSE body, in order."""
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def _chat_text(datas: list[bytes]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for d in datas
        if d != b"[DONE]"
        for choice in orjson.loads(d).get("choices") or ()
    )


def test_openai_chat_stream_usage(twin: TwinGateway, session: str) -> None:
    n = 14
    model = "gpt-4o-mini"
    # 1. The client asks for usage: the usage-only chunk reaches it, as the API sends it.
    with openai.OpenAI(base_url=twin.url + "/v1", api_key="client-key", max_retries=0) as c:
        chunks = list(
            c.chat.completions.create(
                model=model,
                messages=MSGS,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-session-id": session, "x-mock-tokens": str(n)},
            )
        )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == content_text(model, n)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == n

    # 2. The client does not ask: the gateway asks the backend anyway (for the record)
    # and removes that chunk before the client sees it. The bytes the client received are
    # exactly what the activity counters say went out; what came in was more (the chunk).
    before = twin.backend_activity("openai.1")
    with httpx.stream(
        "POST",
        twin.url + "/v1/chat/completions",
        json={"model": model, "stream": True, "messages": MSGS},
        headers={"x-session-id": session, "x-mock-tokens": str(n)},
        timeout=10,
    ) as r:
        assert r.status_code == 200
        body = r.read()
    datas = _sse_data(body)
    assert datas[-1] == b"[DONE]"
    assert not any(b'"usage"' in d for d in datas), "the injected usage chunk was relayed"
    assert _chat_text(datas) == content_text(model, n)

    first, second = twin.records(session, 2)
    for rec in (first, second):
        assert rec["streaming"] and rec["outcome"] == "ok" and rec["usage_source"] == "backend"
        assert rec["backend_reported_usage"]["completion"] == n
        assert rec["btp_completion_tokens"] == rec["ptc_completion_tokens"] == n
    assert first["backend_reported_usage"]["prompt"] == chunks[-1].usage.prompt_tokens

    def moved() -> dict[str, int]:
        now = twin.backend_activity("openai.1")
        return {k: now[k] - before[k] for k in ("lifetime_bytes_rx", "lifetime_bytes_tx")}

    wait_until(
        lambda: twin.backend_activity("openai.1")["active_connections"] == 0,
        what="the stream's activity entry to close",
    )
    delta = moved()
    assert delta["lifetime_bytes_tx"] == len(body)
    assert delta["lifetime_bytes_rx"] > len(body)  # the stripped usage chunk came in


def test_anthropic_messages_stream(twin: TwinGateway, session: str) -> None:
    n = 11
    model = "claude-haiku-4-5"
    cache_read = 300  # reported apart from input_tokens by Anthropic, inside prompt for us
    with (
        anthropic.Anthropic(base_url=twin.url, api_key="client-key", max_retries=0) as c,
        c.messages.stream(
            model=model,
            max_tokens=256,
            messages=MSGS,
            extra_headers={
                "x-session-id": session,
                "x-mock-tokens": str(n),
                "x-mock-cache-read": str(cache_read),
            },
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == content_text(model, n)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == n
    assert final.usage.cache_read_input_tokens == cache_read

    (rec,) = twin.records(session, 1)
    assert (rec["frontend_type"], rec["backend_type"], rec["api"]) == (
        "anthropic",
        "anthropic",
        "messages",
    )
    assert rec["outcome"] == "ok" and rec["usage_source"] == "backend"
    usage = rec["backend_reported_usage"]
    # Input from message_start and output from message_delta, merged and normalised.
    assert usage["prompt"] == final.usage.input_tokens + cache_read
    assert usage["cached"] == cache_read
    assert usage["completion"] == rec["btp_completion_tokens"] == rec["ptc_completion_tokens"] == n


@pytest.mark.parametrize("client_usage", [False, True], ids=["stripped", "requested"])
def test_stream_split_into_seven_byte_pieces(
    twin: TwinGateway, session: str, client_usage: bool
) -> None:
    """The mock's ``trickle`` fault writes the stream 7 bytes at a time, so nearly every
    event reaches the gateway's SSE scanner cut in two or more reads. What the client gets
    must be the same events, whole, with the usage chunk removed only when it asked for none.
    """
    n = 6
    model = "gpt-4o"
    body_json: dict[str, object] = {"model": model, "stream": True, "messages": MSGS}
    if client_usage:
        body_json["stream_options"] = {"include_usage": True}
    with httpx.stream(
        "POST",
        twin.url + "/v1/chat/completions",
        json=body_json,
        # A pause between pieces, so each reaches the gateway in a read of its own
        # instead of several coalescing in the socket buffer.
        headers={
            "x-session-id": session,
            "x-mock-tokens": str(n),
            "x-mock-fault": "trickle",
            "x-mock-interval-ms": "1",
        },
        timeout=20,
    ) as r:
        assert r.status_code == 200
        body = r.read()
    datas = _sse_data(body)
    # Every event arrived whole: each payload parses, and the framing is exactly events.
    assert body.endswith(b"data: [DONE]\n\n")
    assert body.count(b"\n\n") == len(datas)
    objs = [orjson.loads(d) for d in datas[:-1]]
    assert _chat_text(datas) == content_text(model, n)
    usage_chunks = [o for o in objs if o.get("usage")]
    if client_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0]["usage"]["completion_tokens"] == n
    else:
        assert usage_chunks == []
    (rec,) = twin.records(session, 1)
    assert rec["outcome"] == "ok"
    assert rec["backend_reported_usage"]["completion"] == rec["ptc_completion_tokens"] == n
