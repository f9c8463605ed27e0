"""The usage store and its queries, on a real SQLite file, through the real views."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastproxy.admin.routes import AdminRequest, Router
from fastproxy.admin.usage_api import register_disabled_usage_routes, register_usage_routes
from fastproxy.storage.usage_queries import FilterError, parse_filters
from fastproxy.storage.usage_store import UsageStore


def record(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": uuid.uuid4().hex, "timestamp": "2025-12-01T10:00:00.000Z", "session_id": "s1",
        "turn_number": 1, "frontend_type": "openai", "backend": "openai.1",
        "backend_type": "openai", "model_requested": "gpt-4", "model_used": "gpt-4",
        "streaming": False, "http_status_code": 200, "outcome": "ok", "attempts": 1,
        "tool_call_count": 0, "tool_names": [], "ctp_prompt_tokens": 10, "ptb_prompt_tokens": 10,
        "btp_completion_tokens": 5, "ptc_completion_tokens": 5,
        "backend_reported_usage": {"prompt": 11, "completion": 5, "total": 16, "cached": 0,
                                   "cache_write": None, "reasoning": None, "cost": None},
        "usage_source": "backend", "ttft_ms": None, "backend_ttfb_ms": 2.0,
        "total_duration_ms": 10.0, "proxy_overhead_ms": 0.5, "stream_tps": None, "cost": 0.001,
        "cost_source": "price_table", "replacement": None, "proxy_user": None, "user_agent": "t",
    }
    base.update(over)
    return base


@pytest.fixture
def store(tmp_path: Path):
    s = UsageStore(tmp_path / "usage.db", flush_interval=0.05, max_queue=10_000, retention_days=0)
    s.start()
    yield s
    s.stop()


def fill(store: UsageStore, records: list[dict[str, Any]]) -> None:
    for r in records:
        assert store.submit(r)
    store.stop()  # flushes everything
    store.start()


async def call(router: Router, path: str, **query: str) -> tuple[int, Any]:
    handler, params, _ = router.resolve("GET", path)
    assert handler is not None
    req = AdminRequest("GET", path, {k: [v] for k, v in query.items()}, {}, b"", "127.0.0.1",
                       params)
    resp = await handler(req)
    if resp.stream is not None:
        body = b"".join([piece async for piece in resp.stream])
        return resp.status, body
    return resp.status, orjson.loads(resp.body)


@pytest.fixture
def data(store: UsageStore) -> Router:
    durations = [float(d) for d in range(1, 101)]  # 1..100 ms: nearest-rank is obvious
    recs = [record(total_duration_ms=d, timestamp=f"2025-12-0{1 + i % 3}T1{i % 10}:00:00.000Z",
                   session_id=f"s{i % 7}") for i, d in enumerate(durations)]
    recs.append(record(backend="anthropic.1", backend_type="anthropic", frontend_type="anthropic",
                       model_requested="claude-x", model_used="claude-x", http_status_code=429,
                       outcome="rejected", cost=None, total_duration_ms=None, proxy_user="alice",
                       timestamp="2025-12-07T23:30:00.000Z", ctp_prompt_tokens=40,
                       ptb_prompt_tokens=30, btp_completion_tokens=20, ptc_completion_tokens=7,
                       tool_call_count=2, backend_reported_usage=None))
    fill(store, recs)
    router = Router()
    register_usage_routes(router, store)
    return router


async def test_stats_shape_and_numbers(data: Router) -> None:
    status, s = await call(data, "/v1/usage/stats")
    assert status == 200
    assert s["request_count"] == 101
    assert s["unique_sessions"] == 7  # s0..s6; the extra record reuses s1
    assert s["total_prompt_tokens"] == 100 * 10 + 30
    assert s["total_completion_tokens"] == 100 * 5 + 20
    assert s["total_tokens"] == s["total_prompt_tokens"] + s["total_completion_tokens"]
    assert s["backend_reported_total_tokens"] == 100 * 16
    assert s["cost_record_count"] == 100 and s["total_cost"] == pytest.approx(0.1)
    assert s["total_tool_calls"] == 2
    assert s["status_code_counts"] == {"200": 100, "429": 1}
    d = s["duration_stats"]
    assert (d["count"], d["min_ms"], d["max_ms"], d["avg_ms"]) == (100, 1.0, 100.0, 50.5)
    assert (d["p50_ms"], d["p95_ms"], d["p99_ms"]) == (50.0, 95.0, 99.0)  # nearest rank
    assert s["ttft_stats"] is None
    assert set(s["by_backend"]) == {"openai.1", "anthropic.1"}
    assert s["by_model"]["claude-x"]["request_count"] == 1
    for key in ("completion_tokens_per_second", "time_window_seconds", "proxy_overhead_stats",
                "stream_tps_stats", "filters", "backend_reported_prompt_tokens",
                "backend_reported_completion_tokens"):
        assert key in s


@pytest.mark.parametrize(
    ("query", "count"),
    [({"backend_type": "anthropic"}, 1), ({"backend": "openai.1"}, 100), ({"model": "gpt-4"}, 100),
     ({"frontend_type": "anthropic"}, 1), ({"session_id": "s0"}, 15), ({"proxy_user": "alice"}, 1),
     ({"http_status_code": "429"}, 1), ({"start_date": "2025-12-03T00:00:00Z"}, 34),
     ({"end_date": "2025-12-01"}, 34), ({"start_date": "2025-12-02", "end_date": "2025-12-02"}, 33),
     ({"day_of_week": "6"}, 1), ({"hour_of_day": "23"}, 1), ({"hour_of_day": "10"}, 10)],
)
async def test_each_filter(data: Router, query: dict[str, str], count: int) -> None:
    status, s = await call(data, "/v1/usage/stats", **query)
    assert status == 200 and s["request_count"] == count, s["filters"]


@pytest.mark.parametrize(("leg", "prompt", "completion"),
                         [("CTP", 1040, 0), ("PTB", 1030, 0), ("BTP", 0, 520), ("PTC", 0, 507)])
async def test_leg_projects_one_point(data: Router, leg: str, prompt: int, completion: int) -> None:
    _, s = await call(data, "/v1/usage/stats", leg=leg)
    assert (s["total_prompt_tokens"], s["total_completion_tokens"]) == (prompt, completion)
    assert s["request_count"] == 101  # never duplicated per leg


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [("/v1/usage/stats", {"start_date": "yesterday"}, "start_date"),
     ("/v1/usage/stats", {"leg": "XYZ"}, "leg"),
     ("/v1/usage/stats", {"day_of_week": "7"}, "day_of_week"),
     ("/v1/usage/stats", {"http_status_code": "abc"}, "http_status_code"),
     ("/v1/usage/stats", {"colour": "red"}, "colour"),
     ("/v1/usage/recent", {"limit": "0"}, "limit"),
     ("/v1/usage/recent", {"limit": "1001"}, "limit"),
     ("/v1/usage/recent", {"offset": "-1"}, "offset"),
     ("/v1/usage/export", {"format": "xml"}, "format")],
)
async def test_bad_parameters_400_naming_the_parameter(data: Router, path: str,
                                                       query: dict[str, str], param: str) -> None:
    status, body = await call(data, path, **query)
    assert status == 400 and body["detail"].startswith(param)


async def test_recent_newest_first_with_paging(data: Router) -> None:
    _, page = await call(data, "/v1/usage/recent", limit="10", offset="0")
    assert page["total"] == 101 and page["limit"] == 10 and len(page["records"]) == 10
    assert page["records"][0]["backend"] == "anthropic.1"  # the newest (Dec 7)
    stamps = [r["timestamp"] for r in page["records"]]
    assert stamps == sorted(stamps, reverse=True)
    _, last = await call(data, "/v1/usage/recent", limit="10", offset="100")
    assert len(last["records"]) == 1


async def test_export_three_formats_oldest_first(data: Router) -> None:
    _, raw = await call(data, "/v1/usage/export", format="json")
    doc = orjson.loads(raw)
    assert doc["version"] == 1 and doc["record_count"] == 101 and len(doc["records"]) == 101
    stamps = [r["timestamp"] for r in doc["records"]]
    assert stamps == sorted(stamps)
    _, nd = await call(data, "/v1/usage/export", format="ndjson", backend_type="openai")
    assert len([orjson.loads(line) for line in nd.splitlines()]) == 100
    _, text = await call(data, "/v1/usage/export", format="csv")
    rows = list(csv.DictReader(io.StringIO(text.decode())))
    assert len(rows) == 101 and rows[-1]["backend"] == "anthropic.1"


async def test_disabled_routes_say_so() -> None:
    router = Router()
    register_disabled_usage_routes(router)
    status, body = await call(router, "/v1/usage/stats")
    assert status == 503 and "disabled" in body["detail"]


def test_parse_filters_naive_dates_are_utc() -> None:
    a = parse_filters({"start_date": ["2025-12-01T00:00:00"]})
    b = parse_filters({"start_date": ["2025-12-01T00:00:00Z"]})
    assert a.args == b.args
    with pytest.raises(FilterError) as err:
        parse_filters({"start_date": ["2025-12-02"], "end_date": ["2025-12-01"]})
    assert err.value.param == "end_date"
