"""Live activity across workers: each worker tracks its own exchanges (its own
`ActivityTracker`, counted per chunk on its own loop) and sends a snapshot with every
heartbeat; the primary merges the latest ones into the reads the admin views make
(`snapshot`, `global_snapshot`, `swept_total`), as one tracker would answer them.

Why snapshots in the heartbeat rather than counter blocks in shared memory: a reader
needs every live entry's identity (session, model, start) as well as its bytes, and
those live in each worker's Python objects; the bytes alone in shared memory would
still need the rest sent. A snapshot is at most one heartbeat (0.5 s) old, which is
what a live view refreshed every second shows anyway, and it costs the worker nothing
per chunk.

Exchange ids are unique across workers: worker ``i`` of ``n`` numbers its requests
``i+1, i+1+n, ...`` (`DataPlane.id_step`), so the merged list never shows two
connections with one id.
"""

from __future__ import annotations

import time
from typing import Any

from ..monitor.activity import (
    ActivitySnapshot,
    ActivityTracker,
    BackendActivity,
    ConnectionInfo,
    GlobalActivity,
)


def snapshot_doc(tracker: ActivityTracker) -> dict[str, Any]:
    """A worker's snapshot as JSON-able lists (what the heartbeat carries)."""
    snap = tracker.snapshot()
    g = snap.totals
    return {
        "connections": [
            [
                c.exchange_id,
                c.backend,
                c.session_id,
                c.model,
                c.streaming,
                c.started_at,
                c.duration_seconds,
                c.last_activity_at,
                c.bytes_rx,
                c.bytes_tx,
            ]
            for c in snap.connections
        ],
        "backends": {
            name: [
                b.active_connections,
                b.bytes_rx,
                b.bytes_tx,
                b.lifetime_bytes_rx,
                b.lifetime_bytes_tx,
            ]
            for name, b in snap.backends.items()
        },
        "totals": [
            g.total_active_connections,
            g.total_bytes_rx,
            g.total_bytes_tx,
            g.lifetime_bytes_rx,
            g.lifetime_bytes_tx,
        ],
        "swept_total": tracker.swept_total,
    }


class MergedActivity:
    """The primary's activity view: the sum of the workers' latest snapshots, plus the
    lifetime bytes and sweeps of workers that were replaced."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, Any]] = {}  # worker index -> its snapshot doc
        self._gone_backends: dict[str, list[int]] = {}  # name -> [lifetime rx, tx]
        self._gone_totals = [0, 0]
        self._gone_swept = 0

    def update(self, index: int, doc: dict[str, Any]) -> None:
        self.latest[index] = doc

    def retire(self, index: int) -> None:
        """Worker ``index`` is gone: its live entries with it, its lifetime bytes kept."""
        doc = self.latest.pop(index, None)
        if doc is None:
            return
        for name, b in doc["backends"].items():
            acc = self._gone_backends.setdefault(name, [0, 0])
            acc[0] += b[3]
            acc[1] += b[4]
        self._gone_totals[0] += doc["totals"][3]
        self._gone_totals[1] += doc["totals"][4]
        self._gone_swept += doc["swept_total"]

    @property
    def swept_total(self) -> int:
        return self._gone_swept + sum(d["swept_total"] for d in self.latest.values())

    def global_snapshot(self) -> GlobalActivity:
        n = rx = tx = life_rx = life_tx = 0
        for d in self.latest.values():
            t = d["totals"]
            n += t[0]
            rx += t[1]
            tx += t[2]
            life_rx += t[3]
            life_tx += t[4]
        return GlobalActivity(
            n, rx, tx, life_rx + self._gone_totals[0], life_tx + self._gone_totals[1]
        )

    def snapshot(self) -> ActivitySnapshot:
        conns: list[ConnectionInfo] = []
        per: dict[str, list[int]] = {
            name: [0, 0, 0, rx, tx] for name, (rx, tx) in self._gone_backends.items()
        }
        for d in self.latest.values():
            conns += [ConnectionInfo(*c) for c in d["connections"]]
            for name, b in d["backends"].items():
                acc = per.setdefault(name, [0, 0, 0, 0, 0])
                for i in range(5):
                    acc[i] += b[i]
        conns.sort(key=lambda c: c.exchange_id, reverse=True)
        backends = {name: BackendActivity(*v) for name, v in per.items()}
        return ActivitySnapshot(time.time(), conns, backends, self.global_snapshot())
