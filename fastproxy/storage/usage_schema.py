"""The usage database schema and its migrations (PRAGMA user_version).

Every filterable field of a record is a column (indexed where the endpoints filter on
it); the whole record is kept as JSON too, so /recent and /export return exactly what
was recorded and a new record field needs no migration to be kept.
"""

from __future__ import annotations

import sqlite3

VERSION = 1

_V1 = """
CREATE TABLE IF NOT EXISTS usage (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    ts REAL NOT NULL,
    day_of_week INTEGER NOT NULL,
    hour_of_day INTEGER NOT NULL,
    session_id TEXT,
    frontend_type TEXT,
    backend TEXT,
    backend_type TEXT,
    model_requested TEXT,
    model_used TEXT,
    streaming INTEGER NOT NULL DEFAULT 0,
    http_status_code INTEGER,
    outcome TEXT,
    proxy_user TEXT,
    ctp_prompt_tokens INTEGER, ptb_prompt_tokens INTEGER,
    btp_completion_tokens INTEGER, ptc_completion_tokens INTEGER,
    br_prompt INTEGER, br_completion INTEGER, br_total INTEGER,
    cost REAL,
    tool_call_count INTEGER NOT NULL DEFAULT 0,
    ttft_ms REAL, total_duration_ms REAL, proxy_overhead_ms REAL, stream_tps REAL
);
-- The full record as JSON lives apart, so aggregate scans read only narrow rows
-- (keeping it in `usage` made every stats query read ~1 KB per row).
CREATE TABLE IF NOT EXISTS usage_record (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts);
CREATE INDEX IF NOT EXISTS usage_backend_type ON usage(backend_type, ts);
CREATE INDEX IF NOT EXISTS usage_backend ON usage(backend, ts);
CREATE INDEX IF NOT EXISTS usage_model_requested ON usage(model_requested);
CREATE INDEX IF NOT EXISTS usage_model_used ON usage(model_used);
CREATE INDEX IF NOT EXISTS usage_session ON usage(session_id);
CREATE INDEX IF NOT EXISTS usage_status ON usage(http_status_code);
"""

# version -> script that brings version-1 to version. A future v2 adds an entry here and
# the database is migrated in place on open, in one transaction.
MIGRATIONS: dict[int, str] = {1: _V1}


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to VERSION; returns the version it had."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > VERSION:
        raise sqlite3.DatabaseError(
            f"usage database has schema version {found}, newer than this fastproxy ({VERSION})"
        )
    for version in range(found + 1, VERSION + 1):
        conn.executescript("BEGIN;" + MIGRATIONS[version] + f"PRAGMA user_version = {version};COMMIT;")
    return found


COLUMNS = (
    "id", "ts", "day_of_week", "hour_of_day", "session_id", "frontend_type", "backend",
    "backend_type", "model_requested", "model_used", "streaming", "http_status_code", "outcome",
    "proxy_user", "ctp_prompt_tokens", "ptb_prompt_tokens", "btp_completion_tokens",
    "ptc_completion_tokens", "br_prompt", "br_completion", "br_total", "cost",
    "tool_call_count", "ttft_ms", "total_duration_ms", "proxy_overhead_ms", "stream_tps",
)
INSERT = (
    f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
INSERT_RECORD = "INSERT OR IGNORE INTO usage_record (id, record) VALUES (?, ?)"
