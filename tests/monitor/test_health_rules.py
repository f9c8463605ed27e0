"""The pure rules: endpoint verdict, HTTP status classes, Retry-After, the probe's target,
and the notifier's fan-out (bounded queues, a slow subscriber dropped, the switch)."""

from __future__ import annotations

import logging

import pytest

from fastproxy.config import BackendConfig
from fastproxy.httpclient.backend import Backend
from fastproxy.monitor.health import Endpoint, verdict
from fastproxy.monitor.notify import SUBSCRIBER_QUEUE, Notifier, utc_iso
from fastproxy.monitor.probes import (
    FAILING,
    MISCONFIGURED,
    OK,
    RATE_LIMITED,
    Pinger,
    classify_status,
    parse_retry_after,
    probe_target,
)


def _ep(http_failures: int = 0, ping_status: str = "ok", http_kind: str = OK) -> Endpoint:
    b = Backend("openai.1", BackendConfig(api_url="http://127.0.0.1:9/v1"), env={})
    ep = Endpoint(b.normalized_url, [b], True, True)
    ep.http_failures, ep.ping_status, ep.http_kind = http_failures, ping_status, http_kind
    return ep


@pytest.mark.parametrize(
    ("http_failures", "ping_status", "http_kind", "expected"),
    [
        (0, "failing", OK, "healthy"),  # ping alone never decides (docs/health.md)
        (0, "unavailable", OK, "healthy"),
        (1, "ok", FAILING, "healthy"),  # below the HTTP threshold (2)
        (1, "failing", FAILING, "unhealthy"),  # both signals agree
        (2, "ok", FAILING, "unhealthy"),
        (2, "unavailable", FAILING, "unhealthy"),
        (0, "ok", MISCONFIGURED, "misconfigured"),
        (0, "failing", RATE_LIMITED, "rate_limited"),
    ],
)
def test_verdict(http_failures: int, ping_status: str, http_kind: str, expected: str) -> None:
    assert verdict(_ep(http_failures, ping_status, http_kind), True, 2) == expected


def test_verdict_without_http_probe_is_never_unhealthy() -> None:
    assert verdict(_ep(5, "failing", FAILING), False, 2) == "healthy"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, OK),
        (204, OK),
        (301, MISCONFIGURED),
        (400, MISCONFIGURED),
        (401, MISCONFIGURED),
        (403, MISCONFIGURED),
        (404, MISCONFIGURED),
        (429, RATE_LIMITED),
        (500, FAILING),
        (502, FAILING),
        (503, FAILING),
        (529, FAILING),
    ],
)
def test_status_classes(status: int, kind: str) -> None:
    assert classify_status(status) == kind


def test_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(b"7", now) == 7.0
    assert parse_retry_after(b"-3", now) == 0.0
    assert parse_retry_after(b"99999999", now) == 3600.0
    assert parse_retry_after(b"soon", now) is None
    assert parse_retry_after(None, now) is None
    date = b"Tue, 14 Nov 2023 22:13:40 GMT"  # now + 20 s
    assert parse_retry_after(date, now) == pytest.approx(20.0)


def test_probe_target() -> None:
    # The bytes the probe sends are checked on a real socket in
    # tests/httpclient/test_monitor_clients.py; the target is the pure part.
    oa = Backend("openai.1", BackendConfig(api_url="https://api.example.com/v1"), env={})
    assert probe_target(oa, "/models") == b"/v1/models"
    assert probe_target(oa, "models") == b"/v1/models"
    # Relative to api_url, not a client API path: its own /v1 is kept.
    assert probe_target(oa, "/v1/models") == b"/v1/v1/models"
    root = Backend("openai.2", BackendConfig(api_url="http://127.0.0.1:8080"), env={})
    assert probe_target(root, "health") == b"/health"


async def test_dns_failure_is_a_ping_failure_with_its_reason() -> None:
    import asyncio

    r = await Pinger(asyncio.get_running_loop()).ping("no-such-host.invalid", 2.0)
    assert r.ok is False and r.unavailable is False
    assert r.error is not None and r.error.startswith("DNS lookup of no-such-host.invalid failed")


def test_utc_iso() -> None:
    assert utc_iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(None) is None


async def test_slow_subscriber_is_dropped_and_others_keep_receiving(caplog) -> None:
    n = Notifier(outward=True, webhook_url=None)
    slow, fast = n.subscribe(), n.subscribe()
    for i in range(SUBSCRIBER_QUEUE + 5):
        n.publish("breaker", "backend", f"b{i}", "closed", "open", "x")
        while not fast.queue.empty():
            fast.queue.get_nowait()
    assert slow.dropped and not fast.dropped
    assert slow.queue.get_nowait() is None  # its stream ends at the next read
    assert n.subscriber_count == 1
    assert n.counters["subscribers_dropped"] == 1
    n.publish("endpoint", "api_url", "http://x:80/v1", "healthy", "unhealthy", "HTTP 503")
    frame = fast.queue.get_nowait()
    assert frame is not None and frame.startswith(b"event: endpoint\nid: ")
    assert b'"api_url":"http://x:80/v1"' in frame and frame.endswith(b"\n\n")
    await n.stop()


async def test_notify_backends_false_logs_but_sends_nothing(caplog) -> None:
    n = Notifier(outward=False, webhook_url="http://127.0.0.1:9/hook")
    n.start()
    sub = n.subscribe()
    with caplog.at_level(logging.WARNING, logger="fastproxy.monitor"):
        event = n.publish("breaker", "backend", "openai.1", "closed", "open", "3 failures")
    assert sub.queue.empty()
    assert set(event) == {"at", "backend", "from", "to", "reason"}
    (record,) = [r for r in caplog.records if r.name == "fastproxy.monitor"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "breaker openai.1: closed -> open (3 failures)"
    await n.stop()


async def test_intervals_are_jittered_within_ten_percent() -> None:
    import asyncio
    import random

    from fastproxy.config.schema import Config, HealthCheckConfig, HttpProbeConfig, PingConfig
    from fastproxy.monitor.health import HealthService

    cfg = Config(
        health_check=HealthCheckConfig(
            ping=PingConfig(interval_seconds=30.0), http=HttpProbeConfig(interval_seconds=60.0)
        )
    )
    svc = HealthService(cfg, {}, asyncio.get_running_loop(), rng=random.Random(7))
    pings = [svc._interval("ping") for _ in range(1000)]
    https = [svc._interval("http") for _ in range(1000)]
    assert 27.0 <= min(pings) < 27.3 and 32.7 < max(pings) <= 33.0
    assert min(https) >= 54.0 and max(https) <= 66.0
