"""Does the published ``sqlite3worker`` (1.1.7) fit the usage writer? Two questions, measured.

    .venv/bin/pip install sqlite3worker==1.1.7      # into the venv only, never a dependency
    .venv/bin/python -m bench.usage_db.sqlite3worker_check

1. Do queued writes survive process exit without an explicit close()?
2. Do write errors reach the caller?
plus what happens to its worker thread and to the caller behind a locked database.

Every scenario runs in a child process under a hard timeout: a worker thread that never
finishes must show up as "hung", not stall this script. Each child prints one JSON line.
The same questions are asked of our UsageStore where they apply. Plain rows
(``CREATE TABLE t (i INTEGER, payload TEXT)``) keep the comparison about the writers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

N = 20_000
LOCK_S = 7.0  # longer than sqlite3worker's put timeout and sqlite3's busy timeout (5 s)

_PRELUDE = textwrap.dedent("""
    import json, logging, sqlite3, sys, threading, time
    path, n = sys.argv[1], int(sys.argv[2])
    lines = []
    class H(logging.Handler):
        def emit(self, rec): lines.append(rec.getMessage()[:120])
    logging.getLogger("sqlite3worker").addHandler(H())
    logging.getLogger("sqlite3worker").propagate = False
    def out(**kw): print(json.dumps(kw), flush=True)
""")

CHILDREN: dict[str, str] = {
    # Question 1: enqueue N inserts, then leave the interpreter with or without close().
    "worker_exit_no_close": """
from sqlite3worker import Sqlite3Worker
w = Sqlite3Worker(path, max_queue_size=n + 10)
for i in range(n):
    w.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 200))
out(queued_at_exit=w.queue_size)
""",
    "worker_exit_close": """
from sqlite3worker import Sqlite3Worker
w = Sqlite3Worker(path, max_queue_size=n + 10)
for i in range(n):
    w.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 200))
w.close()
out(queued_at_exit=w.queue_size)
""",
    "store_exit_no_stop": """
from fastproxy.storage.usage_store import UsageStore
from bench.usage_db.generate import records
s = UsageStore(path, flush_interval=1.0, max_queue=n + 10, retention_days=0)
s.start()
for r in records(n):
    s.submit(r)
out(queued_at_exit=s.status()["queue_depth"])
""",
    "store_exit_stop": """
from fastproxy.storage.usage_store import UsageStore
from bench.usage_db.generate import records
s = UsageStore(path, flush_interval=1.0, max_queue=n + 10, retention_days=0)
s.start()
for r in records(n):
    s.submit(r)
s.stop()
out(queued_at_exit=s.status()["queue_depth"])
""",
    # Question 2: failing writes. What does the caller get back?
    "worker_errors": """
from sqlite3worker import Sqlite3Worker
w = Sqlite3Worker(path)
got, raised = [], []
for q, v in (("INSERT INTO missing VALUES (?)", (1,)), ("INSERT INTO t VALUES (?, ?, ?)", (1, 2, 3)),
             ("SELECT * FROM missing", ())):
    try:
        got.append(repr(w.execute(q, v))[:80])
    except Exception as exc:
        raised.append(type(exc).__name__)
w.close()
out(returned=got, raised=raised, log_lines=lines)
""",
    # A lock held by another connection for LOCK_S: caller blocking, thread survival, loss.
    "worker_locked": """
from sqlite3worker import Sqlite3Worker
holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
holder.execute("BEGIN EXCLUSIVE")
threading.Timer(LOCK_S, lambda: holder.execute("COMMIT")).start()
w = Sqlite3Worker(path, max_queue_size=100)
worst, raised = 0.0, []
for i in range(n):
    t = time.perf_counter()
    try:
        w.execute("INSERT INTO t VALUES (?, ?)", (i, "x"))
    except Exception as exc:
        raised.append(type(exc).__name__)
    worst = max(worst, time.perf_counter() - t)
time.sleep(LOCK_S)
alive = w.is_alive()
w.close()
out(worst_execute_s=round(worst, 2), raised=sorted(set(raised)), n_raised=len(raised),
    worker_alive_after_lock=alive, log_lines=len(lines), first_log=lines[:1])
""".replace("LOCK_S", str(LOCK_S)),
}


def _run(name: str, path: Path, n: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    t = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PRELUDE + CHILDREN[name], str(path), str(n)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return {"hung": True, "seconds": 60}
    result: dict[str, Any] = {
        "exit_code": proc.returncode,
        "seconds": round(time.perf_counter() - t, 2),
    }
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    if proc.returncode:
        result["stderr"] = proc.stderr.strip().splitlines()[-1:]
    return result


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def main() -> int:
    try:
        import sqlite3worker  # noqa: F401
    except ImportError:
        print("not installed: .venv/bin/pip install sqlite3worker==1.1.7", file=sys.stderr)
        return 2
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="s3w-") as tmp:
        for name in CHILDREN:
            path = Path(tmp) / f"{name}.db"
            n = 300 if name == "worker_locked" else N
            if name.startswith("worker"):
                with sqlite3.connect(path) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("CREATE TABLE t (i INTEGER, payload TEXT)")
            result = _run(name, path, n)
            table = "usage_requests" if name.startswith("store") else "t"
            if name != "worker_errors" and path.exists():
                result["rows_written"] = _count(path, table)
                result["of"] = n
            print(f"{name:22s} {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
