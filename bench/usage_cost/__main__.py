"""What usage tracking costs the relay, stage by stage (docs/BENCHMARKS.md quotes it).

Run:  .venv/bin/python -m bench.usage_cost [--rounds 3] [--seconds 6]

The load harness gives one number for usage tracking on vs off. This splits it: the same
JSON workload as the harness's a64 (wrk, 64 connections, the mock's chat completion) is
driven through the gateway with usage tracking off, then with the writer cut at each
stage (bench/usage_cost/gateway.py says what each mode does). Modes are interleaved
within every round, so a change in the machine's background load hits all of them.

Pinning as in the harness on two cores: the gateway (event loop and writer thread) on
CPU 0, the mock and wrk on CPU 1. For each mode it prints the median requests/s, its ratio
to "off", and the CPU per request of the event loop and of the writer thread, read from
/proc per thread over the measured window (the writer's is per record: one per request).
A writer that kept up leaves a queue of at most about one batch at the end; a deeper queue
is printed and means the figures flatter that mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from ..load.drivers import run_wrk, wrk_available
from ..load.processes import (
    Pinning,
    Proc,
    checked_start,
    clean_env,
    fastproxy_config,
    free_port,
    spawn,
    start_mock,
    taskset_prefix,
)
from ..load.scenarios import JSON_BODY, Workload
from .gateway import MODES

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks per thread name (the event loop is the main thread, named python)."""
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        name = "loop" if tid == str(pid) else name
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def start_gateway(mode: str, mock_port: int, workdir: Path, pin: Pinning) -> Proc:
    wd = workdir / mode
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    config = fastproxy_config(mock_port, wd, usage=mode != "off")
    config["admin"] = {"port": free_port()}
    cfg = wd / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [
        *taskset_prefix(pin.relay),
        sys.executable,
        "-m",
        "bench.usage_cost.gateway" if mode != "off" else "fastproxy",
        *([mode] if mode != "off" else ["run", "--config"]),
        str(cfg),
        "--port",
        str(port),
    ]
    popen, log = spawn("gateway", argv, wd, clean_env())  # PYTHONPATH: this checkout
    proc = Proc(mode, popen, port, wd, log, info={"admin_port": config["admin"]["port"]})
    return checked_start(proc, 60)


def queue_depth(proc: Proc) -> int | None:
    url = f"http://127.0.0.1:{proc.info['admin_port']}/internal/health"
    with urllib.request.urlopen(url, timeout=5) as r:
        storage = json.load(r).get("storage") or {}
    return storage.get("queue_depth")


def one(mode: str, mock_port: int, workdir: Path, pin: Pinning, seconds: float) -> dict[str, Any]:
    proc = start_gateway(mode, mock_port, workdir, pin)
    wl = Workload("json", 64, JSON_BODY)
    try:
        run_wrk(proc.port, wl, 2.0, pin.mock, workdir)  # warm-up
        t0 = thread_ticks(proc.popen.pid)
        res = run_wrk(proc.port, wl, seconds, pin.mock, workdir)
        t1 = thread_ticks(proc.popen.pid)
        depth = queue_depth(proc)
    finally:
        proc.stop()
    n = max(1, res.completed)
    per = {k: (t1[k] - t0.get(k, 0)) / CLK_TCK / n * 1e6 for k in t1}
    return {
        "rps": res.completed / res.elapsed_s,
        "loop_us": per.get("loop", 0.0),
        "writer_us": per.get("usage-writer", 0.0),
        "queue": depth,
        "other_us": sum(v for k, v in per.items() if k not in ("loop", "usage-writer")),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.usage_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per round")
    p.add_argument("--modes", default=",".join(("off", *MODES)))
    ns = p.parse_args()
    if not wrk_available():
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    modes = ns.modes.split(",")
    pin = Pinning.plan()
    print(f"pinning: {pin.describe()}; {ns.rounds} rounds x {ns.seconds:.0f} s per mode")
    with tempfile.TemporaryDirectory(prefix="fastproxy-usage-cost-") as tmp:
        workdir = Path(tmp)
        mock = start_mock(workdir, pin.mock)
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        try:
            for r in range(ns.rounds):
                for mode in modes:
                    out = one(mode, mock.port, workdir, pin, ns.seconds)
                    results[mode].append(out)
                    print(
                        f"round {r + 1} {mode:22s} {out['rps']:8.0f} req/s  loop "
                        f"{out['loop_us']:6.1f} µs/req  writer {out['writer_us']:6.1f} "
                        f"µs/record  queue at end {out['queue']}",
                        flush=True,
                    )
                    time.sleep(0.5)
        finally:
            mock.stop()
    base = statistics.median(x["rps"] for x in results.get("off", [])) if "off" in results else None
    print(
        "\n| mode | req/s (median) | x off | loop CPU µs/req | writer CPU µs/record | "
        "max queue at end |\n|---|---|---|---|---|---|"
    )
    for mode in modes:
        rs = results[mode]
        rps = statistics.median(x["rps"] for x in rs)
        ratio = f"{rps / base:.2f}" if base else "—"
        queues = [x["queue"] for x in rs if x["queue"] is not None]
        print(
            f"| {mode} | {rps:,.0f} | {ratio} | "
            f"{statistics.median(x['loop_us'] for x in rs):.1f} | "
            f"{statistics.median(x['writer_us'] for x in rs):.1f} | "
            f"{max(queues) if queues else '—'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
