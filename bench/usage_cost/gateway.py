"""``fastproxy run`` with one usage-writer experiment applied, for bench.usage_cost only.

The experiments cut the writer's work at a stage, so that the cost of each stage to the
relay is a measured difference rather than a guess:

- ``discard``: the writer takes each queued item and drops it without running it. What is
  left is the event loop's share: completion accounting, the capture, the queue.
- ``project``: the writer builds every record's row (prompt count, session digest, cost,
  row and JSON text) and writes nothing.
- ``full``: nothing changed (the shipped behaviour).
- ``no-secondary-indexes``: as shipped, but the session index and the four timing
  indexes are dropped when the database opens: what those indexes cost the writer.
- ``no-records``: as shipped, but the record's JSON text is not stored (a no-op
  statement with the same parameters runs in place of the insert into usage_records).
- ``floor``: the least any design that stores one SQLite row per request through this
  writer can cost: every record is the first one's row, already built (no projection),
  written without the JSON text and without the secondary indexes. The event loop's
  share is as shipped. (Bodies stay reserved: never more than 64 MiB in a short round.)

In every mode the writer thread is given a name the kernel shows (``usage-writer`` in
``/proc/PID/task/TID/comm``), so its CPU time can be told from the event loop's. This
module patches private methods of UsageStore; it is an instrument, never imported by the
package.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from fastproxy.storage import usage_schema, usage_store

MODES = ("discard", "project", "full", "no-secondary-indexes", "no-records", "floor")
NO_RECORD_TEXT = "DELETE FROM usage_records WHERE seq = ? AND ? IS NULL"
PR_SET_NAME = 15
SECONDARY_INDEXES = ("session", *usage_schema.TIMINGS)


def apply(mode: str) -> None:
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    store = usage_store.UsageStore
    libc = ctypes.CDLL(None)
    run = store._run
    open_db = store._open

    def named_run(self: Any) -> None:
        libc.prctl(PR_SET_NAME, b"usage-writer", 0, 0, 0)
        run(self)

    store._run = named_run  # type: ignore[method-assign]
    if mode == "discard":
        store._prepare = lambda self, item: None  # type: ignore[method-assign]
    if mode in ("discard", "project"):
        store._write = lambda self, prepared, final=False: True  # type: ignore[method-assign]
    if mode in ("no-secondary-indexes", "floor"):

        def open_without(self: Any) -> None:
            open_db(self)
            for name in SECONDARY_INDEXES:
                self._conn.execute(f"DROP INDEX IF EXISTS usage_requests_{name}")

        store._open = open_without  # type: ignore[method-assign]
    if mode in ("no-records", "floor"):
        usage_store.INSERT_RECORD = NO_RECORD_TEXT
    if mode == "floor":
        prepare = store._prepare
        first: list[Any] = []

        def prepare_once(self: Any, item: Any) -> Any:
            if not first:
                first.append(prepare(self, item))
            return first[0]

        store._prepare = prepare_once  # type: ignore[method-assign]


def main() -> int:
    mode, config = sys.argv[1], sys.argv[2]
    apply(mode)
    from fastproxy.cli import main as fastproxy_main

    sys.argv = ["fastproxy", "run", "--config", config, *sys.argv[3:]]
    return fastproxy_main()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
