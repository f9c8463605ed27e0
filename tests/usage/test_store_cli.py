"""`fastproxy usage stats|export` against a real database file, as a subprocess."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import orjson

from fastproxy.storage.usage_store import UsageStore
from tests.usage.test_store_queries import record


def fastproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True,
                          text=True, timeout=60)


def test_usage_stats_and_export_cli(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    s = UsageStore(db, flush_interval=0.05, max_queue=100, retention_days=0)
    s.start()
    for i in range(6):
        s.submit(record(backend_type="anthropic" if i % 3 == 0 else "openai"))
    s.stop()
    out = fastproxy("usage", "stats", "--db", str(db), "--json", "--backend-type", "openai")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["request_count"] == 4
    table = fastproxy("usage", "stats", "--db", str(db))
    assert table.returncode == 0 and "request_count" in table.stdout and "6" in table.stdout
    target = tmp_path / "out.csv"
    exp = fastproxy("usage", "export", "--db", str(db), "--format", "csv", "--out", str(target))
    assert exp.returncode == 0, exp.stderr
    with target.open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    bad = fastproxy("usage", "stats", "--db", str(db), "--start-date", "nope")
    assert bad.returncode == 2 and "--start-date" in bad.stderr
    missing = fastproxy("usage", "stats", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no usage database" in missing.stderr
