"""Probes and scheduling over real sockets: start-up answer, status classes, Retry-After,
no double probes, the concurrency cap, shared URLs, credentials, DNS failures, clean stop."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

from tests.conftest import backend_for
from tests.support.waiting import wait_until

FAST = {
    "ping": {"interval_seconds": 0.1, "timeout_seconds": 1},
    "http": {"interval_seconds": 0.1, "timeout_seconds": 1},
}


def health(gw) -> dict:
    r = httpx.get(gw.url + "/internal/health", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    return r.json()


def models_requests(mock) -> list:
    return [r for r in mock.stats.requests if r.path == "/v1/models"]


def test_first_answer_is_real_and_the_seed_curl_examples_work(gateway_factory, mock_llm) -> None:
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            }
        }
    )
    # No waiting: start() returned after the first round, so this answer is measured.
    doc = health(gw)
    assert doc["status"] == "ok"
    (ep,) = doc["endpoint_health"]["endpoints"]  # one URL, shared by both instances
    assert sorted(ep["backends_using_url"]) == ["anthropic.1", "openai.1"]
    assert ep["is_healthy"] is True and ep["http_check_success"] is True
    assert ep["last_http_status_code"] == 200 and ep["last_http_latency_ms"] > 0
    assert ep["ping_status"] == "ok" and ep["ping_check_success"] is True  # root: raw ICMP
    for key in (
        "last_ping_check_timestamp",
        "last_http_check_timestamp",
        "last_successful_ping_timestamp",
        "last_successful_http_timestamp",
    ):
        assert ep[key].endswith("Z"), key
    expected_keys = {
        "api_url",
        "is_healthy",
        "ping_check_success",
        "ping_status",
        "http_check_success",
        "last_ping_check_timestamp",
        "last_http_check_timestamp",
        "last_successful_ping_timestamp",
        "last_successful_http_timestamp",
        "consecutive_ping_failures",
        "consecutive_http_failures",
        "last_ping_latency_ms",
        "last_http_latency_ms",
        "last_http_status_code",
        "last_ping_error",
        "last_http_error",
        "backends_using_url",
    }
    assert expected_keys <= set(ep)
    assert {b["name"] for b in doc["endpoint_health"]["backends"]} == {"openai.1", "anthropic.1"}
    for b in doc["endpoint_health"]["backends"]:
        assert {
            "name",
            "api_url",
            "backend_type",
            "is_endpoint_healthy",
            "circuit_state",
            "consecutive_failures",
            "open_until",
        } <= set(b)
    assert doc["storage"].keys() >= {"usage_db", "queue_depth", "dropped_records", "write_errors"}

    # The seed document's examples, verbatim apart from the port.
    url = f"http://localhost:{gw.port}/internal/health"
    if shutil.which("curl") and shutil.which("jq"):
        out = subprocess.run(
            f"curl -s \"{url}\" | jq '.endpoint_health'",
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert json.loads(out)["summary"]["total_endpoints"] == 1
        out = subprocess.run(
            f"curl -s \"{url}\" | jq '.endpoint_health.summary'",
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        summary = json.loads(out)
    else:
        summary = httpx.get(url, timeout=5).json()["endpoint_health"]["summary"]
    assert summary == {"total_endpoints": 1, "healthy_endpoints": 1, "unhealthy_endpoints": 0}


def test_probe_uses_the_backends_credentials_and_never_costs_tokens(
    gateway_factory, mock_factory
) -> None:
    oa, an = mock_factory(), mock_factory()
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(oa), "anthropic.1": backend_for(an, "anthropic")},
            "health_check": FAST,
        }
    )
    wait_until(lambda: models_requests(oa) and models_requests(an), what="a probe on each")
    o = models_requests(oa)[-1]
    assert (
        o.method == "GET" and dict(o.headers)["authorization"] == "Bearer sk-backend-openai-secret"
    )
    a = models_requests(an)[-1]
    assert dict(a.headers)["x-api-key"] == "sk-backend-anthropic-secret"
    assert "anthropic-version" in dict(a.headers)
    for mock in (oa, an):  # probes only ever ask for the model list
        assert set(mock.stats.requests_by_path) == {"/v1/models"}
    assert gw.health.endpoint_of["openai.1"].http_ok


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_path_errors_are_misconfigured_not_unhealthy(
    gateway_factory, mock_factory, server_loop, status: int
) -> None:
    m = mock_factory()
    server_loop.call(lambda: m.set_behaviour(path_prefix="/v1/models", status=status))
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(m, models=["gpt-4o"])},
            "health_check": {**FAST, "http": {**FAST["http"], "failure_threshold": 1}},
        }
    )
    wait_until(lambda: len(models_requests(m)) >= 3, what="several probes")
    doc = health(gw)
    (ep,) = doc["endpoint_health"]["endpoints"]
    assert ep["is_healthy"] is True and ep["condition"] == "misconfigured"
    assert ep["last_http_status_code"] == status and ep["consecutive_http_failures"] == 0
    assert str(status) in ep["last_http_error"]
    assert doc["endpoint_health"]["backends"][0]["circuit_state"] == "closed"
    assert doc["status"] == "degraded"  # a backend we cannot use is worth an alert


def test_429_is_rate_limited_and_retry_after_is_honoured(
    gateway_factory, mock_factory, server_loop
) -> None:
    m = mock_factory()
    gw = gateway_factory(
        {"backends": {"openai.1": backend_for(m, models=["gpt-4o"])}, "health_check": FAST}
    )
    wait_until(lambda: models_requests(m), what="a regular probe")
    server_loop.call(lambda: m.set_behaviour(path_prefix="/v1/models", status=429, retry_after=1.5))
    ep = gw.health.endpoint_of["openai.1"]
    wait_until(lambda: ep.http_kind == "rate_limited", what="a 429 probe")
    limited_at = models_requests(m)[-1].received_at
    server_loop.call(m.clear_behaviour)
    wait_until(
        lambda: models_requests(m)[-1].received_at > limited_at, timeout=10, what="the next probe"
    )
    nxt = min(r.received_at for r in models_requests(m) if r.received_at > limited_at)
    assert nxt - limited_at >= 1.4, "a probe went out before Retry-After passed"
    assert ep.is_healthy and ep.http_failures == 0
    doc = health(gw)
    assert doc["endpoint_health"]["backends"][0]["circuit_state"] == "closed"


def test_a_slow_probe_is_never_started_twice(gateway_factory, mock_factory, server_loop) -> None:
    m = mock_factory()
    server_loop.call(lambda: m.set_behaviour(path_prefix="/v1/models", ttfb_ms=600))
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(m, models=["gpt-4o"])},
            "health_check": {
                "ping": {"enabled": False},
                "http": {"interval_seconds": 0.05, "timeout_seconds": 5},
            },
        }
    )
    ep = gw.health.endpoint_of["openai.1"]
    t0 = time.monotonic()
    wait_until(lambda: ep.skipped_ticks >= 10, what="ticks skipped while a probe runs")
    elapsed = time.monotonic() - t0
    # Each probe takes >= 0.6 s, so sequential probes fit elapsed/0.6 + 1 at most.
    assert len(models_requests(m)) <= elapsed / 0.6 + 1.5
    assert m.stats.open_connections <= 1


def test_concurrency_cap(gateway_factory, mock_factory, server_loop) -> None:
    mocks = [mock_factory() for _ in range(4)]
    for m in mocks:
        server_loop.call(lambda m=m: m.set_behaviour(path_prefix="/v1/models", ttfb_ms=300))
    t0 = time.monotonic()
    gw = gateway_factory(
        {
            "backends": {
                f"openai.{i}": backend_for(m, models=["gpt-4o"]) for i, m in enumerate(mocks)
            },
            "health_check": {
                "ping": {"enabled": False},
                "max_concurrent_probes": 2,
                "http": {"interval_seconds": 60, "timeout_seconds": 5},
            },
        }
    )
    started_in = time.monotonic() - t0
    health_svc = gw.health
    assert health_svc.peak_in_flight == 2
    assert started_in >= 0.55  # two waves of 0.3 s: the first round finished inside start()
    assert all(ep.http_ok for ep in health_svc.endpoints.values())


def test_dns_failure_is_a_probe_failure_with_its_reason(gateway_factory) -> None:
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": {
                    "api_url": "http://no-such-host.invalid:9/v1",
                    "api_key": "k",
                    "models": ["gpt-4o"],
                }
            },
            "health_check": {"http": {"failure_threshold": 1}},
        }
    )
    (ep,) = health(gw)["endpoint_health"]["endpoints"]
    assert ep["is_healthy"] is False and ep["http_check_success"] is False
    assert "no-such-host.invalid" in ep["last_ping_error"] and "DNS" in ep["last_ping_error"]
    assert ep["last_http_error"].startswith("connect")


def test_unreachable_port_fails_fast_and_breaker_opens_from_probes(
    gateway_factory, mock_factory
) -> None:
    m = mock_factory()
    dead = m.url.replace(str(m.port), "9")  # discard port on loopback: connection refused
    gw = gateway_factory(
        {
            "backends": {"openai.1": {"api_url": dead, "api_key": "k", "models": ["gpt-4o"]}},
            "health_check": {**FAST, "http": {**FAST["http"], "failure_threshold": 2}},
        }
    )
    health_svc = gw.health
    wait_until(lambda: health_svc.circuit_state("openai.1") == "open", what="breaker opened")
    ep = health_svc.endpoint_of["openai.1"]
    assert not ep.is_healthy and ep.ping_status == "ok"  # the host answers ICMP; HTTP is down


def test_stop_leaves_no_probe_tasks_or_timers(gateway_factory, mock_llm, server_loop) -> None:
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)}, "health_check": FAST})
    health_svc = gw.health
    wait_until(lambda: len(models_requests(mock_llm)) >= 2, what="scheduled probes")
    gw.stop()

    def leftovers() -> list[str]:
        import asyncio

        return [
            t.get_name()
            for t in asyncio.all_tasks(server_loop.loop)
            if t.get_name().startswith("fastproxy-health")
        ]

    assert server_loop.call(leftovers) == []
    ep = health_svc.endpoint_of["openai.1"]
    assert ep.ping_timer is None and ep.http_timer is None
    count = len(models_requests(mock_llm))
    # The plane's fan-out is fixed (a cut request still reports while the gateway stops),
    # so a stopped service keeps hearing outcomes: one that opens the breaker arms no timer.
    assert health_svc in gw.plane.reporter.attempts

    def report_failures() -> bool:
        for _ in range(5):
            health_svc.attempt_finished("openai.1", 500, None)
        return not health_svc._breaker_timers

    assert server_loop.call(report_failures)
    assert health_svc.circuit_state("openai.1") == "open"
    # nothing probes after stop: a few intervals later the count has not moved
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert len(models_requests(mock_llm)) == count
        time.sleep(0.05)


def test_probe_uses_the_backends_tls_settings(gateway_factory, mock_factory, tmp_path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    trusted, untrusted = mock_factory(ssl=ctx), mock_factory(ssl=ctx)
    gw = gateway_factory(
        {
            "backends": {
                "openai.1": {
                    "api_url": trusted.url,
                    "api_key": "k",
                    "models": ["a"],
                    "ca_bundle": str(ca_path),
                },
                "openai.2": {"api_url": untrusted.url, "api_key": "k", "models": ["b"]},
            },
            "health_check": {"ping": {"enabled": False}, "http": {"failure_threshold": 1}},
        }
    )
    ok = gw.health.endpoint_of["openai.1"]
    bad = gw.health.endpoint_of["openai.2"]
    assert ok.http_ok and ok.http_code == 200
    assert not bad.is_healthy and bad.http_code is None
    assert bad.http_error.startswith("tls") and "certificate" in bad.http_error.lower()
    assert gw.health.circuit_state("openai.2") == "open"
