"""``python -m bench.profile``: where the relay's CPU per request goes.

Starts the mock LLM (CPU 1), the gateway under cProfile (CPU 0, ``bench/profile/child.py``)
and wrk (CPU 1) for a fixed time against 127.0.0.1, stops the gateway with SIGTERM and
prints the functions that took the loop's time, per request: own time (``tottime``) in
µs per request, the share of the profiled total, and the same summed per module.

cProfile adds a fixed cost to every Python call, so the absolute µs are inflated (about
twice for call-heavy code) and the ranking leans toward code that makes many small calls.
Compiled code (uvloop's transports, httptools, the Cython core) is counted in the own time
of the Python function that called it: ``_write_json``'s time includes the socket write. Read the table as a map of
where the next saving is, not as the gateway's speed (bench/load measures that).

    python -m bench.profile                       # JSON, c=64, usage tracking on, 10 s
    python -m bench.profile --stream --usage off  # SSE (200 events)
    python -m bench.profile --perf                # no cProfile: perf's split by binary

``--perf`` answers the question cProfile cannot: how the loop thread's real CPU per
request divides between the kernel (socket calls, waking the peers), the interpreter
and each compiled library. The gateway runs unprofiled on CPU 0 against the canned
nginx backend (bench/load's default; the mock LLM when nginx is missing), ``perf record``
samples its threads for the run, and the CPU time the process used in that window
(/proc) is divided by the requests served and split by perf's shares per binary (and,
for the kernel and the interpreter, their top symbols). Needs ``perf`` (linux-perf).
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.load.drivers import keys_lua
from bench.load.processes import fastproxy_config, free_port, start_mock, start_pinned_gateway
from bench.load.scenarios import JSON_BODY, POLICY_KEYS, SSE_BODY

ROOT = Path(__file__).resolve().parents[2]
_LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-mock-tokens"] = "{tokens}"
"""


def _requests(wrk_output: str) -> int:
    m = re.search(r"(\d+) requests in", wrk_output)
    if m is None:
        raise SystemExit(f"wrk printed no request count:\n{wrk_output}")
    return int(m.group(1))


_LOOP = "the event loop itself (uvloop's C code: epoll, socket reads, callback dispatch)"


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path.endswith("asyncio/runners.py") and name == "run":
        return _LOOP
    if path == "~":
        return name  # a builtin or a C function
    rel = path.split("site-packages/")[-1]
    if str(ROOT) in path:
        rel = os.path.relpath(path, ROOT)
    return f"{rel}:{line}({name})"


def _module(func: tuple[str, int, str]) -> str:
    path = func[0]
    if path.endswith("asyncio/runners.py"):
        return _LOOP
    if path == "~":
        return "(builtins / C)"
    if str(ROOT) in path:
        return os.path.relpath(path, ROOT)
    if "site-packages/" in path:
        return path.split("site-packages/")[-1].split("/")[0] + " (library)"
    return "stdlib: " + Path(path).name


def report(stats_file: Path, requests: int, top: int) -> str:
    st = pstats.Stats(str(stats_file))
    raw = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    out = [
        f"requests: {requests:,}; profiled loop time: {total:.2f} s = "
        f"{total / requests * 1e6:.1f} µs per request (cProfile-inflated)",
        "",
        "| function | calls/request | own µs/request | share |",
        "|---|---|---|---|",
    ]
    for func, (_cc, nc, tt, _ct, _callers) in rows[:top]:
        out.append(
            f"| `{_where(func)}` | {nc / requests:.2f} | {tt / requests * 1e6:.2f} | "
            f"{tt / total:.1%} |"
        )
    by_module: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, _callers) in raw.items():
        by_module[_module(func)] += tt
    out += ["", "| module | own µs/request | share |", "|---|---|---|"]
    for mod, tt in sorted(by_module.items(), key=lambda kv: kv[1], reverse=True)[:top]:
        out.append(f"| `{mod}` | {tt / requests * 1e6:.2f} | {tt / total:.1%} |")
    return "\n".join(out)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s*$")


def perf_shares(text: str) -> list[tuple[str, float]]:
    """(name, percent) rows of ``perf report --stdio`` output, in its order."""
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _PERF_LINE.match(line)
        if m:
            rows.append((m.group(2), float(m.group(1))))
    return rows


def perf_report(
    by_binary: list[tuple[str, float]],
    by_symbol: list[tuple[str, float]],
    requests: int,
    cpu_s: float,
    top: int,
) -> str:
    """The loop's CPU per request split by binary, then the top symbols."""
    per_req = cpu_s / requests * 1e6
    out = [
        f"requests: {requests:,}; gateway CPU in the window: {cpu_s:.2f} s = "
        f"{per_req:.1f} µs per request (unprofiled; perf samples split it)",
        "",
        "| binary | µs/request | share |",
        "|---|---|---|",
    ]
    for name, pct in by_binary[:top]:
        out.append(f"| `{_binary(name)}` | {per_req * pct / 100:.2f} | {pct:.1f}% |")
    out += ["", "| symbol | µs/request | share |", "|---|---|---|"]
    for name, pct in by_symbol[:top]:
        out.append(f"| `{name}` | {per_req * pct / 100:.2f} | {pct:.1f}% |")
    return "\n".join(out)


def _binary(name: str) -> str:
    if name == "[kernel.kallsyms]":
        return "kernel (syscalls, TCP, waking peers)"
    if name.startswith("libpython"):
        return name + " (the interpreter: all Python code)"
    return name


def _perf_run(args: argparse.Namespace, wrk: str, work: Path) -> None:
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("--perf needs perf (apt-get install linux-perf)")
    from bench.load.backend import start_nginx_backend

    nginx = shutil.which("nginx")
    backend = start_nginx_backend(nginx, work, (1,)) if nginx else start_mock(work, (1,))
    gateway = None
    try:
        cfg = fastproxy_config(
            backend.port, work, usage=args.usage == "on", policy=args.policy, capture=args.capture
        )
        port = free_port()
        cfg["port"] = port
        cfg["admin"] = {"enabled": False}
        run = ["-m", "fastproxy", "run", "--config", "{config}"]
        gateway = start_pinned_gateway(work, cfg, run, (port,))
        body = SSE_BODY if args.stream else JSON_BODY
        lua = _LUA.format(body=body, tokens=200 if args.stream else 16)
        if args.policy:
            lua += keys_lua(POLICY_KEYS)
        if args.stream:
            lua += 'wrk.headers["x-bench-stream"] = "1"\n'
        (work / "post.lua").write_text(lua)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        warm = ["taskset", "-c", "1", wrk, "-t1", f"-c{args.connections}", "-d1s"]
        subprocess.run([*warm, "-s", str(work / "post.lua"), url], check=True, capture_output=True)
        data = work / "perf.data"
        record = subprocess.Popen(
            [perf, "record", "-q", "-F", "2999", "-p", str(gateway.pid), "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # perf attached before the load starts
        cpu0 = _cpu_seconds(gateway.pid)
        load = ["taskset", "-c", "1", wrk, "-t1", f"-c{args.connections}", f"-d{args.seconds}s"]
        wrk_out = subprocess.run(
            [*load, "-s", str(work / "post.lua"), url], check=True, capture_output=True, text=True
        ).stdout
        cpu_s = _cpu_seconds(gateway.pid) - cpu0
        record.send_signal(signal.SIGINT)
        record.wait(60)
        requests = _requests(wrk_out)

        def rep(sort: str) -> str:
            return subprocess.run(
                [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort],
                check=True,
                capture_output=True,
                text=True,
            ).stdout

        kind = "SSE (200 events)" if args.stream else "JSON"
        print(
            f"# bench.profile --perf: {kind}, c={args.connections}, {args.seconds:g} s, "
            f"usage tracking {args.usage}, backend "
            f"{'nginx (canned)' if nginx else 'mock LLM'}\n"
        )
        print(
            perf_report(perf_shares(rep("dso")), perf_shares(rep("sym")), requests, cpu_s, args.top)
        )
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        backend.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--stream", action="store_true", help="SSE (200 events) instead of JSON")
    ap.add_argument("--usage", choices=("on", "off"), default="on")
    ap.add_argument(
        "--policy",
        action="store_true",
        help="bench.load's scenario e policy: 100 named keys with limits, a least_busy group",
    )
    ap.add_argument(
        "--capture",
        action="store_true",
        help="wire capture on (its writer is a process of its own, not in the profile)",
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (the .prof file)")
    ap.add_argument(
        "--perf", action="store_true", help="unprofiled run split by perf (kernel/interpreter/C)"
    )
    args = ap.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench.profile needs wrk (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="fastproxy-profile-"))
    if args.perf:
        try:
            _perf_run(args, wrk, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return 0
    mock = start_mock(work, (1,))
    gateway = None
    try:
        cfg = fastproxy_config(
            mock.port, work, usage=args.usage == "on", policy=args.policy, capture=args.capture
        )
        port = free_port()
        cfg["port"] = port
        cfg["admin"] = {"enabled": False}
        prof = work / "gateway.prof"
        child = ["-m", "bench.profile.child", "{config}", str(prof)]
        gateway = start_pinned_gateway(work, cfg, child, (port,))
        body = SSE_BODY if args.stream else JSON_BODY
        lua = _LUA.format(body=body, tokens=200 if args.stream else 16)
        if args.policy:
            lua += keys_lua(POLICY_KEYS)
        (work / "post.lua").write_text(lua)
        wrk_out = subprocess.run(
            [
                "taskset",
                "-c",
                "1",
                wrk,
                "-t1",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "-s",
                str(work / "post.lua"),
                f"http://127.0.0.1:{port}/v1/chat/completions",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        requests = _requests(wrk_out)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        deadline = time.monotonic() + 10
        while not prof.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        kind = "SSE (200 events)" if args.stream else "JSON"
        print(
            f"# bench.profile: {kind}, c={args.connections}, {args.seconds:g} s, "
            f"usage tracking {args.usage}\n"
        )
        print(report(prof, requests, args.top))
        if args.keep:
            print(f"\nkept: {work}")
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
        mock.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
