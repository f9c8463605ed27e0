"""What health probing costs the relay (docs/health.md, "What probing costs").

    .venv/bin/python -m bench.health [--endpoints 100] [--interval 1] [--duration 30]
                                     [--rate 1000] [--rounds 2] [--idle 10]

Setup: one process hosts the mock backends (bench/health/mocks.py): a traffic backend on
127.0.0.1 and ``--endpoints`` probe targets on 127.0.0.2, 127.0.0.3, ... The gateway
(``fastproxy run``) is configured with all of them and runs in its own process. With
probing on, every probe target is pinged and HTTP-probed every ``--interval`` seconds
(timeouts 1 s); with probing off (``health_check.enabled: false``) the same gateway
relays the same traffic. A paced load (bench/health/paced.py, open loop, latency from
each request's due time) sends non-streaming chat completions at ``--rate`` req/s
through the gateway to the traffic backend for ``--duration`` measured seconds.

Each round runs both modes, in an order that alternates between rounds, so drift in the
machine's background load spreads over both. Pinning (taskset, two or more CPUs): the
gateway gets CPU 0; the mocks and the load generator share CPU 1. The gateway's own CPU
time is read from /proc, idle (``--idle`` s, no traffic) and under load.

Results: a table on stdout and bench/health/results/<timestamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world!"}]})


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    """No FASTPROXY_*/USAGE_* etc. from the caller's shell: the config file is the truth."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("FASTPROXY_", "USAGE_TRACKING_", "WIRE_CAPTURE_", "ENABLE_ACTIVITY", "REPLACEMENT_")
        )
    }
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def pin(cpu: int | None) -> list[str]:
    return [] if cpu is None or shutil.which("taskset") is None else ["taskset", "-c", str(cpu)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def gateway_config(
    traffic: str, probed: list[str], probing: bool, interval: float, workdir: Path
) -> dict[str, Any]:
    backends: dict[str, Any] = {
        "traffic": {
            "type": "openai",
            "api_url": traffic,
            "models": ["gpt-4o"],
            "max_connections": 1024,
        }
    }
    for i, url in enumerate(probed):
        backends[f"probe.{i}"] = {"type": "openai", "api_url": url, "models": [f"probe-{i}"]}
    return {
        "host": "127.0.0.1",
        "backends": backends,
        "default_backend": "traffic",
        "health_check": {
            "enabled": probing,
            "ping": {"interval_seconds": interval, "timeout_seconds": 1.0},
            "http": {"interval_seconds": interval, "timeout_seconds": 1.0},
        },
        "usage_tracking": {"enabled": False, "persistence_path": str(workdir / "usage.db")},
        "log_level": "WARNING",
        "state_dir": str(workdir),
    }


def start_gateway(
    cfg: dict[str, Any], workdir: Path, cpu: int | None
) -> tuple[subprocess.Popen[bytes], int, float]:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port, admin = free_port(), free_port()
    t0 = time.monotonic()
    logf = open(workdir / "gateway.log", "ab")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [
            *pin(cpu),
            sys.executable,
            "-m",
            "fastproxy",
            "run",
            "--config",
            str(path),
            "--port",
            str(port),
            "--admin-port",
            str(admin),
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=env(),
        cwd=workdir,
        start_new_session=True,
    )
    logf.close()
    url = f"http://127.0.0.1:{port}/internal/health"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(workdir / 'gateway.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                doc = json.loads(r.read())
            summary = doc["endpoint_health"]["summary"]
            if summary["total_endpoints"] == len(cfg["backends"]):
                return proc, port, time.monotonic() - t0
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("gateway did not answer /internal/health in 60 s")
        time.sleep(0.05)


def probe_counts(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/internal/health", timeout=5) as r:
        doc = json.loads(r.read())
    eps = doc["endpoint_health"]["endpoints"]
    return {
        "healthy": doc["endpoint_health"]["summary"]["healthy_endpoints"],
        "ping_status": sorted({e["ping_status"] for e in eps}),
        "http_status": sorted({e["http_status"] for e in eps}),
    }


def one_run(
    ns: argparse.Namespace,
    mocks: dict[str, Any],
    probing: bool,
    workdir: Path,
    cpus: tuple[int | None, int | None],
    mock_pid: int,
) -> dict[str, Any]:
    wd = workdir / f"{'with' if probing else 'without'}-{time.monotonic_ns()}"
    wd.mkdir()
    cfg = gateway_config(mocks["traffic"], mocks["probed"], probing, ns.interval, wd)
    proc, port, start_s = start_gateway(cfg, wd, cpus[0])
    try:
        time.sleep(1.0)  # past start-up work; then measure the idle prober cost
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(ns.idle)
        idle_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        m0, busy0, kids0 = cpu_seconds(mock_pid), machine_busy_seconds(), children_cpu()
        out = subprocess.run(
            [
                *pin(cpus[1]),
                sys.executable,
                "-m",
                "bench.health.paced",
                "--port",
                str(port),
                "--body",
                BODY,
                "--rate",
                str(ns.rate),
                "--duration",
                str(ns.duration),
                "--warmup",
                str(ns.warmup),
            ],
            capture_output=True,
            text=True,
            env=env(),
            cwd=REPO,
            timeout=ns.duration + 120,
        )
        elapsed = time.monotonic() - t0
        gw_cpu = cpu_seconds(proc.pid) - c0
        own = gw_cpu + (cpu_seconds(mock_pid) - m0) + (children_cpu() - kids0)
        # Cores used by other processes on the machine during the load: a shared
        # machine's other work lands here, and a round with much of it is flagged.
        background = max(0.0, (machine_busy_seconds() - busy0 - own) / elapsed)
        load_cpu = gw_cpu / elapsed
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(
            {
                "probing": probing,
                "start_s": round(start_s, 3),
                "idle_cpu_pct": round(idle_cpu * 100, 2),
                "load_cpu_pct": round(load_cpu * 100, 1),
                "background_cores": round(background, 3),
                **probe_counts(port),
            }
        )
        return result
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--endpoints", type=int, default=100)
    p.add_argument("--interval", type=float, default=1.0, help="ping and HTTP probe interval")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds of load")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    p.add_argument(
        "--max-background",
        type=float,
        default=0.3,
        help="cores of other work above which a round is flagged as disturbed",
    )
    ns = p.parse_args(argv)
    cpus_available = sorted(os.sched_getaffinity(0))
    cpus = (cpus_available[0], cpus_available[1]) if len(cpus_available) >= 2 else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-health-bench-"))
    mock = subprocess.Popen(
        [*pin(cpus[1]), sys.executable, "-m", "bench.health.mocks", "--count", str(ns.endpoints)],
        stdout=subprocess.PIPE,
        env=env(),
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert mock.stdout is not None
        mocks = json.loads(mock.stdout.readline())
        log(
            f"mocks: traffic {mocks['traffic']}, {len(mocks['probed'])} probe targets; "
            f"pinning gateway CPU {cpus[0]}, mocks+load CPU {cpus[1]}; workdir {workdir}"
        )
        runs: list[dict[str, Any]] = []
        for r in range(ns.rounds):
            for probing in (True, False) if r % 2 == 0 else (False, True):
                res = one_run(ns, mocks, probing, workdir, cpus, mock.pid)
                log(
                    f"round {r + 1} probing={'on ' if probing else 'off'} "
                    f"p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms p99.9 {res['p999_ms']} ms "
                    f"max {res['max_ms']} ms errors {res['errors']} non200 {res['non_200']} "
                    f"idle CPU {res['idle_cpu_pct']}% load CPU {res['load_cpu_pct']}% "
                    f"start {res['start_s']} s background {res['background_cores']} cores "
                    f"{res['ping_status']} {res['http_status']}"
                )
                runs.append(res)
    finally:
        stop(mock)
    report = summarise(ns, runs)
    print(report["markdown"])
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (out_dir / f"{stamp}.json").write_text(
        json.dumps({"args": vars(ns), "runs": runs, "summary": report["summary"]}, indent=1)
    )
    (out_dir / f"{stamp}.md").write_text(report["markdown"] + "\n")
    return 0


def summarise(ns: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, and the per-round p99 ratio (each round runs both modes back
    to back, so a ratio within a round is the least disturbed comparison). Rounds where
    either mode saw more than ``--max-background`` cores of other work are left out of
    the medians when at least one clean round exists, and always listed."""
    pairs = []
    for r in range(ns.rounds):
        with_, without = runs[2 * r], runs[2 * r + 1]
        if not with_["probing"]:
            with_, without = without, with_
        pairs.append((with_, without))
    clean = [
        p
        for p in pairs
        if max(p[0]["background_cores"], p[1]["background_cores"]) <= ns.max_background
    ]
    used = clean or pairs
    keys = ("p50_ms", "p99_ms", "p999_ms", "max_ms", "idle_cpu_pct", "load_cpu_pct", "start_s")
    summary: dict[str, Any] = {
        mode: {k: statistics.median(p[i][k] for p in used) for k in keys}
        for i, mode in enumerate(("with", "without"))
    }
    ratios = [p[0]["p99_ms"] / p[1]["p99_ms"] for p in pairs]
    used_ratios = [p[0]["p99_ms"] / p[1]["p99_ms"] for p in used]
    summary["p99_ratio_median"] = round(statistics.median(used_ratios), 3)
    summary["p99_ratios"] = [round(x, 3) for x in ratios]
    summary["clean_rounds"] = len(clean)
    lines = [
        f"{ns.endpoints} endpoints pinged + HTTP-probed every {ns.interval:g} s; paced load "
        f"{ns.rate:g} req/s, {ns.duration:g} s per mode per round; {ns.rounds} rounds, "
        f"{len(clean)} clean (background <= {ns.max_background:g} cores); medians over "
        f"{'clean' if clean else 'all'} rounds",
        "",
        "| probing | p50 ms | p99 ms | p99.9 ms | max ms | gateway CPU idle | gateway CPU under load | start-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("without", "with"):
        s = summary[mode]
        lines.append(
            f"| {'on' if mode == 'with' else 'off'} | {s['p50_ms']:.3f} | "
            f"{s['p99_ms']:.3f} | {s['p999_ms']:.3f} | {s['max_ms']:.3f} | "
            f"{s['idle_cpu_pct']:.1f}% | {s['load_cpu_pct']:.1f}% | {s['start_s']:.2f} |"
        )
    lines += [
        "",
        "| round | p99 off | p99 on | ratio | background cores (off/on) |",
        "|---|---|---|---|---|",
    ]
    for i, (w, wo) in enumerate(pairs):
        lines.append(
            f"| {i + 1} | {wo['p99_ms']:.3f} | {w['p99_ms']:.3f} | "
            f"{w['p99_ms'] / wo['p99_ms']:.2f} | "
            f"{wo['background_cores']:.2f} / {w['background_cores']:.2f} |"
        )
    lines += [
        "",
        f"p99 with / without probing, median of per-round ratios: "
        f"{summary['p99_ratio_median']:.2f}x",
    ]
    return {"summary": summary, "markdown": "\n".join(lines)}


if __name__ == "__main__":
    sys.exit(main())
