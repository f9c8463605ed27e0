"""Activity tracking end to end: real streams through the gateway, read on the admin port.

Byte counts are checked exactly: bytes_tx against what each client received, bytes_rx
against what the mock sent. Streams are paced by the mock (x-mock-interval-ms), so every
stream has quiet moments in which all three figures must agree to the byte.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from tests.support.waiting import wait_until

from .conftest import Admin

STREAMS = 20


def chat(model: str, *, include_usage: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def connections(admin: Admin) -> list[dict[str, Any]]:
    doc = httpx.get(admin.url + "/v1/diagnostics", timeout=10).json()
    return [c for inst in doc["instances"] for c in (inst["activity"] or {}).get("connections", [])]


def lifetime(admin: Admin) -> tuple[int, int]:
    doc = httpx.get(admin.url + "/v1/diagnostics", timeout=10).json()
    acts = [inst["activity"] for inst in doc["instances"]]
    return (sum(a["lifetime_bytes_rx"] for a in acts), sum(a["lifetime_bytes_tx"] for a in acts))


def active(admin: Admin) -> int:
    r = httpx.get(admin.url + "/v1/diagnostics/activity", timeout=10).json()
    return r["total_active_connections"]  # type: ignore[no-any-return]


@pytest.fixture
def tracked(admin_factory: Callable[..., Admin]) -> Admin:
    return admin_factory({"enable_activity_tracking": True})


class Client:
    """One streaming request in a thread, counting body bytes as they arrive."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.url, self.body, self.headers = url, body, headers
        self.received = 0
        self.data = bytearray()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", self.url, json=self.body, headers=self.headers, timeout=60
            ) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    self.data += chunk
                    self.received += len(chunk)
        finally:
            self.done.set()


def test_twenty_concurrent_streams_counted_exactly(tracked: Admin, mock_llm: Any) -> None:
    admin = tracked
    rx0, tx0 = lifetime(admin)
    clients = [
        Client(
            admin.gw.url + "/v1/chat/completions",
            chat(f"act-model-{i}"),
            {
                "x-session-id": "session-A" if i % 2 == 0 else "session-B",
                "x-mock-tokens": "6",
                "x-mock-interval-ms": "300",
            },
        )
        for i in range(STREAMS)
    ]
    with ThreadPoolExecutor(STREAMS) as pool:
        futures = [pool.submit(c.run) for c in clients]
        by_model = {c.body["model"]: c for c in clients}

        def consistent() -> list[dict[str, Any]] | None:
            conns = connections(admin)
            if len(conns) != STREAMS:
                return None
            for c in conns:
                client = by_model[c["model"]]
                # The mock's bytes reach the client unchanged (the client asked for usage
                # itself, so nothing is stripped): rx == tx == what the client holds.
                if not (c["bytes_tx"] == client.received == c["bytes_rx"] > 0):
                    return None
            return conns

        conns = wait_until(
            consistent, timeout=30, what="20 live entries agreeing with their clients to the byte"
        )
        assert len({c["connection_id"] for c in conns}) == STREAMS
        sessions = sorted(c["session_id"] for c in conns)
        assert sessions == ["session-A"] * 10 + ["session-B"] * 10
        assert {c["connection_type"] for c in conns} == {"streaming"}
        assert all(c["duration_seconds"] >= 0 and c["started_at_iso"].endswith("Z") for c in conns)
        for f in futures:
            f.result()
    wait_until(lambda: active(admin) == 0, what="entries to leave on completion")
    total = sum(c.received for c in clients)
    assert all(c.data.rstrip().endswith(b"data: [DONE]") for c in clients)
    assert lifetime(admin) == (rx0 + total, tx0 + total)


def test_rx_counts_what_the_backend_sent_when_the_gateway_strips_usage(
    tracked: Admin, mock_llm: Any
) -> None:
    admin = tracked
    headers = {"x-mock-tokens": "5"}
    # What the mock sends for the request the gateway forwards (include_usage injected).
    direct = httpx.post(mock_llm.url + "/chat/completions", json=chat("strip-me"), headers=headers)
    sent_by_mock = len(direct.content)
    rx0, tx0 = lifetime(admin)
    r = httpx.post(
        admin.gw.url + "/v1/chat/completions",
        json=chat("strip-me", include_usage=False),
        headers=headers,
    )
    assert b'"usage"' not in r.content.replace(b'"usage":null', b"")
    rx1, tx1 = lifetime(admin)
    assert tx1 - tx0 == len(r.content)
    assert rx1 - rx0 == sent_by_mock > len(r.content)


def test_non_streaming_entry_and_totals(tracked: Admin) -> None:
    admin = tracked
    rx0, tx0 = lifetime(admin)
    box: dict[str, httpx.Response] = {}
    t = threading.Thread(
        target=lambda: box.setdefault(
            "r",
            httpx.post(
                admin.gw.url + "/v1/chat/completions",
                json={"model": "slow-json", "messages": [{"role": "user", "content": "x"}]},
                headers={"x-mock-ttfb-ms": "1500"},
                timeout=30,
            ),
        )
    )
    t.start()
    try:
        conns = wait_until(lambda: connections(admin), what="the JSON request's entry")
        assert conns[0]["connection_type"] == "non_streaming"
        assert (conns[0]["model"], conns[0]["bytes_rx"], conns[0]["bytes_tx"]) == (
            "slow-json",
            0,
            0,
        )
    finally:
        t.join(30)
    wait_until(lambda: active(admin) == 0, what="the entry to leave")
    body = len(box["r"].content)
    assert lifetime(admin) == (rx0 + body, tx0 + body)


def _raw_stream(port: int, body: dict[str, Any], headers: dict[str, str]) -> socket.socket:
    data = orjson.dumps(body)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n"
        % len(data)
        + extra
        + b"\r\n"
        + data
    )
    return sock


def test_entry_leaves_on_client_abort(tracked: Admin) -> None:
    admin = tracked
    sock = _raw_stream(
        admin.gw.port, chat("abort-me"), {"x-mock-tokens": "100000", "x-mock-interval-ms": "20"}
    )
    try:
        wait_until(
            lambda: any(c["bytes_tx"] > 0 for c in connections(admin)), what="the stream to flow"
        )
    finally:
        sock.close()
    wait_until(lambda: active(admin) == 0, what="the entry to leave after the abort")
    assert admin.plane.activity.closed_total == 1


def test_entry_leaves_on_backend_reset(tracked: Admin) -> None:
    admin = tracked
    r = httpx.post(
        admin.gw.url + "/v1/chat/completions",
        json=chat("reset-me"),
        headers={"x-mock-tokens": "50", "x-mock-fault": "reset_after:3"},
        timeout=30,
    )
    assert b"stream_truncated" in r.content
    wait_until(lambda: active(admin) == 0, what="the entry to leave after the reset")
    rx, tx = lifetime(admin)
    assert rx > 0 and tx > 0
    assert httpx.post(admin.gw.url + "/v1/chat/completions", json=chat("after")).status_code == 200


def test_silent_stream_is_swept_slow_live_one_is_not(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory(
        {
            "enable_activity_tracking": True,
            "activity": {"stale_timeout_seconds": 1.0, "sweep_interval_seconds": 0.1},
        }
    )
    silent = _raw_stream(admin.gw.port, chat("silent"), {"x-mock-ttft-ms": "60000"})
    slow = Client(
        admin.gw.url + "/v1/chat/completions",
        chat("slow"),
        {"x-mock-tokens": "40", "x-mock-interval-ms": "250"},
    )
    thread = threading.Thread(target=slow.run)
    thread.start()
    try:
        wait_until(
            lambda: {c["model"] for c in connections(admin)} == {"silent", "slow"},
            what="both entries",
        )
        wait_until(
            lambda: {c["model"] for c in connections(admin)} == {"slow"},
            timeout=10,
            what="the silent stream to be swept",
        )
        assert admin.plane.activity.swept_total == 1
        # Let the slow stream live well past the stale timeout (measured by its own bytes:
        # 14 events at 250 ms is 3.5 s), then it must still be listed.
        first = slow.received
        wait_until(
            lambda: slow.data.count(b"data: ") >= 14,
            timeout=20,
            what="the slow stream to run for 3.5 s",
        )
        conns = connections(admin)
        assert [c["model"] for c in conns] == ["slow"]
        assert conns[0]["duration_seconds"] > 3.0
        assert slow.received > first
    finally:
        silent.close()
        thread.join(30)
    wait_until(lambda: active(admin) == 0, what="the slow stream's entry to leave")
    assert admin.plane.activity.swept_total == 1
