"""The PostgreSQL usage store end to end: real gateway processes (`fastproxy run`), their
recorder processes, a real PostgreSQL server (tests/storage/pg_server.py), the mock LLM
and the official OpenAI SDK.

- two gateways started at the same moment on a fresh database (the migrations run once),
  one of them with two worker processes, write to it concurrently: every record arrives exactly once, and each gateway's
  requests are counted right in /v1/usage/stats (asked of either gateway);
- the database stopped for 10 s while requests keep flowing: every request succeeds,
  health says "spooling" with the spool's size, then "ok"; every record arrives exactly
  once (count and ids) and the rollups count each once; one WARNING each way;
- a spool too small for the outage: the gateway keeps serving, the records that did
  not fit are counted, and every other one arrives;
- ``fastproxy usage stats`` reads the PostgreSQL store from the config.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for
from tests.storage.pg_server import PASSWORD, PgServer
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

DSN_ENV = "PGSTORE_TEST_DSN"


def config(tmp: Path, mock: MockLLMServer, workers: int = 1, **usage: Any) -> Path:
    tree = {
        "workers": workers,
        "port": 0,
        "admin": {"port": 0},
        "state_dir": str(tmp),
        "backends": {"openai.1": backend_for(mock, "openai")},
        "default_backend": "openai.1",
        "usage_tracking": {
            "store": "postgresql",
            "postgresql_dsn_env": DSN_ENV,
            "flush_interval_seconds": 0.05,
            **usage,
        },
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[Path, str], GatewayProcess]]:
    running: list[GatewayProcess] = []

    def make(cfg: Path, dsn: str) -> GatewayProcess:
        gw = GatewayProcess(["--config", str(cfg)], env={DSN_ENV: dsn}, cwd=str(tmp_path))
        running.append(gw)
        return gw

    yield make
    for gw in running:
        gw.stop()
        # The DSN's password is never printed, whatever happened.
        assert PASSWORD not in gw.output()


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="x", max_retries=0)


def chat(c: openai.OpenAI, model: str) -> None:
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content


def admin(gw: GatewayProcess, path: str, **params: str) -> Any:
    r = httpx.get(f"http://127.0.0.1:{gw.admin_port}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def storage(gw: GatewayProcess) -> dict[str, Any]:
    doc: dict[str, Any] = admin(gw, "/internal/health")["storage"]
    return doc


def stored(pg: PgServer, dsn: str) -> tuple[int, int, int, int]:
    """(rows, distinct (origin, oseq), records, rollup count) in the database."""
    (rows, ids), = pg.query(dsn, "SELECT count(*), count(DISTINCT (origin, oseq)) FROM usage_requests")  # fmt: skip
    ((records,),) = pg.query(dsn, "SELECT count(*) FROM usage_records")
    ((hourly,),) = pg.query(dsn, "SELECT coalesce(sum(n), 0) FROM usage_hourly")
    return int(rows), int(ids), int(records), int(hourly)


def record_ids(pg: PgServer, dsn: str) -> list[str]:
    rows = pg.query(dsn, "SELECT record FROM usage_records")
    out = []
    for (text,) in rows:
        doc = orjson.loads(text)
        # Compact records: [format, values in RECORD_KEYS order]; "id" is the first key.
        out.append(doc[1] if isinstance(doc, list) else doc["id"])
    return out


def test_two_gateways_share_one_database(
    pg_server: PgServer,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    start: Callable[[Path, str], GatewayProcess],
) -> None:
    dsn = pg_server.new_db()  # fresh: both gateways find it empty and migrate at once
    a = start(config(tmp_path / "a", mock_llm), dsn)
    # b serves with two worker processes: their records reach its one recorder.
    b = start(config(tmp_path / "b", mock_llm, workers=2), dsn)
    a.wait_ready(60)
    b.wait_ready(60)
    assert pg_server.query(dsn, "SELECT version FROM schema_migrations") == [(1,)]
    n = 40

    def traffic(gw: GatewayProcess, model: str) -> None:
        with client(gw) as c:
            for _ in range(n):
                chat(c, model)

    threads = [
        threading.Thread(target=traffic, args=(a, "gpt-4o")),
        threading.Thread(target=traffic, args=(b, "gpt-4o-mini")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wait_until(lambda: stored(pg_server, dsn)[0] >= 2 * n, 30, 0.1, "every record stored")
    assert stored(pg_server, dsn) == (2 * n, 2 * n, 2 * n, 2 * n)
    ids = record_ids(pg_server, dsn)
    assert len(ids) == len(set(ids)) == 2 * n
    origins = pg_server.query(dsn, "SELECT origin, count(*) FROM usage_requests GROUP BY 1")
    assert sorted(c for _, c in origins) == [n, n]  # one recorder per gateway
    for gw in (a, b):  # either gateway answers for the whole database
        s = admin(gw, "/v1/usage/stats")
        assert s["request_count"] == 2 * n
        assert s["status_code_counts"] == {"200": 2 * n}
        assert admin(gw, "/v1/usage/stats", model="gpt-4o")["request_count"] == n
        assert admin(gw, "/v1/usage/stats", model="gpt-4o-mini")["request_count"] == n
        assert admin(gw, "/v1/usage/recent", limit="5")["total"] == 2 * n
    export = httpx.get(
        f"http://127.0.0.1:{a.admin_port}/v1/usage/export", params={"format": "ndjson"}
    )
    assert len(export.text.splitlines()) == 2 * n
    assert storage(a)["store"] == "postgresql" and storage(a)["usage_db"] == "ok"
    assert PASSWORD not in orjson.dumps(storage(a)).decode()
    # The recorder gets the DSN in its environment: its command line, which every local
    # user can read, does not hold the password.
    cmdline = Path(f"/proc/{storage(a)['recorder_pid']}/cmdline").read_bytes()
    assert b"fastproxy.storage.recorder" in cmdline and PASSWORD.encode() not in cmdline


def test_a_gateway_started_while_the_database_is_down_serves_and_catches_up(
    pg_server: PgServer,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    start: Callable[[Path, str], GatewayProcess],
) -> None:
    dsn = pg_server.new_db()  # empty: the migrations run once it is reachable
    pg_server.stop()
    try:
        gw = start(config(tmp_path / "g", mock_llm), dsn)
        gw.wait_ready(60)
        assert storage(gw)["usage_db"] == "spooling"
        with client(gw) as c:
            for _ in range(5):
                chat(c, "gpt-4o")
        wait_until(lambda: storage(gw)["spool_records"] == 5, 10, 0.05, "five spooled")
        r = httpx.get(f"http://127.0.0.1:{gw.admin_port}/v1/usage/stats", timeout=30)
        assert r.status_code == 503 and r.json()["detail"].startswith("usage database unavailable")
    finally:
        pg_server.start()
    wait_until(lambda: storage(gw)["usage_db"] == "ok", 30, 0.1, "health back to ok")
    assert stored(pg_server, dsn) == (5, 5, 5, 5)
    assert admin(gw, "/v1/usage/stats")["request_count"] == 5


def test_database_stopped_10s_under_load_every_record_once(
    pg_server: PgServer,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    start: Callable[[Path, str], GatewayProcess],
) -> None:
    dsn = pg_server.new_db()
    gw = start(config(tmp_path / "g", mock_llm), dsn)
    gw.wait_ready(60)
    sent: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        with client(gw) as c:
            while not stop.is_set():
                try:
                    chat(c, "gpt-4o")
                except BaseException as exc:
                    failures.append(exc)
                    return
                sent.append(1)
                time.sleep(0.01)

    t = threading.Thread(target=traffic)
    t.start()
    seen: list[str] = []
    try:
        wait_until(lambda: len(sent) >= 20, 30, 0.05, "traffic before the outage")
        pg_server.stop()
        down_at = time.monotonic()
        try:
            st = wait_until(
                lambda: (s := storage(gw))["usage_db"] == "spooling" and s["spool_bytes"] > 0 and s,
                10,
                0.1,
                "health to say spooling",
            )
            seen.append(st["usage_db"])
            assert admin(gw, "/internal/health")["status"] == "degraded"
            during = len(sent)
            time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))  # the outage lasts 10 s
            assert len(sent) > during  # traffic never stopped
            assert storage(gw)["spool_records"] > 0
        finally:
            pg_server.start()
        wait_until(lambda: storage(gw)["usage_db"] == "ok", 30, 0.1, "health back to ok")
        seen.append("ok")
        time.sleep(0.5)  # requests after the recovery too
    finally:
        stop.set()
        t.join(60)
    assert not failures, failures
    total = len(sent)
    wait_until(lambda: stored(pg_server, dsn)[0] >= total, 30, 0.1, "every record stored")
    assert stored(pg_server, dsn) == (total, total, total, total)
    ids = record_ids(pg_server, dsn)
    assert len(set(ids)) == len(ids) == total
    assert seen == ["spooling", "ok"]
    st = storage(gw)
    assert st["spool_bytes"] == 0 and st["spool_dropped"] == 0 and st["dropped_records"] == 0
    assert not list((tmp_path / "g" / "usage-spool").glob("*.spool"))
    out = gw.output()
    assert out.count("unreachable") == 1, out
    assert out.count("reachable again") == 1, out
    assert admin(gw, "/v1/usage/stats")["request_count"] == total


def test_spool_full_counts_what_it_drops_and_keeps_serving(
    pg_server: PgServer,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    start: Callable[[Path, str], GatewayProcess],
) -> None:
    dsn = pg_server.new_db()
    gw = start(config(tmp_path / "g", mock_llm, spool_max_bytes=64 * 1024), dsn)
    gw.wait_ready(60)
    with client(gw) as c:
        chat(c, "gpt-4o")
        wait_until(lambda: stored(pg_server, dsn)[0] == 1, 30, 0.05, "the first record")
        pg_server.stop()
        try:
            sent = 1
            # Records of a few hundred bytes each: 64 KiB holds a few hundred of them.
            deadline = time.monotonic() + 60
            while storage(gw)["spool_dropped"] == 0:
                assert time.monotonic() < deadline, storage(gw)
                for _ in range(20):
                    chat(c, "gpt-4o")  # the gateway keeps serving
                sent += 20
            st = storage(gw)
            assert st["usage_db"] == "spooling" and st["spool_bytes"] <= 64 * 1024
            assert st["dropped_records"] >= st["spool_dropped"] > 0
        finally:
            pg_server.start()
    wait_until(lambda: storage(gw)["usage_db"] == "ok", 30, 0.1, "health back to ok")
    dropped = storage(gw)["spool_dropped"]
    wait_until(lambda: stored(pg_server, dsn)[0] >= sent - dropped, 30, 0.1, "the kept records")
    rows, ids, records, hourly = stored(pg_server, dsn)
    assert rows == ids == records == hourly == sent - dropped
    assert "spool" in gw.output() and "is full" in gw.output()


def test_usage_cli_reads_the_postgresql_store(
    pg_server: PgServer,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    start: Callable[[Path, str], GatewayProcess],
) -> None:
    dsn = pg_server.new_db()
    cfg = config(tmp_path / "g", mock_llm)
    gw = start(cfg, dsn)
    gw.wait_ready(60)
    with client(gw) as c:
        for _ in range(3):
            chat(c, "gpt-4o")
    wait_until(lambda: stored(pg_server, dsn)[0] == 3, 30, 0.05, "three records")
    out = subprocess.run(
        [sys.executable, "-m", "fastproxy", "usage", "stats", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", DSN_ENV: dsn},
    )
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    assert doc == admin(gw, "/v1/usage/stats")
    assert doc["request_count"] == 3
    assert PASSWORD not in out.stdout + out.stderr
