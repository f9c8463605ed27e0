"""``python -m bench.load``: the load benchmark, direct vs nginx vs fastproxy.

Examples:
    python -m bench.load                         # everything: 10 rounds x 3 s per target
    python -m bench.load --quick                 # smoke run, about two minutes
    python -m bench.load --scenarios a,b --rounds 5 --duration 15
    python -m bench.load --backend mock          # the Python mock LLM behind the relays
Results: printed, and written to bench/results/<timestamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import processes as P
from .report import derive, markdown, verdicts, write
from .runner import Options, Suite, loadavg, machine, speedups_implementation
from .scenarios import build

ROOT = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenarios",
        default="a,b,c,d,e",
        help="groups a,b,c,d,e or keys a1,a64,b,bp,c,d-a1,d-a64,d-b,e-a64 (default: all)",
    )
    p.add_argument("--rounds", type=int, default=10, help="rounds per target (default 10)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per round (default 3)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 3 s, 400 slow streams of 6 s, no micro benches",
    )
    p.add_argument(
        "--peers",
        default="",
        help="optional peers: litellm,reference (reference needs BENCH_REFERENCE_CMD)",
    )
    p.add_argument(
        "--backend",
        choices=["nginx", "mock"],
        default="nginx",
        help="what answers behind the relays: nginx serving canned responses from memory "
        "(default; several times faster than the mock, so the relay is the bottleneck) or "
        "the Python mock LLM. Scenarios that pace events (bp, c) always use the mock",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    p.add_argument(
        "--loadgen-cpus",
        default=None,
        metavar="LIST",
        help="pin the load generator to these CPUs (e.g. 1); default: see pinning",
    )
    p.add_argument(
        "--loadgen-procs",
        type=int,
        default=1,
        help="processes of the SSE load generator (default 1)",
    )
    p.add_argument(
        "--loadgen-json",
        action="store_true",
        help="use our load generator for JSON even when wrk is installed",
    )
    p.add_argument(
        "--micro",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also run the SSE-scan micro benchmark (auto: not with --quick)",
    )
    p.add_argument(
        "--fastproxy-src",
        type=Path,
        default=None,
        help="measure the fastproxy package in this checkout (default: this repo)",
    )
    p.add_argument(
        "--snapshot",
        metavar="REV",
        default=None,
        help="measure git REV (e.g. HEAD): exported to a temp dir and built there, "
        "so edits in the working tree cannot change a run halfway",
    )
    p.add_argument(
        "--max-background",
        type=float,
        default=0.35,
        metavar="CORES",
        help="re-measure a round (twice at most) when other processes used more "
        "than this many cores during it (default 0.35)",
    )
    p.add_argument(
        "--retry-budget",
        type=float,
        default=900.0,
        metavar="S",
        help="at most this many seconds per run spent re-measuring noisy rounds",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    return p


def git_state(src: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "?",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "fastproxy")),
    }


def snapshot(rev: str) -> tuple[Path, str]:
    """Export ``rev`` to a temp dir and build its Cython core there (cached per commit)."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = Path(tempfile.gettempdir()) / f"fastproxy-bench-src-{commit[:12]}"
    if not (dest / ".built").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
        print(f"building the Cython core of {commit[:12]} in {dest}", file=sys.stderr)
        built = subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=dest,
            capture_output=True,
            text=True,
            env={**os.environ, "FASTPROXY_REQUIRE_EXTENSIONS": "1"},
        )
        if built.returncode != 0:
            raise SystemExit(f"building {commit[:12]} failed:\n{built.stderr[-2000:]}")
        (dest / ".built").touch()
    return dest, commit[:7]


def run_micro(src: Path) -> dict[str, Any] | None:
    """The SSE-scan group of bench/micro/bench_speedups.py: compiled vs pure means.

    Runs the bench file of the measured tree, whose conftest puts that tree first on
    sys.path."""
    bench_file = src / "bench" / "micro" / "bench_speedups.py"
    if not bench_file.exists():
        print(f"micro benchmark skipped: no {bench_file}", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "micro.json"
        argv = [
            sys.executable,
            "-m",
            "pytest",
            str(bench_file),
            "--benchmark-only",
            "-p",
            "no:cacheprovider",
            "-o",
            "testpaths=bench",
            "-q",
            "-k",
            "sse_scan",
            f"--benchmark-json={out}",
        ]
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=src, timeout=600, env=P.clean_env(src)
        )
        if not out.exists():
            print("micro benchmark failed:\n" + proc.stdout[-1500:], file=sys.stderr)
            return None
        data = json.loads(out.read_text())
    means = {b["param"]: b["stats"]["mean"] for b in data["benchmarks"] if b["group"] == "sse-scan"}
    result: dict[str, Any] = {"sse_scan_mean_s": means}
    if means.get("cython") and means.get("python"):
        result["sse_scan_speedup"] = means["python"] / means["cython"]
    return result


def _terminate(signum: int, _frame: object) -> None:
    # SystemExit unwinds through the runner's finally blocks, which stop every process
    # the benchmark started (they run in their own sessions and would outlive us).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    ns = build_parser().parse_args(argv)
    rounds, duration = (1, 3.0) if ns.quick else (ns.rounds, ns.duration)
    peers = tuple(p.strip() for p in ns.peers.split(",") if p.strip())
    try:
        scenarios = build(
            [g.strip() for g in ns.scenarios.split(",") if g.strip()],
            rounds,
            duration,
            ns.quick,
            peers,
        )
    except ValueError as exc:
        print(f"python -m bench.load: {exc}", file=sys.stderr)
        return 2
    src = (ns.fastproxy_src or ROOT).resolve()
    snap_commit = None
    if ns.snapshot:
        src, snap_commit = snapshot(ns.snapshot)
        ns.fastproxy_src = src
    opts = Options(
        scenarios=scenarios,
        pin=not ns.no_pin,
        install_nginx=not ns.no_install,
        loadgen_procs=ns.loadgen_procs,
        force_loadgen=ns.loadgen_json,
        fastproxy_src=ns.fastproxy_src,
        peers=peers,
        reference_cmd=os.environ.get("BENCH_REFERENCE_CMD"),
        litellm_python=os.environ.get("BENCH_LITELLM_PYTHON"),
        keep=ns.keep,
        backend=ns.backend,
        max_background=ns.max_background,
        retry_budget_s=ns.retry_budget,
    )
    suite = Suite(opts)
    if ns.loadgen_cpus:
        cpus = tuple(int(c) for c in ns.loadgen_cpus.split(","))
        suite.pin = dataclasses.replace(suite.pin, loadgen=cpus)
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "started_ts": started,
        "command": shlex.join(
            ["python", "-m", "bench.load", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": machine(),
        "loadavg_before": loadavg(),
        "pinning": suite.pin.describe(),
        "backend": ns.backend,
        "git": (
            {"commit": snap_commit, "dirty": False, "snapshot": str(src)}
            if snap_commit
            else git_state(src)
        ),
        "speedups": speedups_implementation(opts),
        "tools": {
            "wrk": P.tool_version(["wrk", "--version"]),
            "nginx": P.tool_version(["nginx", "-v"]),
        },
        "rounds": rounds,
        "duration_s": duration,
        "notes": opts.notes,
    }
    results = suite.run()
    meta["tools"]["nginx"] = P.tool_version([suite.nginx_bin or "nginx", "-v"])
    micro = None
    if ns.micro == "yes" or (ns.micro == "auto" and not ns.quick):
        micro = run_micro(src)
    meta["loadavg_after"] = loadavg()
    meta["retry_spent_s"] = suite.retry_spent_s
    meta["max_background"] = ns.max_background
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for sc in results:
        sc["derived"] = derive(sc)
    by_key = {sc["key"]: sc for sc in results}
    data = {"meta": meta, "scenarios": results, "micro": micro, "verdicts": verdicts(by_key, micro)}
    text = markdown(data)
    print(text)
    jpath, mpath = write(data, ns.out)
    print(f"written: {jpath} and {mpath}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
