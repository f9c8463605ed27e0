"""Reading the usage database after the gateway stopped: one record per request?

Each stream sent a unique ``x-session-id``, stored as the record's ``session_id``, so
records are matched to requests one by one, not just counted. The count is read three
ways that must agree: rows of ``usage_requests`` (the per-request table), rows of
``usage_records`` (the stored record text), and ``fastproxy usage stats --json``'s
``request_count`` (the CLI an operator would use, which reads the hourly rollups).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .loadgen import EXPECTED_OUTCOME, StreamResult
from .procs import clean_env, fastproxy_argv


@dataclass
class RecordAudit:
    rows: int = 0
    record_texts: int = 0
    cli_request_count: int | None = None
    expected: int = 0
    missing: list[str] = field(default_factory=list)
    missing_by_kind: dict[str, int] = field(default_factory=dict)
    duplicated: dict[str, int] = field(default_factory=dict)
    unexpected: int = 0  # rows whose session no sent request had
    by_outcome: dict[str, int] = field(default_factory=dict)
    # kind -> outcome -> count, over the requests that have exactly one record
    outcome_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    outcome_mismatches: int = 0
    error: str | None = None

    @property
    def one_per_request(self) -> bool:
        return (
            self.error is None
            and not self.missing
            and not self.duplicated
            and self.unexpected == 0
            and self.rows == self.expected
            and self.record_texts == self.rows
            and self.cli_request_count == self.rows
        )

    def as_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["missing"] = self.missing[:20]
        d["missing_count"] = len(self.missing)
        d["duplicated"] = dict(list(self.duplicated.items())[:20])
        d["duplicated_count"] = len(self.duplicated)
        return d


def cli_request_count(db: Path) -> int | None:
    try:
        out = subprocess.run(
            [*fastproxy_argv(), "usage", "stats", "--db", str(db), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        return int(json.loads(out.stdout)["request_count"])
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None


def audit(db: Path, results: list[StreamResult]) -> RecordAudit:
    a = RecordAudit()
    sent = {r.session: r for r in results if r.sent}
    a.expected = len(sent)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT session_id, outcome FROM usage_requests").fetchall()
            a.record_texts = int(conn.execute("SELECT count(*) FROM usage_records").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        a.error = f"{type(exc).__name__}: {exc}"
        return a
    a.rows = len(rows)
    a.cli_request_count = cli_request_count(db)
    per_session: Counter[str | None] = Counter(s for s, _ in rows)
    outcome_of: dict[str, str] = {}
    for session, outcome in rows:
        if session is not None:
            outcome_of[session] = str(outcome)
    a.by_outcome = dict(Counter(str(o) for _, o in rows).most_common())
    a.unexpected = sum(n for s, n in per_session.items() if s not in sent)
    by_kind: dict[str, Counter[str]] = {}
    for session, res in sent.items():
        n = per_session.get(session, 0)
        if n == 0:
            a.missing.append(session)
            a.missing_by_kind[res.kind] = a.missing_by_kind.get(res.kind, 0) + 1
            continue
        if n > 1:
            a.duplicated[session] = n
            continue
        outcome = outcome_of[session]
        by_kind.setdefault(res.kind, Counter())[outcome] += 1
        if outcome != EXPECTED_OUTCOME[res.kind]:
            a.outcome_mismatches += 1
    a.outcome_by_kind = {k: dict(c.most_common()) for k, c in sorted(by_kind.items())}
    return a
