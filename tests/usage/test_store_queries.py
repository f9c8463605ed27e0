"""The usage store's queries on a real SQLite file and on a real PostgreSQL server,
through the real views.

Hand-built data where the expected figures are obvious, plus a randomized comparison of
every stats figure against a plain-Python reference over the same records, on both the
index-walk and the fetch-and-sort percentile paths (the rollups must equal the rows).
Every test taking ``store`` runs once per store (``sqlite``, ``postgresql``): the same
records must give the same answers from both (tests/storage/test_store_parity.py
compares the two JSON documents directly).
"""

from __future__ import annotations

import csv
import io
import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from fastproxy.admin.routes import AdminRequest, Router
from fastproxy.admin.usage_api import CSV_FIELDS, DISABLED
from fastproxy.storage import usage_queries
from fastproxy.storage.pg_store import PgUsageStore
from fastproxy.storage.usage_queries import FilterError, parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.storage.pg_server import PgServer, pg_usage_store
from tests.support.monitoring import usage_router
from tests.support.waiting import wait_until


def record(**over: Any) -> dict[str, Any]:
    """A record with every field of a usage record set (docs/usage-tracking.md, "The
    record")."""
    base: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "timestamp": "2025-12-01T10:00:00.000Z",
        "session_id": "s1",
        "turn_number": 1,
        "frontend_type": "openai",
        "backend": "openai.1",
        "backend_type": "openai",
        "model_requested": "gpt-4",
        "model_used": "gpt-4",
        "streaming": False,
        "http_status_code": 200,
        "outcome": "ok",
        "attempts": 1,
        "tool_call_count": 0,
        "tool_names": [],
        "ctp_prompt_tokens": 10,
        "ptb_prompt_tokens": 10,
        "btp_completion_tokens": 5,
        "ptc_completion_tokens": 5,
        "backend_reported_usage": {
            "prompt": 11,
            "completion": 5,
            "total": 16,
            "cached": 0,
            "cache_write": None,
            "reasoning": None,
            "cost": None,
        },
        "usage_source": "backend",
        "ttft_ms": None,
        "backend_ttfb_ms": 2.0,
        "total_duration_ms": 10.0,
        "proxy_overhead_ms": 0.5,
        "stream_tps": None,
        "cost": 0.001,
        "cost_source": "price_table",
        "replacement": None,
        "proxy_user": None,
        "user_agent": "test-agent/1.0",
        "api": "chat",
        "key_name": None,
        "team": None,
    }
    base.update(over)
    return base


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsageStore]:
    s: UsageStore
    if request.param == "sqlite":
        s = UsageStore(
            tmp_path / "usage.db", flush_interval=0.05, max_queue=20_000, retention_days=0
        )
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        s = pg_usage_store(
            server.new_db(), tmp_path / "spool", max_queue=20_000, spool_max_bytes=1 << 24
        )
    s.start()
    yield s
    s.stop()


def fill(store: UsageStore, records: list[dict[str, Any]]) -> None:
    for r in records:
        assert store.submit(r)
    store.stop()  # writes everything queued
    store.start()


async def call(router: Router, path: str, **query: str) -> tuple[int, Any]:
    handler, params, _ = router.resolve("GET", path)
    assert handler is not None
    req = AdminRequest(
        "GET", path, {k: [v] for k, v in query.items()}, {}, b"", "127.0.0.1", params
    )
    resp = await handler(req)
    if resp.stream is not None:
        return resp.status, b"".join([piece async for piece in resp.stream])
    return resp.status, orjson.loads(resp.body)


@pytest.fixture
def data(store: UsageStore) -> Router:
    # 100 OpenAI records, durations 1..100 ms over Dec 1-3, sessions s0..s6; and one
    # Anthropic 429 on Sunday Dec 7 at 23:30 with its own token figures.
    recs = [
        record(
            total_duration_ms=float(d),
            timestamp=f"2025-12-0{1 + i % 3}T1{i % 10}:00:00.000Z",
            session_id=f"s{i % 7}",
        )
        for i, d in enumerate(range(1, 101))
    ]
    recs.append(
        record(
            backend="anthropic.1",
            backend_type="anthropic",
            frontend_type="anthropic",
            model_requested="claude-x",
            model_used="claude-x-2025",
            http_status_code=429,
            outcome="rejected",
            cost=None,
            total_duration_ms=None,
            proxy_user="alice",
            timestamp="2025-12-07T23:30:00.000Z",
            ctp_prompt_tokens=40,
            ptb_prompt_tokens=30,
            btp_completion_tokens=20,
            ptc_completion_tokens=7,
            tool_call_count=2,
            tool_names=["a", "b"],
            backend_reported_usage=None,
            streaming=True,
            ttft_ms=12.5,
            stream_tps=40.0,
            api="messages",
        )
    )
    fill(store, recs)
    router = usage_router(store)
    return router


async def test_stats_every_field(data: Router) -> None:
    status, s = await call(data, "/v1/usage/stats")
    assert status == 200
    assert s["request_count"] == 101
    assert s["unique_sessions"] == 7  # s0..s6; the extra record reuses s1
    assert s["total_prompt_tokens"] == 100 * 10 + 30  # default: PTB prompt
    assert s["total_completion_tokens"] == 100 * 5 + 20  # default: BTP completion
    assert s["total_tokens"] == 1030 + 520
    assert (
        s["backend_reported_prompt_tokens"],
        s["backend_reported_completion_tokens"],
        s["backend_reported_total_tokens"],
    ) == (1100, 500, 1600)
    assert s["cost_record_count"] == 100 and s["total_cost"] == pytest.approx(0.1)
    assert s["total_tool_calls"] == 2
    assert s["status_code_counts"] == {"200": 100, "429": 1}
    assert s["outcome_counts"] == {"ok": 100, "rejected": 1}
    # 520 completion tokens over the 100 records with a duration: 5,050 ms in all.
    assert s["completion_tokens_per_second"] == round(520 / 5.05, 3)
    span = datetime(2025, 12, 7, 23, 30) - datetime(2025, 12, 1, 10)
    assert s["time_window_seconds"] == span.total_seconds()
    assert s["duration_stats"] == {
        "count": 100,
        "min_ms": 1.0,
        "max_ms": 100.0,
        "avg_ms": 50.5,
        "p50_ms": 50.0,
        "p95_ms": 95.0,
        "p99_ms": 99.0,
    }
    one = {
        "count": 1,
        "min_ms": 12.5,
        "max_ms": 12.5,
        "avg_ms": 12.5,
        "p50_ms": 12.5,
        "p95_ms": 12.5,
        "p99_ms": 12.5,
    }
    assert s["ttft_stats"] == one
    # Tokens per second: every key names that unit, none claims milliseconds.
    assert s["stream_tps_stats"] == {
        "count": 1,
        "min_tps": 40.0,
        "max_tps": 40.0,
        "avg_tps": 40.0,
        "p50_tps": 40.0,
        "p95_tps": 40.0,
        "p99_tps": 40.0,
    }
    assert s["proxy_overhead_stats"]["count"] == 101
    assert s["by_backend"]["anthropic.1"] == {
        "request_count": 1,
        "total_prompt_tokens": 30,
        "total_completion_tokens": 20,
        "total_tokens": 50,
        "backend_reported_total_tokens": 0,
        "total_cost": 0.0,
        "cost_record_count": 0,
        "total_tool_calls": 2,
        "error_count": 1,
        "avg_duration_ms": None,
    }
    assert s["by_backend"]["openai.1"]["request_count"] == 100
    assert s["by_backend"]["openai.1"]["avg_duration_ms"] == 50.5
    assert set(s["by_model"]) == {"gpt-4", "claude-x-2025"}  # the model that answered
    assert s["by_api"]["messages"] == s["by_backend"]["anthropic.1"]
    assert s["by_api"]["chat"] == s["by_backend"]["openai.1"]
    assert s["filters"] == {}


async def test_empty_database_answers_zeros_and_nulls(store: UsageStore) -> None:
    router = usage_router(store)
    _, s = await call(router, "/v1/usage/stats")
    assert s["request_count"] == 0 and s["by_backend"] == {} and s["status_code_counts"] == {}
    assert s["outcome_counts"] == {} and s["by_api"] == {}
    for key in (
        "ttft_stats",
        "duration_stats",
        "proxy_overhead_stats",
        "stream_tps_stats",
        "time_window_seconds",
        "completion_tokens_per_second",
    ):
        assert s[key] is None


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ({"backend_type": "anthropic"}, 1),
        ({"backend_type": "OpenAI"}, 100),
        ({"backend": "openai.1"}, 100),
        ({"model": "gpt-4"}, 100),
        ({"model": "claude-x-2025"}, 1),  # matches model_used
        ({"model": "claude-x"}, 1),  # matches model_requested
        ({"frontend_type": "anthropic"}, 1),
        ({"session_id": "s0"}, 15),
        ({"proxy_user": "alice"}, 1),
        ({"http_status_code": "429"}, 1),
        ({"http_status_code": "none"}, 0),
        ({"outcome": "rejected"}, 1),
        ({"outcome": "OK"}, 100),
        ({"outcome": "client_aborted"}, 0),
        ({"api": "messages"}, 1),
        ({"api": "chat"}, 100),
        ({"api": "embeddings"}, 0),
        ({"start_date": "2025-12-03T00:00:00Z"}, 34),
        ({"end_date": "2025-12-01"}, 34),
        ({"end_date": "2025-12-01T10:00:00Z"}, 4),  # inclusive to the instant
        ({"start_date": "2025-12-02", "end_date": "2025-12-02"}, 33),
        ({"start_date": "2025-12-01T12:30:00", "end_date": "2025-12-01T15:00:00+00:00"}, 10),
        ({"start_date": "2025-12-08T00:30:00+01:00"}, 1),  # 23:30 UTC on the 7th
        ({"day_of_week": "6"}, 1),
        ({"day_of_week": "0"}, 34),
        ({"hour_of_day": "23"}, 1),
        ({"hour_of_day": "10"}, 10),
        ({"backend_type": "openai", "model": "claude-x"}, 0),
        ({"backend": "nope"}, 0),
        ({"backend": ""}, 101),
    ],  # empty = not given
)
async def test_each_filter(data: Router, query: dict[str, str], count: int) -> None:
    status, s = await call(data, "/v1/usage/stats", **query)
    assert status == 200 and s["request_count"] == count, s["filters"]
    _, page = await call(data, "/v1/usage/recent", limit="1000", **query)
    assert page["total"] == count and len(page["records"]) == count


@pytest.mark.parametrize(
    ("leg", "prompt", "completion"),
    [("CTP", 1040, 0), ("PTB", 1030, 0), ("BTP", 0, 520), ("ptc", 0, 507)],
)
async def test_leg_projects_one_point(data: Router, leg: str, prompt: int, completion: int) -> None:
    _, s = await call(data, "/v1/usage/stats", leg=leg)
    assert (s["total_prompt_tokens"], s["total_completion_tokens"]) == (prompt, completion)
    assert s["total_tokens"] == prompt + completion
    assert s["request_count"] == 101  # never duplicated per leg
    assert s["filters"] == {"leg": leg.upper()}


async def test_filters_echo_the_parsed_values(data: Router) -> None:
    _, s = await call(
        data,
        "/v1/usage/stats",
        backend_type="OpenAI",
        start_date="2025-12-01",
        end_date="2025-12-02",
        http_status_code="200",
        hour_of_day="10",
    )
    assert s["filters"] == {
        "backend_type": "openai",
        "http_status_code": 200,
        "hour_of_day": 10,
        "start_date": "2025-12-01T00:00:00Z",
        "end_date": "2025-12-02T23:59:59.999999Z",
    }


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/v1/usage/stats", {"start_date": "yesterday"}, "start_date"),
        ("/v1/usage/stats", {"end_date": "2025-13-01"}, "end_date"),
        ("/v1/usage/stats", {"start_date": "2025-12-02", "end_date": "2025-12-01"}, "end_date"),
        ("/v1/usage/stats", {"leg": "XYZ"}, "leg"),
        ("/v1/usage/stats", {"backend_type": "gemini"}, "backend_type"),
        ("/v1/usage/stats", {"frontend_type": "x"}, "frontend_type"),
        ("/v1/usage/stats", {"day_of_week": "7"}, "day_of_week"),
        ("/v1/usage/stats", {"hour_of_day": "-1"}, "hour_of_day"),
        ("/v1/usage/stats", {"hour_of_day": "1.5"}, "hour_of_day"),
        ("/v1/usage/stats", {"http_status_code": "abc"}, "http_status_code"),
        ("/v1/usage/stats", {"http_status_code": "99"}, "http_status_code"),
        ("/v1/usage/stats", {"http_status_code": "0"}, "http_status_code"),  # it is "none"
        ("/v1/usage/stats", {"api": "chat_completions"}, "api"),
        ("/v1/usage/recent", {"outcome": "aborted"}, "outcome"),
        ("/v1/usage/stats", {"colour": "red"}, "colour"),
        ("/v1/usage/stats", {"limit": "5"}, "limit"),  # /recent's parameter, not a filter
        ("/v1/usage/recent", {"limit": "0"}, "limit"),
        ("/v1/usage/recent", {"limit": "1001"}, "limit"),
        ("/v1/usage/recent", {"limit": "ten"}, "limit"),
        ("/v1/usage/recent", {"offset": "-1"}, "offset"),
        ("/v1/usage/export", {"format": "xml"}, "format"),
        ("/v1/usage/export", {"model": "a", "modle": "b"}, "modle"),
    ],
)
async def test_bad_parameters_400_naming_the_parameter(
    data: Router, path: str, query: dict[str, str], param: str
) -> None:
    status, body = await call(data, path, **query)
    assert status == 400 and body["detail"].startswith(param + ":"), body


async def test_repeated_parameter_is_400(data: Router) -> None:
    handler, params, _ = data.resolve("GET", "/v1/usage/stats")
    assert handler is not None
    resp = await handler(
        AdminRequest(
            "GET", "/v1/usage/stats", {"backend": ["a", "b"]}, {}, b"", "127.0.0.1", params
        )
    )
    assert resp.status == 400 and orjson.loads(resp.body)["detail"].startswith("backend:")


async def test_recent_newest_first_with_paging_and_bounds(data: Router) -> None:
    _, page = await call(data, "/v1/usage/recent", limit="10")
    assert (page["total"], page["limit"], page["offset"]) == (101, 10, 0)
    assert page["records"][0]["backend"] == "anthropic.1"  # the newest (Dec 7)
    stamps = [r["timestamp"] for r in page["records"]]
    assert stamps == sorted(stamps, reverse=True)
    _, default = await call(data, "/v1/usage/recent")
    assert default["limit"] == 50 and len(default["records"]) == 50
    seen = []
    for offset in range(0, 101, 30):
        _, p = await call(data, "/v1/usage/recent", limit="30", offset=str(offset))
        seen += [r["id"] for r in p["records"]]
    assert len(seen) == len(set(seen)) == 101  # pages neither overlap nor skip
    _, last = await call(data, "/v1/usage/recent", limit="1000", offset="100")
    assert len(last["records"]) == 1
    _, past = await call(data, "/v1/usage/recent", offset="5000")
    assert past["records"] == [] and past["total"] == 101


async def test_recent_returns_records_exactly_as_submitted(store: UsageStore) -> None:
    r = record(
        tool_names=["x", "y"],
        replacement={"from": "a:b", "to": "c:d"},
        backend_reported_usage={
            "prompt": 1,
            "completion": 2,
            "total": 3,
            "cached": 1,
            "cache_write": 0,
            "reasoning": 1,
            "cost": 0.5,
        },
    )
    fill(store, [r])
    router = usage_router(store)
    _, page = await call(router, "/v1/usage/recent")
    assert page["records"] == [r]


async def test_export_three_formats_oldest_first(data: Router) -> None:
    status, raw = await call(data, "/v1/usage/export")  # json is the default
    doc = orjson.loads(raw)
    assert status == 200 and doc["version"] == 1 and doc["record_count"] == 101
    assert doc["exported_at"].endswith("Z") and doc["filters"] == {}
    stamps = [r["timestamp"] for r in doc["records"]]
    assert len(stamps) == 101 and stamps == sorted(stamps)
    _, nd = await call(data, "/v1/usage/export", format="ndjson", backend_type="openai")
    lines = [orjson.loads(line) for line in nd.splitlines()]
    assert len(lines) == 100 and all(r["backend_type"] == "openai" for r in lines)
    _, text = await call(data, "/v1/usage/export", format="csv")
    rows = list(csv.DictReader(io.StringIO(text.decode())))
    assert len(rows) == 101 and tuple(rows[0]) == CSV_FIELDS
    last = rows[-1]
    assert last["backend"] == "anthropic.1" and last["streaming"] == "true"
    assert orjson.loads(last["tool_names"]) == ["a", "b"]  # nested values: JSON text
    assert last["backend_reported_usage"] == "" and last["cost"] == ""  # None: empty
    _, window = await call(
        data, "/v1/usage/export", start_date="2025-12-02", end_date="2025-12-02", format="json"
    )
    doc = orjson.loads(window)
    assert doc["record_count"] == len(doc["records"]) == 33
    assert doc["filters"]["start_date"] == "2025-12-02T00:00:00Z"


async def test_export_pages_through_many_pages(
    store: UsageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Equal timestamps across page boundaries: the keyset (ts, seq) neither repeats nor skips.
    recs = [record(timestamp=f"2025-12-01T10:00:0{i % 3}.000Z") for i in range(25)]
    fill(store, recs)
    pages = list(store.export_pages(parse_filters({}), page_size=4))
    assert [len(p) for p in pages] == [4] * 6 + [1]
    assert sorted(r["id"] for p in pages for r in p) == sorted(r["id"] for r in recs)


async def test_export_is_one_snapshot(store: UsageStore) -> None:
    fill(store, [record() for _ in range(10)])
    with store.open_export(parse_filters({}), page_size=3) as cursor:
        pages = cursor.pages()
        first = next(pages)
        for _ in range(5):
            store.submit(record())
        store.stop()  # committed while the export is open
        store.start()
        rest = [r for p in pages for r in p]
        assert cursor.record_count == 10 == len(first) + len(rest)


async def test_disabled_routes_answer_503() -> None:
    router = usage_router(None)  # usage tracking off: the route table answers for it
    for path in ("/v1/usage/stats", "/v1/usage/recent", "/v1/usage/export"):
        status, body = await call(router, path)
        assert (status, body) == (503, {"detail": DISABLED})
    assert DISABLED == "usage tracking is disabled (usage_tracking.enabled=false)"


async def test_unreadable_database_is_503_not_500(tmp_path: Path) -> None:
    router = usage_router(
        UsageStore(tmp_path / "absent.db", flush_interval=1, max_queue=1, retention_days=0)
    )
    for path in ("/v1/usage/stats", "/v1/usage/recent", "/v1/usage/export"):
        status, body = await call(router, path)
        assert status == 503 and body["detail"].startswith("usage database unavailable")


def test_parse_filters_dates() -> None:
    a = parse_filters({"start_date": ["2025-12-01T00:00:00"]})
    b = parse_filters({"start_date": ["2025-12-01T00:00:00Z"]})
    c = parse_filters({"start_date": ["2025-12-01T01:00:00+01:00"]})
    assert a.start == b.start == c.start == datetime(2025, 12, 1, tzinfo=UTC).timestamp()
    whole_day = parse_filters({"end_date": ["2025-12-01"]})
    assert (
        whole_day.end == datetime(2025, 12, 2, tzinfo=UTC).timestamp() and whole_day.end_exclusive
    )
    assert parse_filters({"start_date": ["2025-12-01"], "end_date": ["2025-12-01"]})
    with pytest.raises(FilterError) as err:
        parse_filters({"start_date": ["2025-12-02"], "end_date": ["2025-12-01"]})
    assert err.value.param == "end_date"


# -- randomized: every figure against a plain-Python reference ---------------------------
T0 = datetime(2025, 11, 1, tzinfo=UTC)


# (key_name, team) of a record: the plain list's keys have neither; a named key may
# have no team.
KEYS = [
    (None, None),
    (None, None),
    ("ci-bot", "platform"),
    ("notebook", "research"),
    ("solo", None),
]


def _random_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        ts = T0 + timedelta(seconds=rng.uniform(0, 9 * 86400))
        stream = rng.random() < 0.6
        key_name, team = rng.choice(KEYS)
        out.append(
            record(
                key_name=key_name,
                team=team,
                timestamp=ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                session_id=rng.choice([None, *[f"s{i}" for i in range(30)]]),
                backend=rng.choice(["openai.1", "openai.2", "anthropic.1"]),
                backend_type=rng.choice(["openai", "anthropic"]),
                frontend_type=rng.choice(["openai", "anthropic"]),
                model_requested=rng.choice(["m1", "m2", "m3"]),
                model_used=rng.choice([None, "m1", "m2-x"]),
                proxy_user=rng.choice([None, None, "u1", "u2"]),
                http_status_code=rng.choice([200, 200, 200, 429, 500, None]),
                outcome=rng.choice(["ok", "ok", "ok", "truncated", "client_aborted", "rejected"]),
                api=rng.choice([None, "chat", "responses", "messages"]),
                ctp_prompt_tokens=rng.randint(1, 100),
                ptb_prompt_tokens=rng.choice([None, 7, 50]),
                btp_completion_tokens=rng.randint(0, 50),
                ptc_completion_tokens=rng.randint(0, 50),
                backend_reported_usage=rng.choice(
                    [None, {"prompt": 3, "completion": 4, "total": 7}]
                ),
                cost=rng.choice([None, 0.25, 0.5]),
                tool_call_count=rng.randint(0, 2),
                ttft_ms=round(rng.uniform(1, 500), 3) if stream else None,
                total_duration_ms=rng.choice([None, round(rng.uniform(1, 9000), 3)]),
                proxy_overhead_ms=round(rng.uniform(0, 3), 3),
                stream_tps=round(rng.uniform(5, 90), 3) if stream else None,
            )
        )
    return out


def _ts(r: dict[str, Any]) -> float:
    return datetime.fromisoformat(r["timestamp"]).timestamp()


def _matches(r: dict[str, Any], f: usage_queries.Filters) -> bool:
    dt = datetime.fromisoformat(r["timestamp"])
    ts = dt.timestamp()
    return all(
        (
            f.backend_type is None or r["backend_type"] == f.backend_type,
            f.backend is None or r["backend"] == f.backend,
            f.model is None or f.model in (r["model_requested"], r["model_used"]),
            f.frontend_type is None or r["frontend_type"] == f.frontend_type,
            f.session_id is None or r["session_id"] == f.session_id,
            f.proxy_user is None or r["proxy_user"] == f.proxy_user,
            # A record without a status is selected by 0 (http_status_code=none).
            f.http_status_code is None or (r["http_status_code"] or 0) == f.http_status_code,
            f.outcome is None or r["outcome"] == f.outcome,
            f.api is None or r["api"] == f.api,
            f.key is None or r.get("key_name") == f.key,
            f.team is None or r.get("team") == f.team,
            f.start is None or ts >= f.start,
            f.end is None or (ts < f.end if f.end_exclusive else ts <= f.end),
            f.day_of_week is None or dt.weekday() == f.day_of_week,
            f.hour_of_day is None or dt.hour == f.hour_of_day,
        )
    )


def _reference(records: list[dict[str, Any]], f: usage_queries.Filters) -> dict[str, Any]:
    sel = [r for r in records if _matches(r, f)]

    def total(key: str) -> int:
        return sum(r[key] or 0 for r in sel)

    def summary(key: str, unit: str = "ms") -> dict[str, Any] | None:
        v = sorted(r[key] for r in sel if r[key] is not None)
        if not v:
            return None
        rank = {p: v[max(1, math.ceil(p * len(v) / 100)) - 1] for p in (50, 95, 99)}
        return {
            "count": len(v),
            f"min_{unit}": round(v[0], 3),
            f"max_{unit}": round(v[-1], 3),
            f"avg_{unit}": round(sum(v) / len(v), 3),
            **{f"p{p}_{unit}": round(x, 3) for p, x in rank.items()},
        }

    def counts(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in sel:
            name = "(none)" if r.get(key) is None else str(r[key])
            out[name] = out.get(name, 0) + 1
        return out

    # The codes in numeric order, and the requests without one last, as "none".
    codes = counts("http_status_code")
    no_status = codes.pop("(none)", None)
    codes = dict(sorted(codes.items(), key=lambda kv: int(kv[0])))
    if no_status:
        codes["none"] = no_status
    return {
        "request_count": len(sel),
        "unique_sessions": len({r["session_id"] for r in sel} - {None}),
        "total_prompt_tokens": total("ptb_prompt_tokens"),
        "total_completion_tokens": total("btp_completion_tokens"),
        "backend_reported_total_tokens": sum(
            (r["backend_reported_usage"] or {}).get("total", 0) for r in sel
        ),
        "cost_record_count": sum(r["cost"] is not None for r in sel),
        "total_tool_calls": total("tool_call_count"),
        "status_code_counts": codes,
        "outcome_counts": dict(sorted(counts("outcome").items())),
        "time_window_seconds": round(max(map(_ts, sel)) - min(map(_ts, sel)), 3) if sel else None,
        "ttft_stats": summary("ttft_ms"),
        "duration_stats": summary("total_duration_ms"),
        "proxy_overhead_stats": summary("proxy_overhead_ms"),
        "stream_tps_stats": summary("stream_tps", "tps"),
        "by_backend": {
            b: sum(r["backend"] == b for r in sel) for b in sorted({r["backend"] for r in sel})
        },
        "by_api": dict(sorted(counts("api").items())),
        "by_key": dict(sorted(counts("key_name").items())),
        "by_team": dict(sorted(counts("team").items())),
    }


def _random_query(rng: random.Random) -> dict[str, list[str]]:
    q: dict[str, list[str]] = {}
    pool = {
        "backend_type": ["openai", "anthropic"],
        "backend": ["openai.1", "anthropic.1"],
        "model": ["m1", "m2", "m2-x"],
        "frontend_type": ["openai"],
        "proxy_user": ["u1"],
        "http_status_code": ["200", "429", "none"],
        "session_id": ["s3", "s7"],
        "day_of_week": [str(d) for d in range(7)],
        "hour_of_day": ["0", "13", "22"],
        "outcome": ["ok", "client_aborted"],
        "api": ["chat", "messages"],
        "key": ["ci-bot", "solo"],
        "team": ["platform", "research"],
    }
    for key in rng.sample(sorted(pool), rng.randint(0, 2)):
        q[key] = [rng.choice(pool[key])]
    if rng.random() < 0.7:  # dates that cut through hours and days
        a = T0 + timedelta(seconds=rng.uniform(-86400, 9 * 86400))
        b = a + timedelta(seconds=rng.choice([600, 5000, 86400 * 2.3, 86400 * 6]))
        q["start_date"] = [a.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"]
        q["end_date"] = [b.strftime("%Y-%m-%d") if rng.random() < 0.3 else b.isoformat()]
    return q


def assert_like_reference(got: dict[str, Any], want: dict[str, Any], q: object) -> None:
    breakdowns = ("by_backend", "by_api", "by_key", "by_team")
    got_slice = {k: got[k] for k in want if k not in breakdowns}
    for by in breakdowns:
        got_slice[by] = {k: v["request_count"] for k, v in got[by].items()}
    want = {k: (dict(v) if isinstance(v, dict) else v) for k, v in want.items()}
    for key in ("ttft_stats", "duration_stats", "proxy_overhead_stats", "stream_tps_stats"):
        # Sums of floats in another order (rollup vs rows) may round the last digit apart.
        avg = "avg_tps" if key == "stream_tps_stats" else "avg_ms"
        if want[key] is not None and got_slice[key] is not None:
            got_slice[key] = dict(got_slice[key])
            assert got_slice[key].pop(avg) == pytest.approx(want[key].pop(avg), abs=0.0011), (
                q,
                key,
            )
    assert got_slice == want, q


@pytest.mark.parametrize("ratio", [1, 10**9], ids=["fetch-and-sort", "index-walk"])
def test_stats_equal_a_plain_reference(
    store: UsageStore, ratio: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20251201)
    recs = _random_records(rng, 1500)
    fill(store, recs)
    monkeypatch.setattr(usage_queries, "NARROW_RATIO", ratio)
    for _ in range(60):
        q = _random_query(rng)
        f = parse_filters(q)
        assert_like_reference(store.stats(f), _reference(recs, f), q)
        assert store.count(f) == _reference(recs, f)["request_count"]


@pytest.mark.parametrize("pieces_read", [0, 1])
async def test_export_abandoned_releases_its_snapshot(store: UsageStore, pieces_read: int) -> None:
    """A HEAD request or a client gone mid-export closes the stream: the read snapshot
    must go with it, or the write-ahead log could never be checkpointed again."""
    fill(store, [record() for _ in range(5)])
    router = usage_router(store)
    handler, params, _ = router.resolve("GET", "/v1/usage/export")
    assert handler is not None
    resp = await handler(AdminRequest("GET", "/v1/usage/export", {}, {}, b"", "127.0.0.1", params))
    assert resp.stream is not None
    for _ in range(pieces_read):
        await resp.stream.__anext__()
    await resp.stream.aclose()  # type: ignore[attr-defined]
    store.submit(record())
    if isinstance(store, PgUsageStore):
        # The export's connection is closed: the server holds no session for it.
        wait_until(lambda: _pg_readers(store) == 0, what="the export's session to end")
        return
    store.stop()  # its close checkpoints the WAL into the file and removes it...
    assert not _wal_left(store.path)  # ...which a reader left open would prevent
    store.start()


def _pg_readers(store: PgUsageStore) -> int:
    with psycopg.connect(store._dsn or "", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = 'fastproxy-usage-read' AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else -1


def _wal_left(db: Path) -> bool:
    return Path(f"{db}-wal").exists()
