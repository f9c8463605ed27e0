"""``python -m bench.load.scaling``: how throughput scales from 1 to 2 relay processes.

JSON chat completions at concurrency 64 (wrk) through four relays, one after another in
each round, in a rotating order: nginx with 1 and with 2 worker processes
(`proxy_pass`, keep-alive upstream), fastproxy with ``workers: 1`` and ``workers: 2``.
Behind them the canned nginx backend (1 worker, answers from memory). Nothing is pinned:
a relay with 2 workers needs both cores, so the relays, the backend and wrk share the
machine's cores the same way for all four.

What it reports is each relay's scaling, requests/s with 2 processes over 1, per round
(median, min-max): on a 2-core machine that also runs the load generator and the
backend, neither relay can double, so the comparison is fastproxy's ratio against
nginx's, not either against 2.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .backend import start_nginx_backend
from .drivers import run_wrk
from .processes import (
    BENCH_DIR,
    Proc,
    checked_start,
    fastproxy_config,
    free_port,
    nginx_binary,
    spawn,
    start_fastproxy,
)
from .scenarios import JSON_BODY, Workload


def start_nginx_relay(binary: str, upstream: int, workdir: Path, workers: int) -> Proc:
    ndir = workdir / f"nginx-{workers}"
    ndir.mkdir()
    port = free_port()
    conf = (
        (BENCH_DIR / "nginx.conf")
        .read_text()
        .replace("{{DIR}}", str(ndir))
        .replace("{{PORT}}", str(port))
        .replace("{{UPSTREAM_PORT}}", str(upstream))
        .replace("worker_processes 1;", f"worker_processes {workers};")
    )
    path = ndir / "nginx.conf"
    path.write_text(conf)
    popen, log = spawn(f"nginx-{workers}", [binary, "-p", str(ndir), "-c", str(path)], ndir)
    return checked_start(
        Proc(f"nginx-{workers}", popen, port, ndir, log, measure_children=True), 15
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load.scaling", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--usage", choices=("on", "off"), default="off")
    ns = p.parse_args(argv)
    nginx = nginx_binary(install=True)
    if nginx is None or shutil.which("wrk") is None:
        print("needs nginx and wrk (apt-get install nginx wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastproxy-scaling-"))
    backend = start_nginx_backend(nginx, work, None)
    wl = Workload("json", 64, JSON_BODY)
    targets = ["nginx-1", "nginx-2", "fastproxy-1", "fastproxy-2"]
    rps: dict[str, list[float]] = {t: [] for t in targets}
    try:
        for r in range(ns.rounds):
            order = targets[r % 4 :] + targets[: r % 4]
            for name in order:
                kind, n = name.split("-")
                rdir = work / f"r{r}-{name}"
                rdir.mkdir()
                if kind == "nginx":
                    proc = start_nginx_relay(nginx, backend.port, rdir, int(n))
                else:
                    config = fastproxy_config(backend.port, rdir, usage=ns.usage == "on")
                    config["workers"] = int(n)
                    proc = start_fastproxy(name, config, rdir, None)
                try:
                    run_wrk(proc.port, wl, 1.0, None, rdir)  # warm-up: pools, caches
                    res = run_wrk(proc.port, wl, ns.duration, None, rdir)
                finally:
                    proc.stop()
                errors = sum(res.errors.values())
                rps[name].append(res.completed / res.elapsed_s)
                print(
                    f"round {r + 1} {name}: {rps[name][-1]:,.0f} req/s"
                    + (f" ({errors} errors)" if errors else ""),
                    flush=True,
                )
                time.sleep(0.2)
    finally:
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)

    def scaling(kind: str) -> list[float]:
        return [b / a for a, b in zip(rps[f"{kind}-1"], rps[f"{kind}-2"], strict=True)]

    print(f"\nJSON c=64, usage tracking {ns.usage}, {ns.rounds} rounds x {ns.duration:g} s")
    for kind in ("nginx", "fastproxy"):
        s = scaling(kind)
        one = statistics.median(rps[f"{kind}-1"])
        two = statistics.median(rps[f"{kind}-2"])
        print(
            f"{kind}: 1 process {one:,.0f} req/s, 2 processes {two:,.0f} req/s; "
            f"scaling {statistics.median(s):.2f}x ({min(s):.2f}-{max(s):.2f})"
        )
    f, n = scaling("fastproxy"), scaling("nginx")
    rel = [a / b for a, b in zip(f, n, strict=True)]
    print(
        f"fastproxy's scaling over nginx's: {statistics.median(rel):.2f} "
        f"({min(rel):.2f}-{max(rel):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
