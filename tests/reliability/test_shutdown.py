"""A graceful stop whose drain deadline cuts requests still leaves exactly one usage record
per request, and every client an answer in its dialect."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from fastproxy.mockllm import MockLLMServer
from fastproxy.storage.usage_schema import load_record
from tests.conftest import RunningGateway, backend_for
from tests.reliability.conftest import (
    CHAT_PATH,
    MESSAGES_PATH,
    RawClient,
    assert_error,
    backend_requests,
    payload,
    request,
)
from tests.support.waiting import wait_until

SLOW_STREAM = b"x-mock-tokens: 200\r\nx-mock-interval-ms: 100\r\n"
SLOW_HEAD = b"x-mock-ttfb-ms: 10000\r\n"


def _rows(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT record FROM usage_records").fetchall()
    recs = [load_record(text) for (text,) in rows]
    return [(r["outcome"], r["http_status_code"], r["frontend_type"]) for r in recs]


def test_requests_cut_at_the_drain_deadline_are_all_recorded(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> None:
    """Sends three slow streams (OpenAI, Anthropic, OpenAI) and two requests whose backend
    takes 10 s to answer, then stops the gateway with a 0.3 s drain deadline: the streams
    end with a `gateway_shutdown` error event and no terminal event, the waiting requests
    get a 503 in their dialect, and the database holds five records, all
    `gateway_shutdown`."""
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            "default_backend": "openai.1",
            "timeouts": {"drain_seconds": 0.3},
            "usage_tracking": {"flush_interval_seconds": 0.05},
        }
    )
    db = Path(gw.gateway.config.state_dir) / "usage.db"
    streams = [
        (CHAT_PATH, RawClient(gw.port)),
        (MESSAGES_PATH, RawClient(gw.port)),
        (CHAT_PATH, RawClient(gw.port)),
    ]
    waiting = [(CHAT_PATH, RawClient(gw.port)), (MESSAGES_PATH, RawClient(gw.port))]
    for path, client in streams:
        client.send(request(path, payload(path, stream=True), extra=SLOW_STREAM))
    for path, client in waiting:
        client.send(request(path, extra=SLOW_HEAD))
    wait_until(
        lambda: backend_requests(mock_llm) == 5 and mock_llm.stats.streams_started == 3,
        what="five requests in flight",
    )
    gw.stop()
    for _path, client in streams:
        resp = client.read()
        assert resp.status == 200
        last = [e for e in resp.body.split(b"\n\n") if e.strip()][-1]
        assert b"gateway_shutdown" in last or b"shutting down" in last, last
        assert b"[DONE]" not in resp.body and b"message_stop" not in resp.body
        client.sock.close()
    for path, client in waiting:
        assert_error(client.read(), 503, path, "gateway_shutdown")
        client.sock.close()
    rows = _rows(db)
    assert len(rows) == 5, rows
    assert {r[0] for r in rows} == {"gateway_shutdown"}, rows
    assert sorted(r[1] for r in rows) == [200, 200, 200, 503, 503]
    assert sorted(r[2] for r in rows) == ["anthropic", "anthropic", "openai", "openai", "openai"]
