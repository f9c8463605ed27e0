"""Drive one load round against one port and collect what the client saw.

Two drivers, one result shape:
- ``wrk`` (Debian's C load generator, with a Lua POST script) for JSON when installed:
  it is several times faster than any relay here, so it never limits the figure;
- our ``loadgen`` processes for SSE (and for JSON when wrk is absent).

Each round also records the generator's own CPU time: a generator near 100 % of a core
is itself the bottleneck, and the report flags it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .processes import taskset_prefix
from .scenarios import Workload, bench_key

# wrk's done() hook prints one tagged JSON line; latencies are in microseconds.
_WRK_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
{keys}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.max))
end
"""


@dataclass
class LoadResult:
    generator: str
    completed: int
    elapsed_s: float
    errors: dict[str, int]
    unfinished: int
    gen_cpu_s: float
    lat_us: dict[str, float]
    events: int = 0
    ttft_us: dict[str, float] = field(default_factory=dict)
    # Per event: time since the previous event of the same stream (0 when both came in
    # one read). ``read_gap_us``: the same, only between reads (the non-zero gaps).
    gap_us: dict[str, float] = field(default_factory=dict)
    read_gap_us: dict[str, float] = field(default_factory=dict)


def percentiles(
    samples: array[int] | list[int], zeros: int = 0, points: tuple[float, ...] = (50, 90, 99, 99.9)
) -> dict[str, float]:
    """Nearest-rank percentiles of ``samples`` plus ``zeros`` extra zero samples."""
    data = sorted(samples)
    n = len(data) + zeros
    out: dict[str, float] = {}
    if n == 0:
        return out
    for p in points:
        rank = max(1, math.ceil(p / 100 * n)) - 1
        idx = rank - zeros
        out[f"p{p:g}"] = float(data[idx]) if idx >= 0 else 0.0
    out["max"] = float(data[-1]) if data else 0.0
    return out


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def keys_lua(n: int) -> str:
    """A wrk ``request`` hook sending ``Authorization: Bearer bench_key(i)`` for the n
    keys in turn: a table of the ready-made header values, so the script's own work per
    request stays an index and a format."""
    values = ", ".join(_lua_string("Bearer " + bench_key(i)) for i in range(n))
    return (
        f"local keys = {{{values}}}\nlocal n = 0\n"
        "request = function()\n"
        f"  n = n % {n} + 1\n"
        '  wrk.headers["Authorization"] = keys[n]\n'
        "  return wrk.format()\n"
        "end\n"
    )


def run_wrk(
    port: int, wl: Workload, duration_s: float, cpus: tuple[int, ...] | None, workdir: Path
) -> LoadResult:
    headers = "\n".join(
        f"wrk.headers[{_lua_string(h.split(':', 1)[0].strip())}] = "
        f"{_lua_string(h.split(':', 1)[1].strip())}"
        for h in wl.headers
    )
    keys = keys_lua(wl.keys) if wl.keys else ""
    script = workdir / "post.lua"
    script.write_text(_WRK_LUA.format(body=_lua_string(wl.body), headers=headers, keys=keys))
    # One wrk thread handles far more than the relays here (see the direct figures);
    # a second thread would only compete for the same two cores.
    threads = 1
    argv = [
        *taskset_prefix(cpus),
        "wrk",
        f"-t{threads}",
        f"-c{wl.connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{wl.path}",
    ]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    r = json.loads(line[8:])
    errors = {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]}
    return LoadResult(
        generator="wrk",
        completed=r["requests"] - r["status"],
        elapsed_s=r["duration_us"] / 1e6,
        errors=errors,
        unfinished=0,
        gen_cpu_s=(ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
        lat_us={"p50": r["p50"], "p90": r["p90"], "p99": r["p99"], "max": r["max"]},
    )


def run_loadgen(
    port: int,
    wl: Workload,
    duration_s: float,
    cpus: tuple[int, ...] | None,
    workdir: Path,
    procs: int = 1,
) -> LoadResult:
    procs = max(1, min(procs, wl.connections))
    start_at = time.time() + 0.6  # every process starts together, after interpreter start-up
    tmp = Path(tempfile.mkdtemp(prefix="lg-", dir=workdir))
    children = []
    for i in range(procs):
        share = wl.connections // procs + (1 if i < wl.connections % procs else 0)
        argv = [
            *taskset_prefix(cpus),
            sys.executable,
            "-m",
            "bench.load.loadgen",
            "--port",
            str(port),
            "--path",
            wl.path,
            "--mode",
            wl.kind,
            "--body",
            wl.body,
            "--connections",
            str(share),
            "--duration",
            str(duration_s),
            "--ramp",
            str(wl.ramp_s),
            "--requests-per-conn",
            str(wl.requests_per_conn),
            "--drain",
            str(wl.drain_s),
            "--start-at",
            repr(start_at),
            "--out",
            str(tmp / str(i)),
        ]
        for h in wl.headers:
            argv += ["--header", h]
        if wl.keys:
            argv += ["--keys", str(wl.keys)]
        children.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        )
    results: list[dict[str, Any]] = []
    for child in children:
        stdout, stderr = child.communicate(timeout=duration_s + wl.drain_s + 120)
        if child.returncode != 0:
            raise RuntimeError(f"loadgen failed ({child.returncode}): {stderr.strip()[-800:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    merged: dict[str, array[int]] = {}
    for name in ("lat", "ttft", "gap"):
        merged[name] = array("q")
        for i in range(procs):
            path = tmp / f"{i}.{name}"
            merged[name].frombytes(path.read_bytes())
            path.unlink()
    os.rmdir(tmp)
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    zeros = sum(r["zero_gaps"] for r in results)
    return LoadResult(
        generator="loadgen" if procs == 1 else f"loadgen x{procs}",
        completed=sum(r["completed"] for r in results),
        elapsed_s=max(r["elapsed_s"] for r in results),
        errors=errors,
        unfinished=sum(r["unfinished"] for r in results),
        gen_cpu_s=sum(r["cpu_s"] for r in results),
        lat_us=percentiles(merged["lat"]),
        events=sum(r["events"] for r in results),
        ttft_us=percentiles(merged["ttft"]) if wl.kind == "sse" else {},
        gap_us=percentiles(merged["gap"], zeros) if wl.kind == "sse" else {},
        read_gap_us=percentiles(merged["gap"]) if wl.kind == "sse" else {},
    )


def drive(
    port: int,
    wl: Workload,
    duration_s: float,
    cpus: tuple[int, ...] | None,
    workdir: Path,
    procs: int,
    force_loadgen: bool = False,
) -> LoadResult:
    if wl.kind == "json" and wrk_available() and not force_loadgen:
        return run_wrk(port, wl, duration_s, cpus, workdir)
    return run_loadgen(port, wl, duration_s, cpus, workdir, procs)
