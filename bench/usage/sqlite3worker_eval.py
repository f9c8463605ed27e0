"""Measure the published ``sqlite3worker`` (1.1.7) against fastproxy's own UsageStore.

    .venv/bin/pip install sqlite3worker==1.1.7     # into the venv only, never a dependency
    .venv/bin/python -m bench.usage.sqlite3worker_eval [--records 20000]

The question is whether the usage writer could be that library instead of our own thread.
What the usage path needs from a writer, and what each scenario measures:

- exit:       do queued writes survive process exit, with and without an explicit close?
              (each run is a child process that enqueues N records and exits)
- errors:     does a failed write reach the caller (exception, return value, status), and
              how many log lines do 1,000 failures cost?
- garbage:    a file that is not a database: what happens to the file and the records?
- locked:     another process holds the write lock for LOCK_S seconds: how long does one
              enqueue call block the caller (the event loop, in the gateway), and how
              many records are lost once the lock is gone?
- throughput: N records enqueued then closed: caller cost per record and time to durable.

Both use WAL and synchronous=NORMAL, so the figures compare designs, not pragmas.
UsageStore is driven only through its public API (start, submit, stop, status) and writes
its own layout. sqlite3worker writes the simplest layout that serves the same queries: a
``usage`` row of the filterable fields and a ``usage_record`` JSON row. It has no batch call,
so each record is two ``execute()`` calls. Rows are counted with ``SELECT count(*) FROM
usage``, which works on either layout (the store's is a view from schema version 2 on).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from fastproxy.storage.usage_store import UsageStore

LOCK_S = 6.0  # longer than sqlite3worker's busy timeout (the sqlite3 default, 5 s)


def _record(i: int) -> dict[str, Any]:
    """A realistic record: the fields the usage table indexes, plus its JSON twin."""
    return {
        "id": uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "session_id": f"s{i % 50}",
        "turn_number": 1 + i % 7,
        "frontend_type": "openai",
        "backend": "openai.1",
        "backend_type": "openai",
        "model_requested": "gpt-4o",
        "model_used": "gpt-4o-2024-08-06",
        "streaming": True,
        "http_status_code": 200,
        "outcome": "ok",
        "attempts": 1,
        "tool_call_count": 0,
        "tool_names": [],
        "ctp_prompt_tokens": 120,
        "ptb_prompt_tokens": 118,
        "btp_completion_tokens": 40,
        "ptc_completion_tokens": 40,
        "backend_reported_usage": {
            "prompt": 118,
            "completion": 40,
            "total": 158,
            "cached": 0,
            "cache_write": 0,
            "reasoning": 0,
            "cost": None,
        },
        "usage_source": "backend",
        "ttft_ms": 180.0,
        "backend_ttfb_ms": 150.0,
        "total_duration_ms": 900.0,
        "proxy_overhead_ms": 0.4,
        "stream_tps": 55.0,
        "cost": 0.000695,
        "cost_source": "price_table",
        "replacement": None,
        "proxy_user": None,
        "user_agent": "bench",
    }


# The layout sqlite3worker writes: what a minimal usage table needs for the filters.
_LIB_COLUMNS = (
    "id",
    "ts",
    "session_id",
    "frontend_type",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "streaming",
    "http_status_code",
    "outcome",
    "ctp_prompt_tokens",
    "ptb_prompt_tokens",
    "btp_completion_tokens",
    "ptc_completion_tokens",
    "cost",
    "tool_call_count",
    "ttft_ms",
    "total_duration_ms",
    "proxy_overhead_ms",
    "stream_tps",
)
_LIB_SCHEMA = f"""
CREATE TABLE usage ({", ".join(_LIB_COLUMNS)});
CREATE INDEX usage_ts ON usage(ts);
CREATE INDEX usage_backend ON usage(backend, ts);
CREATE INDEX usage_model ON usage(model_requested);
CREATE INDEX usage_session ON usage(session_id);
CREATE TABLE usage_record (id TEXT PRIMARY KEY, record TEXT NOT NULL);
"""
_LIB_INSERT = (
    f"INSERT INTO usage ({', '.join(_LIB_COLUMNS)}) VALUES ({', '.join('?' for _ in _LIB_COLUMNS)})"
)
_LIB_INSERT_RECORD = "INSERT INTO usage_record (id, record) VALUES (?, ?)"


def _lib_row(rec: dict[str, Any]) -> tuple[Any, ...]:
    """The usage row's values, then the JSON text last."""
    values = [rec["timestamp"] if c == "ts" else rec.get(c) for c in _LIB_COLUMNS]
    return (*values, orjson.dumps(rec).decode())


def _lib_db(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_LIB_SCHEMA)
    conn.close()


def _prepare_db(lib: str, path: Path) -> None:
    # The store creates (and migrates) its own file; the library needs its tables first.
    if lib == "sqlite3worker":
        _lib_db(path)


def _unpaired(path: Path) -> int:
    """Records with only one of their two rows (a half-written record)."""
    conn = sqlite3.connect(path)
    try:
        return int(
            conn.execute(
                "SELECT (SELECT count(*) FROM usage WHERE id NOT IN (SELECT id FROM usage_record))"
                " + (SELECT count(*) FROM usage_record WHERE id NOT IN (SELECT id FROM usage))"
            ).fetchone()[0]
        )
    finally:
        conn.close()


def _rows(path: Path, table: str = "usage") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# -- the two writers behind one small interface ------------------------------------------


class _Worker:
    """sqlite3worker driven the only way it can be: one execute() per statement."""

    def __init__(self, path: Path, max_queue: int) -> None:
        from sqlite3worker import Sqlite3Worker

        self.w = Sqlite3Worker(str(path), max_queue_size=max_queue)
        self.w.execute("PRAGMA journal_mode=WAL")
        self.w.execute("PRAGMA synchronous=NORMAL")

    def put(self, rec: dict[str, Any]) -> Any:
        # The library takes SQL and values only, so the row is built on the caller's
        # thread (in the gateway: the event loop); put_row() times the library alone.
        return self.put_row(_lib_row(rec))

    def put_row(self, row: tuple[Any, ...]) -> Any:
        self.w.execute(_LIB_INSERT, row[:-1])
        return self.w.execute(_LIB_INSERT_RECORD, (row[0], row[-1]))

    def close(self) -> None:
        self.w.close()


class _Store:
    def __init__(self, path: Path, max_queue: int) -> None:
        self.s = UsageStore(path, flush_interval=1.0, max_queue=max_queue, retention_days=0)
        self.s.start()

    def put(self, rec: dict[str, Any]) -> Any:
        return self.s.submit(rec)

    def close(self) -> None:
        self.s.stop()


WRITERS: dict[str, Callable[[Path, int], Any]] = {"sqlite3worker": _Worker, "usage_store": _Store}


class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


# -- scenarios -----------------------------------------------------------------------------


def child_exit(lib: str, path: Path, n: int, max_queue: int, close: bool) -> None:
    """Runs in a child process: enqueue n records, optionally close, then exit."""
    writer = WRITERS[lib](path, max_queue)
    refused = sum(writer.put(_record(i)) is False for i in range(n))
    if close:
        writer.close()
    # A full UsageStore queue refuses (and counts) rather than blocking the caller; those
    # records are not "lost at exit", so the parent reports them apart.
    print(json.dumps({"refused": refused}), flush=True)
    # Returning ends the interpreter: daemon threads die with whatever they still hold.


def scenario_exit(tmp: Path, n: int) -> Iterator[dict[str, Any]]:
    for lib in WRITERS:
        for max_queue in (100, 100_000):
            for close in (False, True):
                path = tmp / f"exit-{lib}-{max_queue}-{close}.db"
                _prepare_db(lib, path)
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.usage.sqlite3worker_eval",
                        "--child-exit",
                        lib,
                        str(path),
                        str(n),
                        str(max_queue),
                        "1" if close else "0",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                refused = json.loads(out.strip().splitlines()[-1])["refused"]
                written = _rows(path)
                yield {
                    "scenario": "exit",
                    "writer": lib,
                    "max_queue": max_queue,
                    "close_called": close,
                    "enqueued": n,
                    "refused_and_counted": refused,
                    "rows": written,
                    "lost_uncounted": n - refused - written,
                }


def scenario_errors(tmp: Path) -> Iterator[dict[str, Any]]:
    from sqlite3worker import Sqlite3Worker

    counter = _CountingHandler()
    logging.getLogger("sqlite3worker").addHandler(counter)
    logging.getLogger("sqlite3worker").propagate = False
    path = tmp / "errors.db"
    _lib_db(path)
    w = Sqlite3Worker(str(path))
    raised = None
    returned: list[Any] = []
    try:
        returned.extend(
            w.execute("INSERT INTO no_such_table VALUES (?)", (1,)) for _ in range(1000)
        )
    except Exception as exc:  # recorded, not expected
        raised = type(exc).__name__
    select = w.execute("SELECT * FROM no_such_table")
    w.close()
    yield {
        "scenario": "errors",
        "writer": "sqlite3worker",
        "failed_inserts": 1000,
        "exception_raised": raised,
        "insert_return_values": sorted({repr(r) for r in returned}),
        "failed_select_returns": type(select).__name__,
        "error_log_lines": counter.count,
    }

    # Every write into a file of a newer schema version fails: the store refuses to write
    # an old layout into it. That is a failing write the public API can produce.
    path = tmp / "errors-store.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    store_log = _CountingHandler()
    logging.getLogger("fastproxy.storage").addHandler(store_log)
    store = UsageStore(path, flush_interval=0.05, max_queue=10_000, retention_days=0)
    store.start()
    accepted = sum(bool(store.submit(_record(i))) for i in range(1000))
    time.sleep(0.5)  # a few write rounds, all failing
    status = store.status()
    store.stop(timeout=3)
    logging.getLogger("fastproxy.storage").removeHandler(store_log)
    yield {
        "scenario": "errors",
        "writer": "usage_store",
        "failing_records": 1000,
        "exception_raised": None,
        "accepted_by_submit": accepted,
        "status_while_failing": status,
        "log_lines": store_log.count,
    }


def scenario_garbage(tmp: Path) -> Iterator[dict[str, Any]]:
    for lib in WRITERS:
        path = tmp / f"garbage-{lib}.db"
        path.write_bytes(b"this is not a database\n" * 100)
        logging.getLogger("sqlite3worker").propagate = False
        try:
            writer = WRITERS[lib](path, 1000)
            for i in range(100):
                writer.put(_record(i))
            writer.close()
            opened = None
        except Exception as exc:
            opened = f"{type(exc).__name__}: {exc}"
        aside = sorted(p.name for p in tmp.glob(f"garbage-{lib}.db.corrupt-*"))
        try:
            written = _rows(path)
        except sqlite3.DatabaseError as exc:
            written = f"unreadable ({exc})"
        yield {
            "scenario": "garbage",
            "writer": lib,
            "enqueued": 100,
            "construct_error": opened,
            "rows_in_file": written,
            "moved_aside": aside,
        }


def scenario_locked(tmp: Path) -> Iterator[dict[str, Any]]:
    n = 300
    for lib in WRITERS:
        path = tmp / f"locked-{lib}.db"
        if lib == "sqlite3worker":
            _lib_db(path)
        else:  # the store's own layout, made by the store, before the lock is taken
            ready = UsageStore(path, flush_interval=0.05, max_queue=1, retention_days=0)
            ready.start()
            ready.stop()
        # Released from a timer thread, hence check_same_thread=False.
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another process/connection owns the write lock
        release = threading.Timer(LOCK_S, lambda h=holder: h.execute("COMMIT"))
        release.start()
        logging.getLogger("sqlite3worker").propagate = False
        writer = WRITERS[lib](path, 100)
        worst = 0.0
        refused = raised = 0
        for i in range(n):
            t0 = time.perf_counter()
            try:
                ok = writer.put(_record(i))
                refused += ok is False
            except Exception:
                raised += 1
            worst = max(worst, time.perf_counter() - t0)
        release.join()
        writer.close()
        holder.close()
        written = _rows(path)
        yield {
            "scenario": "locked",
            "writer": lib,
            "lock_held_s": LOCK_S,
            "queue": 100,
            "enqueued": n,
            "worst_enqueue_call_s": round(worst, 3),
            "enqueue_exceptions": raised,
            "refused_and_counted": refused,
            "rows": written,
            "lost": n - written,
            **(
                {"json_rows": _rows(path, "usage_record"), "half_written": _unpaired(path)}
                if lib == "sqlite3worker"
                else {}
            ),
        }


def scenario_throughput(tmp: Path, n: int) -> Iterator[dict[str, Any]]:
    records = [_record(i) for i in range(n)]
    for lib in WRITERS:
        path = tmp / f"tput-{lib}.db"
        _prepare_db(lib, path)
        writer = WRITERS[lib](path, 100_000)
        # sqlite3worker gets its rows ready-made (built outside the timing), so the caller
        # figure is the library's own cost; UsageStore builds rows on its writer thread.
        items: list[Any] = [_lib_row(r) for r in records] if lib == "sqlite3worker" else records
        put = writer.put_row if lib == "sqlite3worker" else writer.put
        t0 = time.perf_counter()
        for item in items:
            put(item)
        t1 = time.perf_counter()
        writer.close()
        t2 = time.perf_counter()
        yield {
            "scenario": "throughput",
            "writer": lib,
            "records": n,
            "caller_us_per_record": round((t1 - t0) / n * 1e6, 1),
            "seconds_to_durable": round(t2 - t0, 2),
            "records_per_s": round(n / (t2 - t0)),
            "rows": _rows(path),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--only", choices=("exit", "errors", "garbage", "locked", "throughput"))
    ap.add_argument("--child-exit", nargs=5, metavar=("LIB", "PATH", "N", "QUEUE", "CLOSE"))
    ns = ap.parse_args(argv)
    if ns.child_exit:
        lib, path, n, max_queue, close = ns.child_exit
        child_exit(lib, Path(path), int(n), int(max_queue), close == "1")
        return 0
    try:
        import sqlite3worker  # noqa: F401
    except ImportError:
        print("sqlite3worker is not installed: .venv/bin/pip install sqlite3worker==1.1.7")
        return 2
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cpus"
    )
    with tempfile.TemporaryDirectory(prefix="s3w-eval-") as tmpdir:
        tmp = Path(tmpdir)
        scenarios = {
            "exit": lambda: scenario_exit(tmp, 10_000),
            "errors": lambda: scenario_errors(tmp),
            "garbage": lambda: scenario_garbage(tmp),
            "locked": lambda: scenario_locked(tmp),
            "throughput": lambda: scenario_throughput(tmp, ns.records),
        }
        for name, scenario in scenarios.items():
            if ns.only not in (None, name):
                continue
            for result in scenario():
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
