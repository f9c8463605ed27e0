"""Usage accounting end to end on each _speedups implementation.

The completion estimate (DeltaScanner + TokenEstimator) is the part of a usage record the
_speedups code computes itself, so these tests make the backend report nothing and check
the gateway's estimate against the *other* implementation, run in this process on exactly
the text the client received: a gateway on the core is checked against the pure twin and
one on the twin against the core, so a fault in either fails a test of its own gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import httpx
import openai
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from fastproxy.mockllm.text import content_text, content_tokens
from tests.speedups.helpers import core, pure
from tests.support.waiting import wait_until

from .conftest import TwinGateway, export_from_file

pytestmark = pytest.mark.twin

MSGS = [{"role": "user", "content": "Describe a quiet morning by the river."}]
# Not an OpenAI model name: no exact tokenizer applies, so a record without backend usage
# is "estimated" on every machine, with or without the exact-tokens extra.
MODEL = "twin-local-model"


def reference_estimate(impl: str, text: str) -> int:
    """The token estimate of ``text`` by the implementation the gateway does not run
    (the pure twin when the core is not built: then only "python" runs anyway)."""
    other = pure if impl == "cython" or core is None else core
    return int(other.estimate_tokens(text))


def _content(lines: Iterator[str], count: int) -> tuple[str, int]:
    """Read SSE lines until ``count`` content deltas were seen; their text and the count."""
    text: list[str] = []
    seen = 0
    for line in lines:
        if not line.startswith("data: {"):
            continue
        for choice in orjson.loads(line[6:]).get("choices") or ():
            piece = choice["delta"].get("content")
            if piece:
                text.append(piece)
                seen += 1
        if seen >= count:
            break
    return "".join(text), seen


def test_completion_estimated_when_the_backend_reports_none(
    twin: TwinGateway, session: str
) -> None:
    """``close_after:N``: N content events, then the backend closes cleanly, before the
    usage chunk it was asked for. The record's completion is then the gateway's estimate
    of what arrived, and the client is told the stream was cut (no [DONE])."""
    cut, tokens = 6, 40
    with httpx.stream(
        "POST",
        twin.url + "/v1/chat/completions",
        json={"model": MODEL, "stream": True, "messages": MSGS},
        headers={
            "x-session-id": session,
            "x-mock-tokens": str(tokens),
            "x-mock-fault": f"close_after:{cut}",
        },
        timeout=10,
    ) as r:
        assert r.status_code == 200
        lines = list(r.iter_lines())
    text, seen = _content(iter(lines), tokens)
    expected_text = "".join(list(content_tokens(MODEL, tokens))[:cut])
    assert (text, seen) == (expected_text, cut)
    last = orjson.loads([s for s in lines if s][-1].removeprefix("data: "))
    assert last["error"]["code"] == "stream_truncated"
    assert "data: [DONE]" not in lines

    (rec,) = twin.records(session, 1)
    assert rec["outcome"] == "truncated" and rec["http_status_code"] == 200
    assert rec["backend_reported_usage"] is None
    assert rec["usage_source"] == "estimated"
    expected = reference_estimate(twin.impl, expected_text)
    assert expected > 0
    assert rec["btp_completion_tokens"] == rec["ptc_completion_tokens"] == expected


def test_usage_in_sqlite_and_over_the_admin_api(twin: TwinGateway, session: str) -> None:
    """Three requests of one session: the admin API's records and stats, and the records
    read back from the SQLite file by another process, all say what the clients saw."""
    counts = (5, 8, 13)
    reported: list[tuple[int, int]] = []  # (prompt, completion) as the client saw them
    with openai.OpenAI(base_url=twin.url + "/v1", api_key="client-key", max_retries=0) as c:
        for i, n in enumerate(counts):
            headers = {"x-session-id": session, "x-mock-tokens": str(n)}
            if i == 1:  # one stream among the JSON answers
                chunks = list(
                    c.chat.completions.create(
                        model=MODEL,
                        messages=MSGS,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_headers=headers,
                    )
                )
                usage = chunks[-1].usage
            else:
                resp = c.chat.completions.create(model=MODEL, messages=MSGS, extra_headers=headers)
                assert resp.choices[0].message.content == content_text(MODEL, n)
                usage = resp.usage
            assert usage is not None
            reported.append((usage.prompt_tokens, usage.completion_tokens))
    assert [c for _, c in reported] == list(counts)

    api_records = twin.records(session, len(counts))
    assert [r["btp_completion_tokens"] for r in api_records] == list(counts)
    assert [r["ptb_prompt_tokens"] for r in api_records] == [p for p, _ in reported]
    assert [r["streaming"] for r in api_records] == [False, True, False]

    stats = twin.get_json("/v1/usage/stats", session_id=session)
    assert stats["request_count"] == len(counts)
    assert stats["outcome_counts"] == {"ok": len(counts)}
    assert stats["total_tokens"] == sum(p + c for p, c in reported)

    on_disk = export_from_file(twin.db, session)
    by_id = {r["id"]: r for r in on_disk}
    assert sorted(by_id) == sorted(r["id"] for r in api_records)
    for rec in api_records:
        assert by_id[rec["id"]] == rec


def test_client_abort_mid_stream_is_counted(
    twin: TwinGateway, session: str, mock: MockLLMServer
) -> None:
    """A client that leaves after a few events: the record says client_aborted with the
    200 it had, counts at least what the client read, and the backend stream is ended."""
    read, tokens = 5, 100_000
    aborted_before = mock.stats.streams_aborted
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            twin.url + "/v1/chat/completions",
            json={"model": MODEL, "stream": True, "messages": MSGS},
            # Long and paced: the stream is still running when the client leaves.
            headers={
                "x-session-id": session,
                "x-mock-tokens": str(tokens),
                "x-mock-interval-ms": "5",
            },
        ) as r,
    ):
        assert r.status_code == 200
        text, seen = _content(r.iter_lines(), read)
        # Leaving the block unread closes the connection: the client is gone.
    assert seen == read and text == "".join(islice(content_tokens(MODEL, tokens), read))

    (rec,) = twin.records(session, 1)
    assert rec["outcome"] == "client_aborted" and rec["http_status_code"] == 200
    assert rec["backend_reported_usage"] is None
    # What the backend sent is at least what the client read; what reached the client is
    # never more than what the backend sent.
    assert rec["btp_completion_tokens"] >= reference_estimate(twin.impl, text) > 0
    assert rec["ptc_completion_tokens"] <= rec["btp_completion_tokens"]
    stats = twin.get_json("/v1/usage/stats", session_id=session)
    assert stats["outcome_counts"] == {"client_aborted": 1}
    # The gateway closed its upstream stream too, instead of draining 100,000 tokens.
    wait_until(
        lambda: mock.stats.streams_aborted == aborted_before + 1,
        what="the mock to see its stream aborted",
    )
