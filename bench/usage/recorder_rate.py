"""Usage recorder rate: recorder CPU per record and loop CPU per hand-off, at saturation.

    .venv/bin/python -m bench.usage.recorder_rate [--records 50000] [--compare]

Builds N realistic finished exchanges (chat bodies of a few hundred bytes to a few KB,
OpenAI and Anthropic dialects, half of them streams, some with tools, backend usage on
most), then, on a uvloop event loop, hands them to a real recorder process over the real
channel exactly as the gateway does (``UsageService.on_exchange``: pack into the link's
buffer, one flush per loop iteration), 64 per iteration, as fast as the recorder takes
them (the producer waits while more than ``--window`` bytes are pending, so nothing is
dropped and the recorder never idles). Then the channel is closed, the recorder drains
and exits, and the figures are:

- recorder µs/record: the recorder's CPU (user + system, from /proc while it runs and
  ``RUSAGE_CHILDREN`` once it is reaped) from its "ready" report to its exit, over N:
  unpack, projection (prompt counting, session digest, cost), rows, SQLite, the final
  drain and checkpoint. Start-up (imports, tokenizer, migration) is not counted.
- loop µs/hand-off: the event loop thread's CPU (``time.thread_time``) spent in
  ``on_exchange`` and in the flushes, over N.

``--compare`` also runs today's in-process design on the same records: a `UsageStore`
writer thread with the projector as ``build`` (what the gateway ran before the recorder),
its writer thread's CPU per record from /proc/self/task/TID/stat, and the loop's cost per
submit (``UsageCapture.take`` + ``submit``).

Pin as the load harness does with ``taskset``; the recorder's pid is printed (and in the
gateway it is ``storage.recorder_pid`` of /internal/health).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from fastproxy.config import load_config
from fastproxy.core.records import BackendUsage, ExchangeRecord
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import ExactCounter, Projector
from fastproxy.monitor.usage_service import UsageCapture, UsageService, build_prepared
from fastproxy.storage.recorder_link import RecorderLink
from fastproxy.storage.usage_store import UsageStore

PER_ITERATION = 64
TICK = os.sysconf("SC_CLK_TCK")
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
]


def _text(rng: random.Random, n_bytes: int) -> str:
    out: list[str] = []
    size = 0
    while size < n_bytes:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def make_records(n: int, seed: int = 7, turns: int = 1) -> list[ExchangeRecord]:
    """N exchanges. With ``turns`` > 1, consecutive records are the turns of
    conversations of that many requests: each sends its system prompt and the whole
    history again (an assistant reply of 200-800 bytes after each user message), as chat
    clients do."""
    rng = random.Random(seed)
    now = time.time()
    recs: list[ExchangeRecord] = []
    system, history = "", []
    for i in range(n):
        conv = i // turns  # one dialect, model and tool set per conversation
        anthropic = conv % 3 == 2
        stream = i % 2 == 0
        started = 1000.0 + i * 0.01
        rec = ExchangeRecord(i, i // 8, started)
        rec.wall_started_at = now + i * 0.001
        rec.upstream_sent_at = started + 0.0002
        rec.backend_ttfb_at = started + 0.05
        rec.first_content_at = started + 0.051 if stream else 0.0
        rec.upstream_done_at = started + 0.3
        rec.ended_at = started + 0.3003
        rec.streaming, rec.status, rec.attempts, rec.outcome = stream, 200, 1, "ok"
        if turns == 1 or i % turns == 0:
            system, history = _text(rng, rng.randint(50, 400)), []
        elif turns > 1:
            history.append(_text(rng, rng.randint(200, 800)))  # the previous answer
        user = _text(rng, rng.randint(100, 3500))
        earlier = [
            {"role": "user" if k % 2 == 0 else "assistant", "content": text}
            for k, text in enumerate(history)
        ]
        if anthropic:
            rec.frontend, rec.path = "anthropic", "/v1/messages"
            rec.backend, rec.backend_type = "anthropic.1", "anthropic"
            rec.model_requested = rec.model_used = "claude-3-5-sonnet-20241022"
            body: dict[str, Any] = {
                "model": rec.model_used,
                "max_tokens": 512,
                "system": system,
                "stream": stream,
                "messages": [*earlier, {"role": "user", "content": user}],
            }
            prompt = len(user) // 4 + 40
            rec.usage = BackendUsage(prompt=prompt, completion=120, total=prompt + 120, cached=0)
        else:
            rec.frontend, rec.path = "openai", "/v1/chat/completions"
            rec.backend, rec.backend_type = "openai.1", "openai"
            rec.model_requested = rec.model_used = "gpt-4o" if conv % 4 else "gpt-4o-mini"
            body = {
                "model": rec.model_used,
                "stream": stream,
                "messages": [
                    {"role": "system", "content": system},
                    *earlier,
                    {"role": "user", "content": user},
                ],
            }
            if conv % 5 == 0:
                body["tools"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "description": "Weather for a city",
                            "parameters": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                            },
                        },
                    }
                ]
                rec.tool_call_count, rec.tool_names = 1, ["get_weather"]
            if i % 7:  # some backends report no usage: the record estimates
                prompt = len(user) // 4 + 30
                rec.usage = BackendUsage(prompt=prompt, completion=100, total=prompt + 100)
        if turns > 1:
            history.append(user)
        rec.btp_completion_est = rec.ptc_completion_est = 100
        rec.user_agent = "bench/1.0"
        rec.request_body = orjson.dumps(body)
        recs.append(rec)
    return recs


def _proc_cpu(pid: int | str, task: int | None = None) -> float:
    path = f"/proc/{pid}/task/{task}/stat" if task is not None else f"/proc/{pid}/stat"
    with open(path) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


async def _below(link: RecorderLink, window: int) -> None:
    """Wait until no more than ``window`` bytes are pending (polled: the recorder's socket
    drains with no event the producer could wait on)."""
    for _ in iter(int, 1):
        if link.pending() <= window:
            return
        await asyncio.sleep(0.0005)


async def run_recorder(recs: list[ExchangeRecord], db: Path, window: int) -> dict[str, float]:
    cfg = load_config(
        {"usage_tracking": {"persistence_path": str(db), "retention_days": 0}},
        env={},
        use_files=False,
    ).config
    service = UsageService(cfg)
    await service.start()
    link = service.store
    assert link is not None
    pid = link.recorder_pid
    assert pid is not None
    print(f"recorder pid {pid}")
    cpu0 = _proc_cpu(pid)
    children0 = _children_cpu()
    wall0 = time.perf_counter()
    loop_cpu = 0.0
    on_exchange = service.on_exchange
    flush = link._flush
    n = len(recs)
    i = 0
    while i < n:
        await _below(link, window)
        t = time.thread_time()
        for rec in recs[i : i + PER_ITERATION]:
            on_exchange(rec)
        flush()  # what call_soon runs at the end of the iteration, timed here
        loop_cpu += time.thread_time() - t
        i += PER_ITERATION
        await asyncio.sleep(0)
    handed_wall = time.perf_counter() - wall0
    await service.stop()
    wall = time.perf_counter() - wall0
    recorder_cpu = _children_cpu() - children0 - cpu0
    st = link.status()
    assert st["dropped_records"] == 0 and st["bodies_dropped"] == 0, st
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT count(*) FROM usage_requests").fetchone()[0]
    return {
        "recorder_us": recorder_cpu / n * 1e6,
        "loop_us": loop_cpu / n * 1e6,
        "wall_s": wall,
        "handed_wall_s": handed_wall,
        "rate": n / wall,
        "rows": float(rows),
    }


def run_thread(recs: list[ExchangeRecord], db: Path) -> dict[str, float]:
    """Today's design before the recorder: a writer thread in the loop's process."""
    projector = Projector(PriceTable(), ExactCounter.load())
    store = UsageStore(
        db,
        flush_interval=1.0,
        max_queue=len(recs) + 1,
        retention_days=0,
        build=lambda c: build_prepared(projector, c),
    )
    store.start()
    thread = store._thread
    assert thread is not None and thread.native_id is not None
    tid = thread.native_id
    cpu0 = _proc_cpu("self", tid)
    wall0 = time.perf_counter()
    loop_cpu = 0.0
    for i in range(0, len(recs), PER_ITERATION):
        t = time.thread_time()
        for rec in recs[i : i + PER_ITERATION]:
            store.submit(UsageCapture.take(rec, True))
        loop_cpu += time.thread_time() - t
        time.sleep(0)
    done = threading.Event()

    def stop() -> None:
        store.stop(120)
        done.set()

    cpu_end = 0.0
    stopper = threading.Thread(target=stop)
    stopper.start()
    while not done.is_set():
        try:
            cpu_end = _proc_cpu("self", tid)
        except OSError:
            break
        time.sleep(0.01)
    stopper.join()
    wall = time.perf_counter() - wall0
    return {
        "writer_us": (cpu_end - cpu0) / len(recs) * 1e6,
        "loop_us": loop_cpu / len(recs) * 1e6,
        "wall_s": wall,
        "rate": len(recs) / wall,
        "rows": float(store.rows_written),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.usage.recorder_rate")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--window", type=int, default=8 << 20, help="bytes pending before waiting")
    p.add_argument("--compare", action="store_true", help="also run the in-process writer")
    p.add_argument(
        "--turns", type=int, default=1, help="requests per conversation (history resent)"
    )
    ns = p.parse_args()
    recs = make_records(ns.records, turns=ns.turns)
    sizes = [len(r.request_body or b"") for r in recs]
    print(
        f"{len(recs)} records, bodies {min(sizes)}-{max(sizes)} B (mean {sum(sizes) // len(sizes)}), "
        f"{sum(r.streaming for r in recs)} streams, "
        f"{sum(r.frontend == 'anthropic' for r in recs)} Anthropic"
        + (f", conversations of {ns.turns} turns" if ns.turns > 1 else "")
    )
    tmp = Path(tempfile.mkdtemp(prefix="recorder-rate-"))
    try:
        r = uvloop.run(run_recorder(recs, tmp / "recorder.db", ns.window))
        print(
            f"recorder process: {r['recorder_us']:.1f} µs CPU/record in the recorder, "
            f"{r['loop_us']:.2f} µs CPU/hand-off on the loop; {r['rate']:.0f} records/s "
            f"({r['wall_s']:.2f} s, {int(r['rows'])} rows)"
        )
        if ns.compare:
            t = run_thread(recs, tmp / "thread.db")
            print(
                f"writer thread (before): {t['writer_us']:.1f} µs CPU/record on the writer "
                f"thread, {t['loop_us']:.2f} µs CPU/submit on the loop; {t['rate']:.0f} "
                f"records/s ({t['wall_s']:.2f} s, {int(t['rows'])} rows)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
