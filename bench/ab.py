"""``python -m bench.ab REV_A REV_B``: two revisions of the gateway, side by side.

A change to the request path is judged by its ratio to the revision before it, measured
in one run: the host's other work moves absolute figures between runs by more than most
single changes are worth. Both revisions are exported and built (``git archive``, as
``bench.load --snapshot``), both gateways start on CPU 0 (the one not being measured is
idle), the canned nginx backend and wrk run on CPU 1, and rounds alternate A, B, A, B.
Each round prints requests/s and the gateway's CPU per request (the loop's process from
/proc; with ``--usage``, the usage recorder's too), then the per-round ratios.

    python -m bench.ab HEAD~1 HEAD                  # JSON c=64, 6 rounds of 3 s
    python -m bench.ab HEAD~1 HEAD --usage --rounds 8
    python -m bench.ab main WORKTREE                # WORKTREE: the working tree as it is
    python -m bench.ab HEAD~1 HEAD --stream         # SSE: 200-event streams, c=64
    python -m bench.ab HEAD~1 HEAD --stream --capture   # both with wire capture on
    python -m bench.ab HEAD~1 HEAD --policy         # bench.load's scenario e policy
    python -m bench.ab HEAD HEAD --b-adds capture   # one revision: what a feature costs

Needs nginx and wrk (apt-get install nginx wrk). 127.0.0.1 only; it stops by itself.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.load.__main__ import snapshot
from bench.load.backend import start_nginx_backend
from bench.load.drivers import keys_lua
from bench.load.processes import (
    _children,
    clean_env,
    cpu_seconds,
    fastproxy_config,
    free_port,
    nginx_binary,
    pin_process,
    python_cmd,
    wait_port,
)
from bench.load.scenarios import JSON_BODY, POLICY_KEYS, SSE_BODY

ROOT = Path(__file__).resolve().parents[1]
_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def _source(rev: str) -> tuple[Path | None, str]:
    if rev == "WORKTREE":
        return None, "worktree"
    return snapshot(rev)


def _start(
    src: Path | None, backend_port: int, work: Path, args: Any, adds: str | None
) -> tuple[Any, int]:
    port = free_port()
    features = {"usage": args.usage, "capture": args.capture, "policy": args.policy}
    if adds is not None:
        features[adds] = True
    config = fastproxy_config(backend_port, work, **features)
    config.update(port=port, admin={"enabled": False}, health_check={"enabled": False})
    path = work / "fastproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["taskset", "-c", "0", *python_cmd(sys.executable, src)]
    gateway = subprocess.Popen(
        [*argv, "-m", "fastproxy", "run", "--config", str(path)],
        cwd=src or ROOT,
        env=clean_env(src),
        stdout=subprocess.DEVNULL,
        stderr=(work / "gw.log").open("wb"),
    )
    wait_port(port, 60, gateway)
    return gateway, port


def _round(
    gateway: Any, port: int, lua: Path, seconds: float, connections: int = 64
) -> tuple[float, float, float]:
    """requests/s, the gateway's and its children's CPU µs per request."""
    kids = _children(gateway.pid)
    for kid in kids:
        pin_process(kid, {1})
    before = cpu_seconds(gateway.pid), sum(cpu_seconds(k) for k in kids)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "-s",
            str(lua),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = cpu_seconds(gateway.pid), sum(cpu_seconds(k) for k in kids)
    served = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if served is None or rate is None:
        raise SystemExit(f"wrk printed no request count:\n{out}")
    n = int(served.group(1))
    return (
        float(rate.group(1)),
        1e6 * (after[0] - before[0]) / n,
        1e6 * (after[1] - before[1]) / n,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("a", help="the revision before (a git revision, or WORKTREE)")
    ap.add_argument("b", help="the revision after")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--usage", action="store_true", help="usage tracking on in both")
    ap.add_argument("--connections", type=int, default=64, help="wrk's connections (64)")
    ap.add_argument("--stream", action="store_true", help="SSE (200 events) instead of JSON")
    ap.add_argument("--capture", action="store_true", help="wire capture on in both")
    ap.add_argument(
        "--policy",
        action="store_true",
        help="scenario e's policy in both: 100 named keys with limits, a least_busy group",
    )
    ap.add_argument(
        "--b-adds",
        choices=("usage", "capture", "policy"),
        help="this feature on in B only (with A = B: the feature's cost in one run)",
    )
    args = ap.parse_args(argv)
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None and not (tool == "nginx" and nginx_binary(False)):
            raise SystemExit(f"bench.ab needs {tool} (apt-get install nginx wrk)")
    sources = [_source(args.a), _source(args.b)]
    work = Path(tempfile.mkdtemp(prefix="fastproxy-ab-"))
    binary = nginx_binary(False)
    assert binary is not None
    backend = start_nginx_backend(binary, work, (1,))
    gateways: list[Any] = []
    try:
        lua = work / "post.lua"
        text = _LUA.format(body=SSE_BODY if args.stream else JSON_BODY)
        if args.stream:
            text += 'wrk.headers["x-bench-stream"] = "1"\n'
        if args.policy or args.b_adds == "policy":
            text += keys_lua(POLICY_KEYS)
        lua.write_text(text)
        ports = []
        for i, (src, _) in enumerate(sources):
            (work / str(i)).mkdir()
            adds = args.b_adds if i == 1 else None
            gateway, port = _start(src, backend.port, work / str(i), args, adds)
            gateways.append(gateway)
            ports.append(port)
        time.sleep(1.0)  # the recorders report ready after the gateways listen
        for gateway, port in zip(gateways, ports, strict=True):
            _round(gateway, port, lua, 1.0)  # warm-up
        names = [name for _, name in sources]
        kind = "SSE (200 events)" if args.stream else "JSON"
        print(
            f"# bench.ab: A = {names[0]}, B = {names[1]}; {kind} c={args.connections}, "
            f"usage {args.usage}, "
            f"capture {args.capture}, policy {args.policy}; B adds {args.b_adds}"
        )
        ratios, cpu_a, cpu_b = [], [], []
        for r in range(args.rounds):
            a = _round(gateways[0], ports[0], lua, args.seconds, args.connections)
            b = _round(gateways[1], ports[1], lua, args.seconds, args.connections)
            ratios.append(b[0] / a[0])
            cpu_a.append(a[1])
            cpu_b.append(b[1])
            helpers = args.usage or args.capture or args.b_adds in ("usage", "capture")
            child = f" (+{a[2]:.1f} / +{b[2]:.1f} children)" if helpers else ""
            print(
                f"round {r + 1}: A {a[0]:,.0f} req/s {a[1]:.1f} µs/req | "
                f"B {b[0]:,.0f} req/s {b[1]:.1f} µs/req{child} | B/A {b[0] / a[0]:.3f}"
            )
        print(
            f"B/A requests/s: median {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}); gateway µs/request "
            f"{statistics.median(cpu_a):.1f} -> {statistics.median(cpu_b):.1f}"
        )
    finally:
        for gateway in gateways:
            gateway.terminate()
            gateway.wait(10)
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
