"""The API kind, requests that got no status, and stream rates, end to end: the official
SDKs (or a raw socket, for a client that leaves) → a real gateway → the mock LLM → the
store, then every view of it: /v1/usage/stats, /recent, /export in its three formats, and
`fastproxy usage` reading the same database file."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until
from tests.usage.test_e2e_records import MSGS, oai, recent, tracked_tree
from tests.usage.test_store_cli import fastproxy

# The records one test's traffic leaves, by API kind (the stream is a chat without /v1).
KINDS = {
    "chat": 2,
    "responses": 1,
    "embeddings": 1,
    "completions": 1,
    "messages": 1,
    "count_tokens": 1,
}


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer) -> RunningGateway:
    return gateway_factory(
        tracked_tree(
            {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            default_backend="openai.1",
        )
    )


def get(gw: RunningGateway, path: str, **params: str) -> httpx.Response:
    r = httpx.get(gw.url + path, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r


def stats(gw: RunningGateway, **params: str) -> dict[str, Any]:
    return get(gw, "/v1/usage/stats", **params).json()  # type: ignore[no-any-return]


def exports(gw: RunningGateway, **params: str) -> dict[str, list[dict[str, Any]]]:
    """The same selection in the three export formats, each parsed back to records
    (CSV cells are text: an empty one is null)."""
    doc = get(gw, "/v1/usage/export", format="json", **params).json()
    assert doc["record_count"] == len(doc["records"])
    nd = [
        orjson.loads(line)
        for line in get(gw, "/v1/usage/export", format="ndjson", **params).content.splitlines()
    ]
    rows = list(
        csv.DictReader(io.StringIO(get(gw, "/v1/usage/export", format="csv", **params).text))
    )
    return {"json": doc["records"], "ndjson": nd, "csv": rows}


def db_path(gw: RunningGateway) -> Path:
    return Path(gw.gateway.usage.path)


def cli_json(gw: RunningGateway, *flags: str) -> dict[str, Any]:
    out = fastproxy("usage", "stats", "--db", str(db_path(gw)), "--json", *flags)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


def cli_table(gw: RunningGateway) -> str:
    # Wide enough that rich never wraps a row: the test looks for whole phrases.
    out = subprocess.run(
        [sys.executable, "-m", "fastproxy", "usage", "stats", "--db", str(db_path(gw))],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- the API kind ----------------------------------------------------------------------
def test_every_api_kind_is_recorded_filtered_and_broken_down(gw: RunningGateway) -> None:
    with oai(gw) as client:
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
        client.responses.create(model="gpt-4o", input="hello there")
        client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
        client.completions.create(model="gpt-4o", prompt="Say hi")
    # A client whose base URL lacks /v1 calls /chat/completions: the same kind.
    with openai.OpenAI(base_url=gw.url, api_key="sk-client", max_retries=0) as bare:
        chunks = list(
            bare.chat.completions.create(
                model="gpt-4o", messages=MSGS, stream=True, extra_headers={"x-mock-tokens": "30"}
            )
        )
    assert chunks
    with anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0) as a:
        a.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSGS)
        assert a.messages.count_tokens(model="claude-haiku-4-5", messages=MSGS).input_tokens
    n = sum(KINDS.values())
    wait_until(lambda: recent(gw)["total"] == n, what=f"{n} records")

    records = recent(gw)["records"]
    assert Counter(r["api"] for r in records) == KINDS
    dialect = {"messages": "anthropic", "count_tokens": "anthropic"}
    assert all(r["frontend_type"] == dialect.get(r["api"], "openai") for r in records)
    # The fields added since come last, in the order they were added.
    assert all(list(r)[-3:] == ["api", "key_name", "team"] for r in records)

    s = stats(gw)
    assert {k: g["request_count"] for k, g in s["by_api"].items()} == KINDS
    assert s["by_api"]["embeddings"]["total_completion_tokens"] == 0
    for kind, count in KINDS.items():
        one = stats(gw, api=kind)
        assert one["request_count"] == count and one["filters"] == {"api": kind}
        assert set(one["by_api"]) == {kind}
        page = recent(gw, api=kind.upper())  # values are case-insensitive, like the types
        assert page["total"] == count and {r["api"] for r in page["records"]} == {kind}
    for fmt, got in exports(gw, api="chat").items():
        assert [r["api"] for r in got] == ["chat", "chat"], fmt
    rows = exports(gw)["csv"]
    assert (
        list(rows[0])[-3:] == ["api", "key_name", "team"]
        and Counter(r["api"] for r in rows) == KINDS
    )

    # The stream's rate is tokens per second, and its keys say so.
    stream = next(r for r in records if r["streaming"])
    tps = s["stream_tps_stats"]
    assert tps == {
        "count": 1,
        "min_tps": stream["stream_tps"],
        "max_tps": stream["stream_tps"],
        "avg_tps": stream["stream_tps"],
        "p50_tps": stream["stream_tps"],
        "p95_tps": stream["stream_tps"],
        "p99_tps": stream["stream_tps"],
    }
    assert set(s["ttft_stats"]) == {
        "count",
        "min_ms",
        "max_ms",
        "avg_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    }

    # The CLI reads the gateway's file: the same figures, filter and breakdown.
    assert cli_json(gw, "--api", "count_tokens")["request_count"] == 1
    assert cli_json(gw)["by_api"] == s["by_api"]
    table = cli_table(gw)
    assert "by api" in table and all(kind in table for kind in KINDS)
    assert f"p50 {stream['stream_tps']:,}" in table and "tok/s" in table
    bad = fastproxy("usage", "stats", "--db", str(db_path(gw)), "--api", "chat_completions")
    assert bad.returncode == 2 and "--api" in bad.stderr
    assert recent(gw)["total"] == n  # nothing recorded twice


# -- requests that got no status -------------------------------------------------------
def _raw_request(gw: RunningGateway, extra: bytes) -> socket.socket:
    body = orjson.dumps({"model": "gpt-4o", "stream": True, "messages": MSGS})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"content-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
    return sock


def _exchange(gw: RunningGateway, ready: Callable[[Any], bool]) -> bool:
    conns = [c for c in gw.plane.connections if c.current is not None]
    return bool(conns) and ready(conns[0])


def test_aborted_requests_are_visible_and_filterable_in_every_view(gw: RunningGateway) -> None:
    # 1. A client that leaves before any status: the backend has the request, and hangs.
    sock = _raw_request(gw, b"x-mock-fault: hang\r\n")
    wait_until(
        lambda: gw.lt.call(lambda: _exchange(gw, lambda c: c.current.record.upstream_sent_at > 0)),
        what="request at the backend",
    )
    sock.close()
    wait_until(lambda: recent(gw)["total"] == 1, what="the first abort's record")
    # 2. A client that leaves mid-stream: it got 200 and part of the stream.
    sock = _raw_request(gw, b"x-mock-tokens: 100000\r\nx-mock-event-bytes: 2000\r\n")
    wait_until(
        lambda: gw.lt.call(lambda: _exchange(gw, lambda c: c.flow.write_paused)),
        what="gateway paused by the client",
    )
    sock.close()
    # 3. Two answered requests beside them.
    with oai(gw) as client:
        client.chat.completions.create(model="gpt-4o", messages=MSGS)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="gpt-4o", messages=MSGS, extra_headers={"x-mock-status": "429"}
            )
    wait_until(lambda: recent(gw)["total"] == 4, what="four records")

    records = recent(gw)["records"]
    by_outcome = Counter((r["outcome"], r["http_status_code"]) for r in records)
    assert by_outcome == {
        ("client_aborted", None): 1,
        ("client_aborted", 200): 1,
        ("ok", 200): 1,
        ("rejected", 429): 1,
    }

    s = stats(gw)
    # No code "0": the request without a status is its own bucket, after the codes.
    assert s["status_code_counts"] == {"200": 2, "429": 1, "none": 1}
    assert list(s["status_code_counts"])[-1] == "none"
    assert s["outcome_counts"] == {"client_aborted": 2, "ok": 1, "rejected": 1}
    assert s["by_backend"]["openai.1"]["error_count"] == 2  # the 429 and the one with none

    none = stats(gw, http_status_code="none")
    assert none["request_count"] == 1 and none["filters"] == {"http_status_code": "none"}
    assert none["status_code_counts"] == {"none": 1}
    aborted = stats(gw, outcome="client_aborted")
    assert aborted["request_count"] == 2 and aborted["outcome_counts"] == {"client_aborted": 2}
    assert aborted["status_code_counts"] == {"200": 1, "none": 1}
    assert stats(gw, outcome="client_aborted", http_status_code="200")["request_count"] == 1

    page = recent(gw, http_status_code="none")
    assert page["total"] == 1 and page["records"][0]["http_status_code"] is None
    assert page["records"][0]["outcome"] == "client_aborted"
    assert recent(gw, outcome="client_aborted")["total"] == 2
    for fmt, got in exports(gw, http_status_code="none").items():
        assert len(got) == 1 and got[0]["outcome"] == "client_aborted", fmt
        assert got[0]["http_status_code"] in (None, ""), fmt  # CSV: an empty cell
    for fmt, got in exports(gw, outcome="client_aborted").items():
        assert sorted(str(r["http_status_code"]) for r in got) in (["200", "None"], ["", "200"]), (
            fmt
        )

    assert cli_json(gw, "--http-status-code", "none")["request_count"] == 1
    assert cli_json(gw, "--outcome", "client_aborted")["request_count"] == 2
    table = cli_table(gw)
    assert "none: 1" in table and "client_aborted: 2" in table and "0: 1" not in table
    # "0" is not a status: it is refused, naming "none" as the way to ask.
    r = httpx.get(gw.url + "/v1/usage/stats", params={"http_status_code": "0"}, timeout=10)
    assert r.status_code == 400 and "'none'" in r.json()["detail"]
