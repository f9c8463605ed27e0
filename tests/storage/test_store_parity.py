"""The same records in a SQLite store and a PostgreSQL store give the same JSON.

Both stores get the same 1,500 random records; /v1/usage/stats (60 random filter sets,
dates cutting through hours and days, on both percentile paths), /recent and /export
(json, ndjson, csv) must answer byte for byte alike through the real views. And the
PostgreSQL store's exactly-once rules, at the store level: a batch written twice
(a replayed spool, a retried commit) is stored and counted once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fastproxy.admin.routes import Router
from fastproxy.storage import usage_queries
from fastproxy.storage.pg_store import PgUsageStore
from fastproxy.storage.usage_queries import parse_filters
from fastproxy.storage.usage_store import UsageStore
from tests.storage.pg_server import PgServer, pg_usage_store
from tests.support.monitoring import usage_router
from tests.usage.test_store_queries import _random_query, _random_records, call, record

N = 1500


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return _random_records(random.Random(20261205), N)


@pytest.fixture(scope="module")
def stores(
    pg_server: PgServer, records: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[UsageStore, PgUsageStore]]:
    tmp = tmp_path_factory.mktemp("parity")
    lite = UsageStore(tmp / "usage.db", flush_interval=0.05, max_queue=20_000, retention_days=0)
    pg = pg_usage_store(
        pg_server.new_db(), tmp / "spool", max_queue=20_000, spool_max_bytes=1 << 24
    )
    for s in (lite, pg):
        s.start()
        for r in records:
            assert s.submit(r)
        s.stop()  # everything written
    assert pg.rows_written == lite.rows_written == N
    yield lite, pg


@pytest.fixture(scope="module")
def routers(stores: tuple[UsageStore, PgUsageStore]) -> tuple[Router, Router]:
    return usage_router(stores[0]), usage_router(stores[1])


@pytest.mark.parametrize("ratio", [1, 10**9], ids=["fetch-and-sort", "index-walk"])
async def test_identical_stats(
    routers: tuple[Router, Router], ratio: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_queries, "NARROW_RATIO", ratio)
    rng = random.Random(7 + ratio)
    queries: list[dict[str, str]] = [{}]
    queries += [{k: v[0] for k, v in _random_query(rng).items()} for _ in range(60)]
    queries += [{"leg": leg} for leg in ("CTP", "PTB", "BTP", "PTC")]
    for q in queries:
        lite = await call(routers[0], "/v1/usage/stats", **q)
        pg = await call(routers[1], "/v1/usage/stats", **q)
        assert lite[0] == 200
        assert pg == lite, q


async def test_identical_recent_and_export(routers: tuple[Router, Router]) -> None:
    for path, q in [
        ("/v1/usage/recent", {}),
        ("/v1/usage/recent", {"limit": "100", "offset": "250"}),
        ("/v1/usage/recent", {"session_id": "s3", "limit": "1000"}),
        ("/v1/usage/recent", {"backend": "anthropic.1", "http_status_code": "none"}),
        ("/v1/usage/export", {"format": "ndjson"}),
        ("/v1/usage/export", {"format": "csv", "model": "m2-x"}),
        (
            "/v1/usage/export",
            {"format": "ndjson", "start_date": "2025-11-03T05:30:00Z", "end_date": "2025-11-05"},
        ),
    ]:
        lite = await call(routers[0], path, **q)
        pg = await call(routers[1], path, **q)
        assert lite[0] == 200
        assert pg == lite, (path, q)
    # A json export carries the time it was made: compare it without that.
    lite_doc = await call(routers[0], "/v1/usage/export")
    pg_doc = await call(routers[1], "/v1/usage/export")
    assert _without_time(pg_doc[1]) == _without_time(lite_doc[1])


def _without_time(body: bytes) -> bytes:
    start = body.index(b'"exported_at"')
    end = body.index(b",", start)
    return body[:start] + body[end:]


def test_a_batch_written_twice_is_stored_and_counted_once(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """The exactly-once rule: (origin, oseq) unique, and the rollups count only the rows
    the insert took (a replayed spool batch, or a commit whose answer was lost)."""
    dsn = pg_server.new_db()
    s = pg_usage_store(dsn, tmp_path / "spool")
    s.start()
    recs = [record(total_duration_ms=float(i), cost=0.5) for i in range(10)]
    from fastproxy.storage.usage_schema import prepare

    first, items = s._ids([prepare(r) for r in recs])
    s.stop()  # the writer thread is gone: drive the writer's steps here
    assert s._connect(first=True)
    assert s._store(s.origin, first, items) == 10
    assert s._store(s.origin, first, items) == 0  # the same batch again: nothing new
    assert s._store(s.origin, first + 5, items[5:]) == 0  # a part of it: nothing new
    s._close_pg()
    rows = pg_server.query(
        dsn,
        "SELECT (SELECT count(*) FROM usage_requests), (SELECT count(*) FROM usage_records), "
        "(SELECT sum(n) FROM usage_hourly), (SELECT sum(n) FROM usage_daily), "
        "(SELECT sum(cost) FROM usage_daily)",
    )
    assert rows == [(10, 10, 10, 10, 5.0)]
    assert s.stats(parse_filters({}))["request_count"] == 10


def test_spooled_batches_replay_in_order_exactly_once(pg_server: PgServer, tmp_path: Path) -> None:
    """Batches spooled while the database was unreachable, one replayed twice (its file
    was copied, as if a recorder had died after storing it and before removing it): each
    record once, in the order they were made."""
    dsn = pg_server.new_db()
    s = pg_usage_store(dsn, tmp_path / "spool")
    from fastproxy.storage.usage_schema import prepare

    batches = [
        s._ids([prepare(record(session_id=f"b{b}-{i}")) for i in range(5)]) for b in range(3)
    ]
    for first, items in batches:
        assert s.spool.append(first, items)
    s.spool.close()
    (spooled,) = list((tmp_path / "spool").glob("*.spool"))
    copy = spooled.with_name("0" + spooled.name)  # sorts first: replayed first, then again
    copy.write_bytes(spooled.read_bytes())
    s._spooling = True
    s.start()  # replays what it finds on disk
    s.stop()
    assert not list((tmp_path / "spool").glob("*.spool"))
    got = pg_server.query(dsn, "SELECT session_id FROM usage_requests ORDER BY seq")
    assert [g for (g,) in got] == [f"b{b}-{i}" for b in range(3) for i in range(5)]
    ((hourly,),) = pg_server.query(dsn, "SELECT sum(n) FROM usage_hourly")
    assert hourly == 15


def test_retention_runs_in_one_place_and_keeps_rollups_exact(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """Old whole days leave rows, records and both rollups together; while another
    gateway holds the retention lock, this one deletes nothing."""
    from fastproxy.storage.pg_reader import connect
    from fastproxy.storage.pg_schema import RETENTION_LOCK
    from fastproxy.storage.pg_store import prune

    dsn = pg_server.new_db()
    s = pg_usage_store(dsn, tmp_path / "spool")
    s.start()
    for day in (1, 2, 3):
        for hour in (1, 13):
            assert s.submit(record(timestamp=f"2025-12-0{day}T{hour:02d}:30:00.000Z"))
    s.stop()
    cutoff = datetime(2025, 12, 3, 12, tzinfo=UTC).timestamp()  # days 1 and 2 go
    other = connect(dsn)
    with other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (RETENTION_LOCK,))
        with connect(dsn) as conn:
            assert prune(conn, cutoff, 1, 10) is False  # another gateway is at it
        assert pg_server.query(dsn, "SELECT count(*) FROM usage_requests") == [(6,)]
    other.close()
    with connect(dsn) as conn:
        while prune(conn, cutoff, 1, 1):  # a slice per call: rollups exact between them
            (check,) = pg_server.query(
                dsn,
                "SELECT (SELECT count(*) FROM usage_requests), "
                "(SELECT sum(n) FROM usage_hourly), (SELECT sum(n) FROM usage_daily)",
            )
            assert check[0] == check[1] == check[2]
    rows = pg_server.query(
        dsn,
        "SELECT (SELECT count(*) FROM usage_requests), (SELECT count(*) FROM usage_records), "
        "(SELECT sum(n) FROM usage_hourly), (SELECT sum(n) FROM usage_daily), "
        "(SELECT min(day) FROM usage_daily)",
    )
    day3 = int(datetime(2025, 12, 3, tzinfo=UTC).timestamp() // 86400)
    assert rows == [(2, 2, 2, 2, day3)]
    assert s.stats(parse_filters({}))["request_count"] == 2


def test_identical_replacement_groups(pg_server: PgServer, tmp_path: Path) -> None:
    """The replacement-effectiveness groups (admin replacement report) from both stores."""
    mark = {"from": "openai.1:gpt-4", "to": "anthropic.1:claude-x", "turn": 1}
    recs = [
        record(replacement=mark, backend="anthropic.1", model_used="claude-x", cost=0.5),
        record(replacement=mark, backend="anthropic.1", model_used="claude-x", outcome="timeout"),
        record(total_duration_ms=20.0),
        record(outcome="backend_error", ttft_ms=4.0),
        record(backend=None, model_used=None),
    ]
    lite = UsageStore(tmp_path / "r.db", flush_interval=0.05, max_queue=100, retention_days=0)
    pg = pg_usage_store(pg_server.new_db(), tmp_path / "spool")
    for s in (lite, pg):
        s.start()
        for r in recs:
            assert s.submit(r)
        s.stop()
    want = sorted(lite.replacement_groups(0.0), key=repr)
    assert len(want) == 2 and {g.source for g in want} == {None, "openai.1:gpt-4"}
    assert sorted(pg.replacement_groups(0.0), key=repr) == want


def test_a_spool_cut_short_by_a_crash_replays_what_is_whole(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """A crash mid-write leaves a partial last frame: the whole frames before it are
    replayed, the cut one is counted dropped, and the file goes."""
    dsn = pg_server.new_db()
    s = pg_usage_store(dsn, tmp_path / "spool")
    from fastproxy.storage.usage_schema import prepare

    for b in range(2):
        assert s.spool.append(*s._ids([prepare(record(session_id=f"b{b}-{i}")) for i in range(3)]))
    s.spool.close()
    (path,) = list((tmp_path / "spool").glob("*.spool"))
    path.write_bytes(path.read_bytes()[:-10])  # the second frame loses its tail
    s._spooling = True
    s.start()
    s.stop()
    got = pg_server.query(dsn, "SELECT session_id FROM usage_requests ORDER BY seq")
    assert [g for (g,) in got] == ["b0-0", "b0-1", "b0-2"]
    assert s.status()["spool_dropped"] == 1 and not path.exists()
