"""The usage recorder's work per record, stage by stage, in one process.

    .venv/bin/python -m bench.usage.recorder_stages [--records 50000] [--turns 1]

The records of ``bench.usage.recorder_rate`` are packed into frames (``pack_exchange``,
2,000 per buffer), then each buffer goes through what the recorder does with it, every
stage timed with ``time.process_time`` and the objects of one buffer dropped before the
next (as the recorder's batches are):

- unpack: ``unpack_exchanges`` (frame -> tuple);
- parse / analyse / count / digest: the parts of the projection that look at the body
  (``orjson.loads``, ``analyse_prompt``, ``count_prompt`` with the projector's memo of
  counts, ``session_digest``), run on their own to split it;
- project: the whole ``Projector.prepared_frame`` again, what the recorder's codec runs
  (the stages above plus the rest: ``_speedups.usage_row`` for token points, timings,
  cost, the record's values, key and row, then the record's JSON text); "rest" is
  project minus those four;
- insert: ``UsageStore._insert`` with the recorder's settings (its PRAGMAs, 2,000-record
  transactions, the compiled rollup fold, no yields).

The sum is the recorder's work per record, less its socket reads, its two threads' hand-
offs and the final checkpoint (``recorder_rate`` measures all of that together).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from fastproxy._speedups import estimate_tokens, fold_rollups, pack_exchange, unpack_exchanges
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import (
    ExactCounter,
    Projector,
    analyse_prompt,
    count_prompt,
    session_digest,
)
from fastproxy.storage.recorder import BATCH, GC_THRESHOLD, PRAGMAS
from fastproxy.storage.usage_store import UsageStore

from .recorder_rate import make_records

STAGES = ("unpack", "parse", "analyse", "count", "digest", "project", "insert")


def measure(n: int, turns: int, db: Path) -> dict[str, float]:
    recs = make_records(n, turns=turns)
    bufs: list[bytearray] = []
    for i in range(0, n, BATCH):
        buf = bytearray()
        for rec in recs[i : i + BATCH]:
            pack_exchange(rec, rec.request_body, buf)
        bufs.append(buf)
    del recs
    exact = ExactCounter.load()
    projector = Projector(PriceTable(), exact)
    seen: dict[tuple[Any, int, int], int] = {}
    store = UsageStore(
        db,
        flush_interval=1.0,
        max_queue=n + 1,
        retention_days=0,
        pragmas=PRAGMAS,
        batch_size=BATCH,
        fold=fold_rollups,
        courtesy="none",
    )
    store._open()
    conn = store._conn
    assert conn is not None
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    spent = dict.fromkeys(STAGES, 0.0)
    clock = time.process_time
    for buf in bufs:
        t0 = clock()
        frames, _ = unpack_exchanges(buf)
        t1 = clock()
        parsed = [orjson.loads(f[27]) for f in frames if f[27] is not None]
        t2 = clock()
        facts = [analyse_prompt(p) for p in parsed]
        t3 = clock()
        for f, fr in zip(facts, frames, strict=True):
            counter = exact.counter_for(fr[14]) if exact is not None else None
            count_prompt(f, counter or estimate_tokens, False, seen)
        t4 = clock()
        for f, fr in zip(facts, frames, strict=True):
            session_digest(fr[8], f.system_text, f.user_text)
        t5 = clock()
        del parsed, facts
        prepared = [projector.prepared_frame(fr) for fr in frames]
        t6 = clock()
        store._insert(conn, prepared)
        t7 = clock()
        for stage, dt in zip(
            STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6), strict=True
        ):
            spent[stage] += dt
        del frames, prepared
    conn.close()
    return {k: v / n * 1e6 for k, v in spent.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.usage.recorder_stages")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--turns", type=int, default=1)
    ns = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recorder-stages-"))
    try:
        us = measure(ns.records, ns.turns, tmp / "stages.db")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rest = us["project"] - us["parse"] - us["analyse"] - us["count"] - us["digest"]
    print(
        "µs CPU/record: "
        + ", ".join(f"{k} {us[k]:.2f}" for k in ("unpack", "parse", "analyse", "count", "digest"))
        + f", rest {rest:.2f} (project {us['project']:.2f}), insert {us['insert']:.2f}"
        + f"; total {us['unpack'] + us['project'] + us['insert']:.2f}"
    )


if __name__ == "__main__":
    main()
