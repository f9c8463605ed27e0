"""The usage database schema and its in-place migrations (PRAGMA user_version).

Layout (version 5), a small star schema, because stats on a million rows must answer in
well under a second and SQLite has no hash aggregation (every GROUP BY is a sort):

- ``usage_dims``: one row per distinct (backend, backend_type, frontend_type,
  model_requested, model_used, proxy_user, api, outcome, key_name, team). A request row carries its
  1-byte..2-byte ``dim`` id instead of eight strings, so rows and index entries stay
  narrow and a text filter becomes ``dim IN (...)`` over a handful of ids.
- ``usage_requests``: one narrow row per request: every filterable field (through
  ``dim``), the time as epoch seconds plus UTC ``day_of_week``/``hour_of_day``, the four
  token points, backend-reported totals, cost and the four timings; and the named
  client key's ``key_name`` and ``team`` (null for the plain api_keys list or no auth).
  These two are also in the row's dim (so stats filter and group by them through the
  rollups); on the row they serve the per-key and per-team spend of a period (budgets,
  GET /v1/keys), read through their own partial indexes (key or team, then ts and cost).
- ``usage_records``: the record as submitted (JSON), keyed by the same ``seq``; /recent
  and /export return it as it came. The projector's records are stored as compact JSON
  arrays (see `prepare_values`), other records as objects. Kept apart so aggregate scans
  never read it.
- ``usage_hourly``: per (hour, dim, status) counts and sums, maintained by the writer in
  the same transaction as the rows. Stats read whole hours here and only the partial
  hours at the edges of a date range from ``usage_requests``.
- Partial covering indexes on each timing column (value, then every filter column): a
  nearest-rank percentile is an index walk with OFFSET, with no sort and no table access.

The view ``usage`` joins it back into one flat relation for ad-hoc SQL (``sqlite3
usage.db "SELECT backend, count(*) FROM usage GROUP BY 1"``); it keeps the v1 table's name.

Version 1 (the first store, never released) was one wide ``usage`` table, with the JSON
either in a ``record`` column or in ``usage_record``; `migrate` rebuilds it as version 2.
Version 3 has version 2's tables and adds the compact array form of ``usage_records``
text, which a version-2 reader would misread: the number makes such a reader refuse the
file instead. A version-2 file needs no change (its object records stay readable).
Version 4 adds ``api`` and ``outcome`` to ``usage_dims``, so both filter and group like
the other dims through the rollups and the covering indexes (`_v3_to_v4`), and the
compact record format 2, which holds the record's ``api``.
Version 5 adds ``key_name`` and ``team`` to ``usage_dims`` and to ``usage_requests``,
their two partial indexes, and record format 3, which holds both (`_v4_to_v5`). Every
row before it was made without a named key, so the columns are null and no row moves.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

VERSION = 5

# The four timing columns: each has a covering partial index named usage_requests_<col>.
TIMINGS = ("ttft_ms", "total_duration_ms", "proxy_overhead_ms", "stream_tps")
# Columns every covering index carries after its leading column: all the filters a query
# can apply without a session id (sessions are selective: they use their own index).
_COVER = "dim, http_status_code, ts, day_of_week, hour_of_day"
# Rollup columns per timing: count, sum, min, max (prefixes in TIMINGS order).
_ROLL = ("ttft", "dur", "ovh", "tps")

# Rollup sums per group, in this order everywhere (SQL, the writer, the queries): count,
# the seven token sums, cost and its count, tool calls, first/last timestamp, then per
# timing column: count, sum, min, max.
SUMS = (
    "n",
    "ctp",
    "ptb",
    "btp",
    "ptc",
    "br_prompt",
    "br_completion",
    "br_total",
    "cost",
    "cost_n",
    "tool_calls",
    "min_ts",
    "max_ts",
    *(f"{p}_{k}" for p in _ROLL for k in ("n", "sum", "min", "max")),
)


def _rollup_ddl(table: str, unit: str, extra: str) -> str:
    cols = ",\n        ".join(
        f"{c} {'REAL' if c in ('cost', 'min_ts', 'max_ts') or c.endswith(('_sum', '_min', '_max')) else 'INTEGER'}"
        + ("" if c.endswith(("_min", "_max")) else " NOT NULL")
        for c in SUMS
    )
    return f"""CREATE TABLE {table} (
        {unit} INTEGER NOT NULL,              -- floor(ts / {3600 if unit == "hour" else 86400})
        dim INTEGER NOT NULL,
        http_status_code INTEGER NOT NULL,
        day_of_week INTEGER NOT NULL,
        {extra}
        {cols},
        PRIMARY KEY ({unit}, dim, http_status_code)
    ) WITHOUT ROWID"""


_DDL_V2 = [
    """CREATE TABLE usage_dims (
        dim INTEGER PRIMARY KEY,
        backend TEXT, backend_type TEXT, frontend_type TEXT,
        model_requested TEXT, model_used TEXT, proxy_user TEXT
    )""",
    """CREATE TABLE usage_requests (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,                    -- epoch seconds, UTC
        dim INTEGER NOT NULL,                -- usage_dims.dim
        http_status_code INTEGER NOT NULL,   -- 0: no status reached the client
        day_of_week INTEGER NOT NULL,        -- 0 = Monday (UTC)
        hour_of_day INTEGER NOT NULL,        -- 0..23 (UTC)
        session_id TEXT,
        streaming INTEGER NOT NULL,
        outcome TEXT,
        ctp_prompt_tokens INTEGER, ptb_prompt_tokens INTEGER,
        btp_completion_tokens INTEGER, ptc_completion_tokens INTEGER,
        br_prompt INTEGER, br_completion INTEGER, br_total INTEGER,
        cost REAL,
        tool_call_count INTEGER NOT NULL,
        ttft_ms REAL, total_duration_ms REAL, proxy_overhead_ms REAL, stream_tps REAL
    )""",
    "CREATE TABLE usage_records (seq INTEGER PRIMARY KEY, record TEXT NOT NULL)",
    _rollup_ddl("usage_hourly", "hour", "hour_of_day INTEGER NOT NULL,"),
    _rollup_ddl("usage_daily", "day", ""),
    # Time order with every filter column: /recent and /export walk it and read only the
    # rows that match; date-range edges and retention use it as a plain range.
    "CREATE INDEX usage_requests_ts ON usage_requests(ts, dim, http_status_code, "
    "day_of_week, hour_of_day)",
    f"CREATE INDEX usage_requests_session ON usage_requests(session_id, {_COVER}) "
    "WHERE session_id IS NOT NULL",
    *(
        f"CREATE INDEX usage_requests_{c} ON usage_requests({c}, {_COVER}) WHERE {c} IS NOT NULL"
        for c in TIMINGS
    ),
    """CREATE VIEW usage AS
        SELECT strftime('%Y-%m-%dT%H:%M:%fZ', r.ts, 'unixepoch') AS timestamp,
               d.backend, d.backend_type, d.frontend_type, d.model_requested, d.model_used,
               d.proxy_user, r.*
        FROM usage_requests r JOIN usage_dims d ON d.dim = r.dim""",
]
# Version 4's view: the same, with the API kind. (The outcome is a column of the rows too.)
_VIEW_V4 = """CREATE VIEW usage AS
        SELECT strftime('%Y-%m-%dT%H:%M:%fZ', r.ts, 'unixepoch') AS timestamp,
               d.backend, d.backend_type, d.frontend_type, d.api, d.model_requested,
               d.model_used, d.proxy_user, r.*
        FROM usage_requests r JOIN usage_dims d ON d.dim = r.dim"""

# The same sums in SQL over usage_requests (for a query over rows, and for the migration).
SUMS_SQL = (
    "COUNT(*), "
    + ", ".join(
        f"COALESCE(SUM({c}), 0)"
        for c in (
            "ctp_prompt_tokens",
            "ptb_prompt_tokens",
            "btp_completion_tokens",
            "ptc_completion_tokens",
            "br_prompt",
            "br_completion",
            "br_total",
        )
    )
    + ", TOTAL(cost), COUNT(cost), COALESCE(SUM(tool_call_count), 0), MIN(ts), MAX(ts), "
    + ", ".join(f"COUNT({c}), TOTAL({c}), MIN({c}), MAX({c})" for c in TIMINGS)
)
# ...and over rollup rows (sums of sums, min of mins, max of maxes).
ROLLUP_SUMS_SQL = ", ".join(
    f"MIN({c})"
    if c.endswith("_min") or c == "min_ts"
    else f"MAX({c})"
    if c.endswith("_max") or c == "max_ts"
    else f"TOTAL({c})"
    if c == "cost" or c.endswith("_sum")
    else f"SUM({c})"
    for c in SUMS
)

REQUEST_COLUMNS = (
    "seq",
    "ts",
    "dim",
    "http_status_code",
    "day_of_week",
    "hour_of_day",
    "session_id",
    "streaming",
    "outcome",
    "ctp_prompt_tokens",
    "ptb_prompt_tokens",
    "btp_completion_tokens",
    "ptc_completion_tokens",
    "br_prompt",
    "br_completion",
    "br_total",
    "cost",
    "tool_call_count",
    *TIMINGS,
    # Version 5: the named client key (auth.keys) and its team, null otherwise.
    "key_name",
    "team",
)
# The columns of versions 2 to 4 (what the v1 rebuild fills).
_REQUEST_COLUMNS_V2 = REQUEST_COLUMNS[:-2]
INSERT_REQUEST = (
    f"INSERT INTO usage_requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in REQUEST_COLUMNS)})"
)
INSERT_RECORD = "INSERT INTO usage_records (seq, record) VALUES (?, ?)"
DIM_COLUMNS = (
    "backend",
    "backend_type",
    "frontend_type",
    "model_requested",
    "model_used",
    "proxy_user",
    "api",
    "outcome",
    "key_name",
    "team",
)
# The dims of versions 1 to 3; version 4 added api and outcome, version 5 the key and team.
_DIM_COLUMNS_V3 = DIM_COLUMNS[:6]
INSERT_DIM = (
    f"INSERT INTO usage_dims ({', '.join(DIM_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in DIM_COLUMNS)})"
)


def _merge(col: str) -> str:
    if col.endswith("_min") or col == "min_ts":
        # SQL min() is NULL when either side is; keep whichever side is known.
        return f"{col} = COALESCE(min({col}, excluded.{col}), {col}, excluded.{col})"
    if col.endswith("_max") or col == "max_ts":
        return f"{col} = COALESCE(max({col}, excluded.{col}), {col}, excluded.{col})"
    return f"{col} = {col} + excluded.{col}"


HOURLY_KEYS = ("hour", "dim", "http_status_code", "day_of_week", "hour_of_day")
DAILY_KEYS = ("day", "dim", "http_status_code", "day_of_week")


def _rollup_batch(table: str, keys: tuple[str, ...], unit: int) -> str:
    """Fold the rows of a seq range (lo <= seq < hi, parameters) into a rollup table, in
    SQL: SQLite does the grouping in C with the GIL released, where a Python fold of each
    row held the GIL on the writer thread, beside the event loop (a 500-record insert went
    from ~15 to ~13 µs per record)."""
    key_sql = f"CAST(ts / {unit} AS INTEGER), dim, http_status_code, day_of_week" + (
        ", hour_of_day" if "hour_of_day" in keys else ""
    )
    return (
        f"INSERT INTO {table} ({', '.join((*keys, *SUMS))}) "
        f"SELECT {key_sql}, {SUMS_SQL} FROM usage_requests WHERE seq >= ? AND seq < ? "
        f"GROUP BY 1, 2, 3 ON CONFLICT ({', '.join(keys[:3])}) DO UPDATE SET "
        + ", ".join(_merge(c) for c in SUMS)
    )


ROLLUP_BATCH_HOURLY = _rollup_batch("usage_hourly", HOURLY_KEYS, 3600)
ROLLUP_BATCH_DAILY = _rollup_batch("usage_daily", DAILY_KEYS, 86400)


def _rollup_upsert(table: str, keys: tuple[str, ...]) -> str:
    """Add one group's sums, folded outside SQL (a `RollupFold`), to a rollup table."""
    cols = (*keys, *SUMS)
    return (
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT ({', '.join(keys[:3])}) DO UPDATE SET " + ", ".join(_merge(c) for c in SUMS)
    )


UPSERT_HOURLY = _rollup_upsert("usage_hourly", HOURLY_KEYS)
UPSERT_DAILY = _rollup_upsert("usage_daily", DAILY_KEYS)
# What a writer may use instead of the SQL fold: the request rows of one batch, as
# inserted (REQUEST_COLUMNS order), to (hourly, daily) rows for UPSERT_HOURLY/_DAILY.
# The recorder's codec supplies the compiled one (``_speedups.fold_rollups``).
RollupFold = Callable[[list[tuple[Any, ...]]], tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]
# Retention removes whole hours; the daily rows of those hours lose exactly their sums
# (min/max of a day being emptied stay until the day's row goes at n = 0).
SUBTRACT_HOURS_FROM_DAILY = (
    "UPDATE usage_daily AS d SET "
    + ", ".join(
        f"{c} = d.{c} - h.{c}"
        for c in SUMS
        if not c.endswith(("_min", "_max")) and c not in ("min_ts", "max_ts")
    )
    + " FROM (SELECT hour / 24 AS day, dim, http_status_code, "
    + ", ".join(
        f"SUM({c}) AS {c}"
        for c in SUMS
        if not c.endswith(("_min", "_max")) and c not in ("min_ts", "max_ts")
    )
    + " FROM usage_hourly WHERE hour < ? GROUP BY 1, 2, 3) AS h "
    "WHERE d.day = h.day AND d.dim = h.dim AND d.http_status_code = h.http_status_code"
)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _create_v2(conn: sqlite3.Connection) -> None:
    for stmt in _DDL_V2:
        conn.execute(stmt)


def _create_current(conn: sqlite3.Connection) -> None:
    # The current layout is version 2's plus the later steps (on empty tables, instant):
    # one definition of each table, whichever way a file reaches the current version.
    _create_v2(conn)
    _v3_to_v4(conn)
    _v4_to_v5(conn)


def _rebuild_rollups(conn: sqlite3.Connection) -> None:
    """Both rollups computed again from every row, in SQL."""
    for table, keys, unit in (
        ("usage_hourly", HOURLY_KEYS, 3600),
        ("usage_daily", DAILY_KEYS, 86400),
    ):
        key_sql = f"CAST(ts / {unit} AS INTEGER), dim, http_status_code, day_of_week" + (
            ", hour_of_day" if "hour_of_day" in keys else ""
        )
        conn.execute(f"DELETE FROM {table}")
        conn.execute(
            f"INSERT INTO {table} ({', '.join((*keys, *SUMS))}) "
            f"SELECT {key_sql}, {SUMS_SQL} FROM usage_requests GROUP BY 1, 2, 3"
        )


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Rebuild the wide v1 table as v2: dims from the distinct combinations, rows keep
    their rowid as seq (so record order is kept), the rollup computed in SQL."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(usage)")}
    conn.execute("ALTER TABLE usage RENAME TO usage_v1")
    _create_v2(conn)
    dims = ", ".join(_DIM_COLUMNS_V3)
    conn.execute(f"INSERT INTO usage_dims ({dims}) SELECT DISTINCT {dims} FROM usage_v1")
    join = " AND ".join(f"d.{c} IS u.{c}" for c in _DIM_COLUMNS_V3)
    conn.execute(
        f"INSERT INTO usage_requests ({', '.join(_REQUEST_COLUMNS_V2)}) "
        "SELECT u.rowid, u.ts, d.dim, COALESCE(u.http_status_code, 0), u.day_of_week, "
        "u.hour_of_day, u.session_id, u.streaming, u.outcome, u.ctp_prompt_tokens, "
        "u.ptb_prompt_tokens, u.btp_completion_tokens, u.ptc_completion_tokens, u.br_prompt, "
        "u.br_completion, u.br_total, u.cost, COALESCE(u.tool_call_count, 0), u.ttft_ms, "
        "u.total_duration_ms, u.proxy_overhead_ms, u.stream_tps "
        f"FROM usage_v1 u JOIN usage_dims d ON {join} ORDER BY u.rowid"
    )
    if "record" in cols:  # the very first layout kept the JSON in the wide row
        conn.execute("INSERT INTO usage_records (seq, record) SELECT rowid, record FROM usage_v1")
    else:
        conn.execute(
            "INSERT INTO usage_records (seq, record) SELECT u.rowid, r.record "
            "FROM usage_v1 u JOIN usage_record r ON r.id = u.id"
        )
        conn.execute("DROP TABLE usage_record")
    _rebuild_rollups(conn)
    conn.execute("DROP TABLE usage_v1")


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    """Add ``api`` and ``outcome`` to the dims. Rows already carry their outcome, so each
    row's dim must come to carry it too: an old dim takes the outcome most of its rows
    have (those rows keep their dim, so most rows are not rewritten), and each other
    outcome of its rows gets a new dim, to which those rows move in one UPDATE. Rows that
    moved change their rollup groups, so the rollups are then computed again. Old rows get
    ``api`` null: their paths were not stored."""
    conn.execute("ALTER TABLE usage_dims ADD COLUMN api TEXT")
    conn.execute("ALTER TABLE usage_dims ADD COLUMN outcome TEXT")
    cols = ", ".join(_DIM_COLUMNS_V3)
    seen: set[int] = set()
    moves: list[tuple[int, str | None, int]] = []
    for dim, outcome in conn.execute(
        "SELECT dim, outcome FROM usage_requests GROUP BY dim, outcome "
        "ORDER BY dim, COUNT(*) DESC, outcome"
    ).fetchall():
        if dim not in seen:
            seen.add(dim)
            conn.execute("UPDATE usage_dims SET outcome = ? WHERE dim = ?", (outcome, dim))
            continue
        new = conn.execute(
            f"INSERT INTO usage_dims ({cols}, outcome) SELECT {cols}, ? "
            "FROM usage_dims WHERE dim = ?",
            (outcome, dim),
        ).lastrowid
        assert new is not None
        moves.append((dim, outcome, new))
    if moves:
        conn.execute(
            "CREATE TEMP TABLE usage_v4_moves (old INTEGER NOT NULL, outcome TEXT, "
            "new INTEGER NOT NULL)"
        )
        conn.execute("CREATE INDEX temp.usage_v4_moves_old ON usage_v4_moves(old)")
        conn.executemany("INSERT INTO usage_v4_moves VALUES (?, ?, ?)", moves)
        conn.execute(
            "UPDATE usage_requests SET dim = m.new FROM usage_v4_moves m "
            "WHERE m.old = usage_requests.dim AND m.outcome IS usage_requests.outcome"
        )
        conn.execute("DROP TABLE usage_v4_moves")
        _rebuild_rollups(conn)
    conn.execute("DROP VIEW IF EXISTS usage")
    conn.execute(_VIEW_V4)


# Version 5's indexes: a key's (a team's) rows in time order with their cost, so the spend
# of a period is a range walk of the index alone. Partial: traffic of the plain api_keys
# list (or without auth) adds no entry, so it pays nothing for them.
_KEY_INDEXES = (
    "CREATE INDEX usage_requests_key ON usage_requests(key_name, ts, cost) "
    "WHERE key_name IS NOT NULL",
    "CREATE INDEX usage_requests_team ON usage_requests(team, ts, cost) WHERE team IS NOT NULL",
)


def _v4_to_v5(conn: sqlite3.Connection) -> None:
    """Add ``key_name`` and ``team`` to the dims and the rows. No row before this version
    was made with a named key, so every existing dim and row has both null, the dims keep
    their ids and the rollups stay as they are: four ALTERs and two empty indexes, instant
    whatever the file's size. (The view's ``r.*`` shows the rows' two new columns.)"""
    for table in ("usage_dims", "usage_requests"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN key_name TEXT")
        conn.execute(f"ALTER TABLE {table} ADD COLUMN team TEXT")
    for stmt in _KEY_INDEXES:
        conn.execute(stmt)


# version -> the step that brings a file at version-1 to version. A file without the
# usage tables (version 0) gets the current layout at once. A later version adds an entry
# here: a function, or an SQL script (statements run one by one in the same transaction).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None] | str] = {
    2: _v1_to_v2,
    3: "",
    4: _v3_to_v4,
    5: _v4_to_v5,
}


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, which would split the step's transaction.
    stmt = ""
    for line in script.splitlines(keepends=True):
        stmt += line
        if sqlite3.complete_statement(stmt):
            conn.execute(stmt)
            stmt = ""
    if stmt.strip():
        conn.execute(stmt)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to VERSION in one transaction; returns the version it had.

    A database newer than this code is refused rather than written with an old layout;
    a failing step rolls back and leaves the file at its version. The connection must be
    in autocommit mode (isolation_level=None)."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > VERSION:
        raise sqlite3.DatabaseError(
            f"usage database has schema version {found}, newer than this fastproxy ({VERSION})"
        )
    if found == VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        if found == 0 and "usage" not in _tables(conn):
            _create_current(conn)  # a new file (tables of the operator's own are left alone)
        else:
            for version in range(max(found, 1) + 1, VERSION + 1):
                step = MIGRATIONS[version]
                if isinstance(step, str):
                    _run_script(conn, step)
                else:
                    step(conn)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


# -- one record as a row -------------------------------------------------------------
# A prepared item: (dims key, hour number, row without seq/dim, JSON text). The row holds
# REQUEST_COLUMNS minus seq and dim, in that order.
Prepared = tuple[tuple[Any, ...], int, tuple[Any, ...], str]


# Bound values are only str, int, finite float or None, whatever the record holds: a
# stray value must neither poison the sums nor make a batch fail to insert. No request
# has 2**40 (a trillion) tokens; the cap keeps sums of millions of rows inside 64 bits.
_INT_MAX = 2**40


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if -_INT_MAX <= v <= _INT_MAX else None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def _real(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def _text(v: Any) -> str | None:
    return v if v is None or isinstance(v, str) else str(v)


def prepare(r: dict[str, Any]) -> Prepared:
    """A record dict → (dims key, hour, row, JSON). Raises on a record without a valid
    timestamp (the one field every query needs) or one that is not JSON-serialisable."""
    dt = datetime.fromisoformat(r["timestamp"])
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ts = dt.timestamp()
    br = r.get("backend_reported_usage")
    if not isinstance(br, dict):
        br = {}
    key = tuple(_text(r.get(c)) for c in DIM_COLUMNS)
    dt = dt.astimezone(UTC)
    row = (
        ts,
        _int(r.get("http_status_code")) or 0,
        dt.weekday(),
        dt.hour,
        _text(r.get("session_id")),
        int(bool(r.get("streaming"))),
        _text(r.get("outcome")),
        _int(r.get("ctp_prompt_tokens")),
        _int(r.get("ptb_prompt_tokens")),
        _int(r.get("btp_completion_tokens")),
        _int(r.get("ptc_completion_tokens")),
        _int(br.get("prompt")),
        _int(br.get("completion")),
        _int(br.get("total")),
        _real(r.get("cost")),
        _int(r.get("tool_call_count")) or 0,
        _real(r.get("ttft_ms")),
        _real(r.get("total_duration_ms")),
        _real(r.get("proxy_overhead_ms")),
        _real(r.get("stream_tps")),
        key[8],
        key[9],
    )
    return key, math.floor(ts / 3600), row, orjson.dumps(r).decode()


def utc_iso_ms(ms: int) -> str:
    """Epoch milliseconds as a record's timestamp (UTC ISO-8601, milliseconds, ``Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# -- the projector's records, stored compact -------------------------------------------
# A record the projector built is stored as a JSON array, ``[RECORD_FORMAT, *values]``,
# values in RECORD_KEYS order, with ``timestamp`` as epoch milliseconds and
# ``backend_reported_usage`` as an array in BACKEND_USAGE_KEYS order. The keys were two
# thirds of each record's JSON (about 810 bytes became 330), and that text is most of
# the bytes the writer puts in the write-ahead log per request. Records from anywhere else
# (a dict given to ``UsageStore.submit``) stay JSON objects; `load_record` reads both. A
# new field means a new RECORD_FORMAT whose reader keeps the old key list for old rows.
# Format 2 added ``api``; format 1 rows read back with ``api`` null. Format 3 added
# ``key_name`` and ``team`` (the last two keys); older rows read back with both null.
RECORD_FORMAT = 3
# The record's original fields in their order, then the fields added since, each at the end
# so that CSV columns keep their positions (also the CSV export's columns).
RECORD_KEYS = (
    "id",
    "timestamp",
    "session_id",
    "turn_number",
    "frontend_type",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "streaming",
    "http_status_code",
    "outcome",
    "attempts",
    "tool_call_count",
    "tool_names",
    "ctp_prompt_tokens",
    "ptb_prompt_tokens",
    "btp_completion_tokens",
    "ptc_completion_tokens",
    "backend_reported_usage",
    "usage_source",
    "ttft_ms",
    "backend_ttfb_ms",
    "total_duration_ms",
    "proxy_overhead_ms",
    "stream_tps",
    "cost",
    "cost_source",
    "replacement",
    "proxy_user",
    "user_agent",
    "api",
    "key_name",
    "team",
)
# Fields a stored record may lack (it was stored before they existed): null on reading.
_ADDED_KEYS = ("api", "key_name", "team")
# How many values each older compact format holds (RECORD_KEYS' first ones).
_FORMAT_VALUES = {1: len(RECORD_KEYS) - 3, 2: len(RECORD_KEYS) - 2}
BACKEND_USAGE_KEYS = ("cache_write", "cached", "completion", "cost", "prompt", "reasoning", "total")
_BR = RECORD_KEYS.index("backend_reported_usage")
_TS = RECORD_KEYS.index("timestamp")


def load_record(text: str | bytes) -> dict[str, Any]:
    """A stored record as the API returns it, from either stored form and any format:
    fields added since it was stored are null, so every record has every key."""
    obj = orjson.loads(text)
    if type(obj) is not list:
        for key in _ADDED_KEYS:
            if key not in obj:
                obj[key] = None
        return obj
    fmt = obj[0]
    if fmt == RECORD_FORMAT:
        return record_from_values(obj[1:])
    held = _FORMAT_VALUES.get(fmt)
    if held is not None:  # an older format: RECORD_KEYS without the keys added since
        obj.extend([None] * (len(RECORD_KEYS) - held))
        return record_from_values(obj[1:])
    # A newer format comes with a newer schema version, which migrate refuses to open;
    # should one be met anyway, say so, not fail the page.
    return {"unreadable_record_format": fmt}


def record_from_values(v: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """The record dict of a projector's values (what `load_record` gives once stored)."""
    r = dict(zip(RECORD_KEYS, v, strict=True))
    r["timestamp"] = utc_iso_ms(v[_TS])
    br = v[_BR]
    if br is not None:
        r["backend_reported_usage"] = dict(zip(BACKEND_USAGE_KEYS, br, strict=True))
    return r


def prepare_values(v: tuple[Any, ...], ms: int) -> Prepared:
    """`prepare` for the projector's own record: its values in RECORD_KEYS order, the
    time as integer milliseconds (``v[1] == ms``), the backend's usage as a row in
    BACKEND_USAGE_KEYS order. Only what a backend supplied (token counts, cost) is checked:
    the rest the projector made itself. ``ms / 1000`` is the float that parsing the
    timestamp text gives, so the row equals `prepare` of the loaded record
    (tests/usage/test_prepare_values.py)."""
    (
        _id,
        _ts,
        session_id,
        _turn,
        frontend,
        backend,
        backend_type,
        model_requested,
        model_used,
        streaming,
        status,
        outcome,
        _attempts,
        tool_call_count,
        _names,
        ctp,
        ptb,
        btp,
        ptc,
        br,
        _source,
        ttft,
        _ttfb,
        duration,
        overhead,
        tps,
        cost,
        _cost_source,
        _replacement,
        proxy_user,
        _ua,
        api,
        key_name,
        team,
    ) = v
    tm = time.gmtime(ms // 1000)
    key = (
        backend,
        backend_type,
        frontend,
        model_requested,
        model_used,
        proxy_user,
        api,
        outcome,
        key_name,
        team,
    )
    if br is None:
        br_prompt = br_completion = br_total = None
    else:
        br_prompt, br_completion, br_total = _int(br[4]), _int(br[2]), _int(br[6])
    # The usual values (None, an int in range, a float) pass without a call to _int/_real.
    row = (
        ms / 1000,
        status or 0,
        tm.tm_wday,
        tm.tm_hour,
        session_id,
        1 if streaming else 0,
        outcome,
        ctp,
        ptb if ptb is None or (type(ptb) is int and -_INT_MAX <= ptb <= _INT_MAX) else _int(ptb),
        btp if btp is None or (type(btp) is int and -_INT_MAX <= btp <= _INT_MAX) else _int(btp),
        ptc if ptc is None or (type(ptc) is int and -_INT_MAX <= ptc <= _INT_MAX) else _int(ptc),
        br_prompt,
        br_completion,
        br_total,
        cost if cost is None or (type(cost) is float and math.isfinite(cost)) else _real(cost),
        tool_call_count,
        ttft,
        duration,
        overhead,
        tps,
        key_name,
        team,
    )
    return key, ms // 3_600_000, row, orjson.dumps((RECORD_FORMAT, *v)).decode()
