"""`fastproxy usage stats|export` against real database files, as a subprocess."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from fastproxy.admin.usage_api import CSV_FIELDS
from fastproxy.storage.usage_store import UsageStore
from tests.usage.test_store_queries import record

ROOT = Path(__file__).resolve().parents[2]


def fastproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("state") / "usage.db"
    s = UsageStore(path, flush_interval=0.05, max_queue=100, retention_days=0)
    s.start()
    for i in range(6):
        s.submit(
            record(
                backend_type="anthropic" if i % 3 == 0 else "openai",
                backend="anthropic.1" if i % 3 == 0 else "openai.1",
                timestamp=f"2025-12-0{1 + i}T08:00:00.000Z",
                tool_names=["t"],
            )
        )
    s.stop()
    return path


def test_stats_json_with_filters(db: Path) -> None:
    out = fastproxy(
        "usage",
        "stats",
        "--db",
        str(db),
        "--json",
        "--backend-type",
        "openai",
        "--start-date",
        "2025-12-02",
    )
    assert out.returncode == 0, out.stderr
    stats = orjson.loads(out.stdout)
    assert stats["request_count"] == 4 and stats["filters"]["backend_type"] == "openai"


def test_stats_table(db: Path) -> None:
    out = fastproxy("usage", "stats", "--db", str(db))
    assert out.returncode == 0, out.stderr
    for text in ("requests", "6", "by backend", "anthropic.1", "openai.1", "by model", "gpt-4"):
        assert text in out.stdout


def test_export_all_three_formats(db: Path, tmp_path: Path) -> None:
    for fmt in ("csv", "ndjson", "json"):
        target = tmp_path / f"out.{fmt}"
        out = fastproxy(
            "usage",
            "export",
            "--db",
            str(db),
            "--format",
            fmt,
            "--out",
            str(target),
            "--end-date",
            "2025-12-05",
        )
        assert out.returncode == 0, out.stderr
        assert "exported 5 records" in out.stderr
        if fmt == "csv":
            with target.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            assert len(rows) == 5 and tuple(rows[0]) == CSV_FIELDS
            assert orjson.loads(rows[0]["tool_names"]) == ["t"]
        elif fmt == "ndjson":
            lines = target.read_bytes().splitlines()
            assert [orjson.loads(x)["timestamp"][:10] for x in lines] == [
                f"2025-12-0{d}" for d in range(1, 6)
            ]
        else:
            doc = orjson.loads(target.read_bytes())
            assert doc["record_count"] == len(doc["records"]) == 5 and doc["version"] == 1


def test_database_path_from_the_config(db: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    # ./var/... lives under state_dir, exactly as the gateway resolves it.
    config.write_text(
        yaml.safe_dump(
            {"state_dir": str(db.parent), "usage_tracking": {"persistence_path": "./var/usage.db"}}
        )
    )
    out = fastproxy("usage", "stats", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["request_count"] == 6


def test_errors_exit_2_or_1_with_a_clear_message(db: Path, tmp_path: Path) -> None:
    bad = fastproxy("usage", "stats", "--db", str(db), "--start-date", "nope")
    assert bad.returncode == 2 and "--start-date" in bad.stderr
    missing = fastproxy("usage", "stats", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no usage database at" in missing.stderr
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE usage (x)")
        conn.execute("PRAGMA user_version = 1")
    stale = fastproxy("usage", "export", "--db", str(old), "--out", str(tmp_path / "x.json"))
    assert stale.returncode == 1 and "schema version 1" in stale.stderr


def test_cli_never_writes(db: Path) -> None:
    before = db.stat().st_mtime_ns, db.read_bytes()
    assert fastproxy("usage", "stats", "--db", str(db), "--json").returncode == 0
    assert (db.stat().st_mtime_ns, db.read_bytes()) == before


def test_export_of_the_gateways_compact_records(tmp_path: Path) -> None:
    # Records the gateway's projector made are stored as compact arrays; the CLI gives
    # them back as the contract's records, the same as /recent would.
    from fastproxy.dataplane.dialects.usage import BackendUsage
    from fastproxy.monitor.costs import PriceTable
    from fastproxy.monitor.usage_projection import Projector
    from fastproxy.monitor.usage_service import UsageCapture
    from tests.usage.test_prepare_values import _rec

    path = tmp_path / "usage.db"
    projector = Projector(PriceTable({}))
    usage = BackendUsage(prompt=12, completion=40, total=52, cached=4, reasoning=0)

    def capture(i: int) -> UsageCapture:
        return UsageCapture.take(
            _rec(i % 2 == 0, usage if i % 2 else None, 1_764_500_000.0 + i), True
        )

    captures = [capture(i) for i in range(4)]
    expected = [projector.record(capture(i)) for i in range(4)]
    s = UsageStore(path, flush_interval=0.05, max_queue=100, retention_days=0)
    s.start()
    for c in captures:
        s.submit(lambda c=c: projector.prepared(c))
    s.stop()
    with sqlite3.connect(path) as conn:
        assert all(t.startswith("[3,") for (t,) in conn.execute("SELECT record FROM usage_records"))

    target = tmp_path / "out.ndjson"
    out = fastproxy(
        "usage", "export", "--db", str(path), "--format", "ndjson", "--out", str(target)
    )
    assert out.returncode == 0, out.stderr
    got = [orjson.loads(x) for x in target.read_bytes().splitlines()]
    # The ids are random per projection: everything else must be equal, in contract order.
    for g, e in zip(got, expected, strict=True):
        assert list(g) == list(e) and g["id"] != e["id"]
        assert {**g, "id": None} == {**e, "id": None}
    assert got[1]["backend_reported_usage"]["cached"] == 4 and got[0]["streaming"] is True

    csv_target = tmp_path / "out.csv"
    out = fastproxy(
        "usage", "export", "--db", str(path), "--format", "csv", "--out", str(csv_target)
    )
    assert out.returncode == 0, out.stderr
    with csv_target.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["timestamp"] for r in rows] == [e["timestamp"] for e in expected]
    assert orjson.loads(rows[1]["backend_reported_usage"])["cached"] == 4
    assert rows[0]["streaming"] == "true" and rows[0]["proxy_user"] == "alice"
