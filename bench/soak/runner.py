"""The soak's phases, its checks and its report (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from . import procs
from .loadgen import (
    EXPECTED_CLIENT,
    EXPECTED_OUTCOME,
    KINDS,
    ClientSettings,
    Mix,
    Progress,
    StreamPlan,
    StreamResult,
    make_plans,
    run_streams,
)
from .records import RecordAudit, audit
from .sampler import Sample, Sampler, emit

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
# The share of the overall deadline kept for SIGTERM-to-exit and the record audit (at
# most this many seconds): nothing is in flight by then, so they take seconds.
STOP_SHARE, STOP_MAX_S = 0.15, 60.0


@dataclass(frozen=True)
class Options:
    streams: int = 10_000
    concurrency: int = 200
    abort_pct: float = 10.0
    reset_pct: float = 10.0
    slow_pct: float = 10.0
    seed: int = 1
    warmup: int = 2000
    deadline_s: float = 1200.0
    settle_timeout_s: float = 60.0
    rss_tolerance: float = 0.10
    backend_idle_timeout_s: float = 2.0
    stream_timeout_s: float = 30.0
    out: Path | None = None
    quiet: bool = False
    keep_workdir: bool = False

    @property
    def slow_stall_s(self) -> float:
        # Longer than the backend idle timeout: the stall that tells a paused backend
        # from an idle one.
        return 1.5 * self.backend_idle_timeout_s


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Phase:
    name: str
    streams: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.streams / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Run:
    """Everything a run learns; the report and the JSON file are views of it."""

    opts: Options
    workdir: Path
    phases: list[Phase] = field(default_factory=list)
    results: list[StreamResult] = field(default_factory=list)
    fresh: Sample | None = None
    baseline: Sample | None = None
    final: Sample | None = None
    settled: bool = False
    gateway_exit: int | None = None
    gateway_stop_s: float | None = None
    records: RecordAudit | None = None
    mock_stats: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    gateway_log_tail: str = ""


# --------------------------------------------------------------------------- settling


def wait_for(
    sampler: Sampler,
    pred: Callable[[Sample, Sample | None], bool],
    timeout_s: float,
    streak: int = 2,
) -> tuple[bool, Sample | None]:
    """Poll the sampler's samples until ``pred(sample, previous)`` holds ``streak`` times
    in a row, or ``timeout_s`` passes; the last sample either way."""
    deadline = time.monotonic() + timeout_s
    run, prev, last = 0, None, None
    while (left := deadline - time.monotonic()) > 0:
        s = sampler.next_sample(min(left, 5.0))
        if s is None:
            continue
        run = run + 1 if pred(s, prev) else 0
        prev = last = s
        if run >= streak:
            return True, s
    return False, last


def _quiet_sockets(reference: Sample) -> Callable[[Sample, Sample | None], bool]:
    """The gateway holds the reference's TCP sockets, nothing else, and its usage queue
    is empty; its fd count is steady between two samples."""

    def pred(s: Sample, prev: Sample | None) -> bool:
        return (
            s.tcp == reference.tcp
            and s.usage_queue == 0
            and prev is not None
            and s.fds == prev.fds
            and s.rss_kib is not None
        )

    return pred


# --------------------------------------------------------------------------- phases


def _phase(
    run: Run,
    sampler: Sampler,
    runner: asyncio.Runner,
    name: str,
    plans: list[StreamPlan],
    cs: ClientSettings,
    progress: Progress,
    deadline_at: float,
) -> None:
    sampler.phase = name
    budget = deadline_at - time.monotonic()
    if budget <= 0:
        run.errors.append(f"no time left for the {name} phase")
        run.results += [StreamResult(p.session, p.kind) for p in plans]
        return
    start = time.monotonic()
    coro: Coroutine[Any, Any, list[StreamResult]] = run_streams(
        plans, run.opts.concurrency, cs, progress, budget
    )
    results = runner.run(coro)
    run.phases.append(Phase(name, len(plans), time.monotonic() - start))
    run.results += results
    late = sum(1 for r in results if r.client in ("not_run", "error:phase_deadline"))
    if late:
        run.errors.append(f"the {name} phase ran out of time: {late} streams not run or cut")


def execute(opts: Options) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="fastproxy-soak-"))
    run = Run(opts, workdir)
    t_end = time.monotonic() + opts.deadline_s
    mix = Mix(opts.abort_pct, opts.reset_pct, opts.slow_pct)
    rng = random.Random(opts.seed)
    warm_plans = make_plans(opts.warmup, mix, rng, "w")
    main_plans = make_plans(opts.streams, mix, rng, "s")
    mock: procs.Proc | None = None
    gw: procs.Proc | None = None
    sampler: Sampler | None = None
    progress = Progress()
    try:
        mock, mock_port = procs.start_mock(workdir)
        port, admin_port = procs.free_port(), procs.free_port()
        config = procs.gateway_config(
            workdir, mock_port, port, admin_port, opts.backend_idle_timeout_s
        )
        gw = procs.start_gateway(workdir, config)
        cs = ClientSettings(
            port=port, stream_timeout_s=opts.stream_timeout_s, slow_stall_s=opts.slow_stall_s
        )
        _say(
            opts,
            f"gateway pid {gw.pid} on 127.0.0.1:{port} (admin {admin_port}), mock on "
            f"127.0.0.1:{mock_port}; work dir {workdir}",
        )
        sampler = Sampler(gw.pid, admin_port, progress.snapshot, quiet=opts.quiet)
        sampler.phase = "idle"
        sampler.start()
        # The idle state: what the gateway holds before any request, and the probe's floor.
        _, run.fresh = wait_for(
            sampler,
            lambda s, p: p is not None and s.tcp == p.tcp and s.fds == p.fds,
            20.0,
            streak=3,
        )
        if run.fresh is None:
            raise procs.StartError("no sample of the idle gateway")
        stop_reserve = min(STOP_MAX_S, STOP_SHARE * opts.deadline_s)
        # Streams must end early enough for the final settle and the stop to fit.
        streams_end = t_end - stop_reserve - opts.settle_timeout_s
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            _phase(
                run,
                sampler,
                runner,
                "preflight",
                [StreamPlan("pre-0", "normal")],
                cs,
                progress,
                streams_end,
            )
            if run.results[-1].client != "complete":
                raise procs.StartError(f"preflight stream ended {run.results[-1].client}")
            _phase(run, sampler, runner, "warmup", warm_plans, cs, progress, streams_end)
            sampler.phase = "settle1"
            ok, run.baseline = wait_for(
                sampler,
                _quiet_sockets(run.fresh),
                max(1.0, min(opts.settle_timeout_s, streams_end - time.monotonic())),
            )
            if not ok:
                run.errors.append(
                    "the gateway did not settle after the warm-up: "
                    f"last sample {run.baseline.line() if run.baseline else None}"
                )
            if run.baseline is None:
                raise procs.StartError("no sample after the warm-up")
            _say(
                opts,
                f"baseline (warm): rss {_mib(run.baseline.rss_kib)} fds "
                f"{run.baseline.fds} tcp {run.baseline.tcp}",
            )
            _phase(run, sampler, runner, "main", main_plans, cs, progress, streams_end)
        sampler.phase = "settle2"
        warm_rss = run.baseline.rss_kib or 0
        base = run.baseline
        quiet = _quiet_sockets(run.fresh)

        def back(s: Sample, prev: Sample | None) -> bool:
            return (
                quiet(s, prev)
                and s.fds == base.fds
                and (s.rss_kib or 0) <= warm_rss * (1 + opts.rss_tolerance)
            )

        run.settled, run.final = wait_for(
            sampler,
            back,
            max(1.0, min(opts.settle_timeout_s, t_end - stop_reserve - time.monotonic())),
        )
        sampler.stop()
        run.samples = list(sampler.samples)
        _say(opts, "SIGTERM to the gateway")
        t0 = time.monotonic()
        run.gateway_exit = gw.terminate(max(5.0, t_end - time.monotonic() - 2.0))
        run.gateway_stop_s = time.monotonic() - t0
        run.records = audit(workdir / "usage.db", run.results)
        stats = procs.http_json(mock_port, "/_mock/stats")
        if isinstance(stats, dict):
            run.mock_stats = {k: v for k, v in stats.items() if k != "requests"}
    except (procs.StartError, OSError) as exc:
        run.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if sampler is not None:
            sampler.stop()
            if not run.samples:
                run.samples = list(sampler.samples)
        if gw is not None:
            if gw.alive():
                gw.terminate(10)
            run.gateway_log_tail = gw.log_tail(10)
        if mock is not None:
            mock.terminate(10)
    return run


# --------------------------------------------------------------------------- checks


def checks(run: Run) -> list[Check]:
    opts = run.opts
    out = [Check("run", False, err) for err in run.errors]
    planned = 1 + opts.warmup + opts.streams
    verdicts: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    for r in run.results:
        verdicts[r.kind][r.client] += 1
    wrong = {
        k: {v: n for v, n in c.items() if v != EXPECTED_CLIENT[k]} for k, c in verdicts.items()
    }
    n_wrong = sum(sum(c.values()) for c in wrong.values())
    detail = f"{len(run.results) - n_wrong}/{planned} streams ended as their kind should" + "".join(
        f"; {k}: {dict(c)}" for k, c in wrong.items() if c
    )
    out.append(Check("client results", n_wrong == 0 and len(run.results) == planned, detail))

    fresh, base, final = run.fresh, run.baseline, run.final
    if fresh is None or base is None or final is None:
        out.append(Check("settled", False, "no baseline or final sample"))
    else:
        leftovers = {
            k: v - fresh.tcp.get(k, 0) for k, v in final.tcp.items() if v != fresh.tcp.get(k, 0)
        }
        out.append(
            Check(
                "sockets back",
                final.tcp == fresh.tcp,
                f"final {_tcp(final.tcp)} vs idle {_tcp(fresh.tcp)}"
                + (f"; left over {leftovers}" if leftovers else ""),
            )
        )
        out.append(
            Check(
                "fds back",
                final.fds == base.fds,
                f"final {final.fds} vs warm baseline {base.fds} (idle {fresh.fds})",
            )
        )
        warm, last = base.rss_kib or 0, final.rss_kib or 0
        ratio = last / warm if warm else math.inf
        out.append(
            Check(
                "rss back",
                ratio <= 1 + opts.rss_tolerance,
                f"final {_mib(last)} = {ratio:.3f}x warm {_mib(warm)} "
                f"(limit {1 + opts.rss_tolerance:.2f}x; peak {_mib(_peak_rss(run))})",
            )
        )
    out.append(
        Check(
            "gateway stopped",
            run.gateway_exit == 0,
            f"exit {run.gateway_exit} after SIGTERM in {_secs(run.gateway_stop_s)}",
        )
    )
    a = run.records
    if a is None:
        out.append(Check("one record per request", False, "usage database not read"))
    else:
        problems = []
        if a.error:
            problems.append(a.error)
        if a.missing:
            problems.append(f"{len(a.missing)} missing {a.missing_by_kind}")
        if a.duplicated:
            problems.append(f"{len(a.duplicated)} duplicated")
        if a.unexpected:
            problems.append(f"{a.unexpected} unexpected")
        if a.record_texts != a.rows:
            problems.append(f"usage_records {a.record_texts} != usage_requests {a.rows}")
        if a.cli_request_count != a.rows:
            problems.append(f"`usage stats` request_count {a.cli_request_count}")
        out.append(
            Check(
                "one record per request",
                a.one_per_request,
                f"{a.rows} records for {a.expected} requests; by outcome {a.by_outcome}"
                + ("; " + "; ".join(problems) if problems else ""),
            )
        )
        bad = {
            k: {o: n for o, n in c.items() if o != EXPECTED_OUTCOME[k]}
            for k, c in a.outcome_by_kind.items()
        }
        out.append(
            Check(
                "record outcomes",
                a.outcome_mismatches == 0 and a.error is None,
                f"{a.outcome_mismatches} records with another outcome than their kind's"
                + "".join(f"; {k}: {c}" for k, c in bad.items() if c),
            )
        )
    return out


# --------------------------------------------------------------------------- figures


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _peak_rss(run: Run) -> int:
    return max((s.rss_kib or 0 for s in run.samples), default=0)


def figures(run: Run) -> dict[str, Any]:
    main = [s for s in run.samples if s.phase == "main"]
    idle = [s for s in run.samples if s.phase == "idle"]
    lag_main = [s.probe_ms for s in main if s.probe_ms is not None]
    lag_idle = [s.probe_ms for s in idle if s.probe_ms is not None]
    hwm = max((s.hwm_kib or 0 for s in run.samples), default=0)
    # RSS growth over the second half of the main phase, when the load's shape is steady:
    # a leak shows as growth per stream here, a high-water of concurrency does not.
    half = [s for s in main if s.rss_kib and s.client.get("done", 0) * 2 >= run.opts.streams]
    growth = (half[-1].rss_kib or 0) - (half[0].rss_kib or 0) if len(half) > 1 else None
    half_streams = (
        half[-1].client.get("done", 0) - half[0].client.get("done", 0) if len(half) > 1 else 0
    )
    return {
        "phases": [
            {
                "name": p.name,
                "streams": p.streams,
                "seconds": round(p.seconds, 2),
                "streams_per_s": round(p.rate, 1),
            }
            for p in run.phases
        ],
        "rss_kib": {
            "idle": run.fresh.rss_kib if run.fresh else None,
            "warm": run.baseline.rss_kib if run.baseline else None,
            "peak_main": max((s.rss_kib or 0 for s in main), default=None),
            "vmhwm": hwm,
            "final": run.final.rss_kib if run.final else None,
            "second_half_growth": growth,
            "second_half_streams": half_streams,
        },
        "fds": {
            "idle": run.fresh.fds if run.fresh else None,
            "warm": run.baseline.fds if run.baseline else None,
            "peak_main": max((s.fds or 0 for s in main), default=None),
            "final": run.final.fds if run.final else None,
        },
        "tcp": {
            "idle": run.fresh.tcp if run.fresh else None,
            "peak_established_main": max((s.tcp.get("ESTABLISHED", 0) for s in main), default=None),
            "peak_close_wait_main": max((s.tcp.get("CLOSE_WAIT", 0) for s in main), default=None),
            "final": run.final.tcp if run.final else None,
        },
        "probe_ms": {
            "idle_median": statistics.median(lag_idle) if lag_idle else None,
            "main_p50": _pct(lag_main, 50),
            "main_p99": _pct(lag_main, 99),
            "main_max": max(lag_main, default=None),
            "main_failed": sum(1 for s in main if s.probe_ms is None),
        },
        "client_seconds": {
            k: {
                "p50": _round(_pct(secs, 50)),
                "p99": _round(_pct(secs, 99)),
                "max": _round(max(secs, default=None)),
            }
            for k in KINDS
            if (secs := [r.seconds for r in run.results if r.kind == k and r.sent])
        },
        "usage_queue_max_main": max((s.usage_queue or 0 for s in main), default=None),
        "usage_dropped_final": run.final.usage_dropped if run.final else None,
        "settled_within_deadline": run.settled,
    }


# --------------------------------------------------------------------------- report


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def _secs(s: float | None) -> str:
    return "n/a" if s is None else f"{s:.1f} s"


def _tcp(tcp: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in tcp.items()) or "none"


def _fmt(v: float | None, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:.1f}{unit}"


def summary(run: Run, cks: list[Check], fig: dict[str, Any]) -> str:
    lines = ["", "=== soak summary ==="]
    o = run.opts
    lines.append(
        f"streams {o.streams} at c={o.concurrency} (+{o.warmup} warm-up, 1 preflight); "
        f"mix abort {o.abort_pct:g}% reset {o.reset_pct:g}% slow {o.slow_pct:g}%; "
        f"seed {o.seed}; backend idle timeout {o.backend_idle_timeout_s:g} s, "
        f"slow stall {o.slow_stall_s:g} s"
    )
    lines += [
        f"phase {p['name']:<9} {p['streams']:>6} streams in {p['seconds']:7.1f} s "
        f"= {p['streams_per_s']:7.1f} streams/s"
        for p in fig["phases"]
        if p["name"] != "preflight"
    ]
    r, f, t, lag = fig["rss_kib"], fig["fds"], fig["tcp"], fig["probe_ms"]
    lines.append(
        f"RSS   idle {_mib(r['idle'])}, warm {_mib(r['warm'])}, peak in main "
        f"{_mib(r['peak_main'])} (VmHWM {_mib(r['vmhwm'])}), final {_mib(r['final'])}; "
        f"growth over the main phase's second half {_mib(r['second_half_growth'])} "
        f"in {r['second_half_streams']} streams"
    )
    lines.append(
        f"fds   idle {f['idle']}, warm {f['warm']}, peak in main {f['peak_main']}, "
        f"final {f['final']}"
    )
    lines.append(
        f"TCP   idle {_tcp(t['idle'] or {})}; peak in main ESTABLISHED "
        f"{t['peak_established_main']}, CLOSE_WAIT {t['peak_close_wait_main']}; "
        f"final {_tcp(t['final'] or {})}"
    )
    lines.append(
        f"lag   /internal/health round trip: idle median {_fmt(lag['idle_median'], ' ms')}"
        f"; main p50 {_fmt(lag['main_p50'], ' ms')}, p99 {_fmt(lag['main_p99'], ' ms')}"
        f", max {_fmt(lag['main_max'], ' ms')}, failed probes {lag['main_failed']}"
    )
    lines.append(
        "stream seconds (client) "
        + "; ".join(
            f"{k} p50 {v['p50']:.2f} max {v['max']:.2f}" for k, v in fig["client_seconds"].items()
        )
    )
    if run.records is not None:
        lines.append(f"usage records by kind and outcome: {run.records.outcome_by_kind}")
    width = max(len(c.name) for c in cks)
    lines.append("")
    lines.append(f"{'check':<{width}}  result  detail")
    lines += [f"{c.name:<{width}}  {'PASS' if c.ok else 'FAIL':<6}  {c.detail}" for c in cks]
    passed = all(c.ok for c in cks)
    lines.append(f"\nSOAK {'PASSED' if passed else 'FAILED'}")
    return "\n".join(lines)


def write_results(run: Run, cks: list[Check], fig: dict[str, Any]) -> Path:
    path = run.opts.out
    if path is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"soak-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.opts).items()}
    doc = {
        "kind": "fastproxy-soak",
        "options": opts,
        "passed": all(c.ok for c in cks),
        "checks": [asdict(c) for c in cks],
        "figures": fig,
        "records": run.records.as_dict() if run.records else None,
        "client_results": {
            k: dict(Counter(r.client for r in run.results if r.kind == k)) for k in KINDS
        },
        "mock_stats": run.mock_stats,
        "gateway_exit": run.gateway_exit,
        "gateway_log_tail": run.gateway_log_tail,
        "samples": [s.as_dict() for s in run.samples],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def _say(opts: Options, text: str) -> None:
    if not opts.quiet:
        emit(text)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak: many SSE streams with aborts, resets and slow readers through "
        "one gateway process; checks that sockets, fds, RSS and usage records "
        "come back to what they should be.",
    )
    p.add_argument(
        "--streams",
        type=int,
        default=None,
        help="streams in the main phase (default 10000; --quick 1000)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="streams open at once (default 200; --quick 50)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="streams of the warm-up phase whose RSS is the reference (default 2000; --quick 300)",
    )
    p.add_argument("--abort-pct", type=float, default=10.0, help="client aborts (%%)")
    p.add_argument("--reset-pct", type=float, default=10.0, help="backend resets (%%)")
    p.add_argument("--slow-pct", type=float, default=10.0, help="slow readers (%%)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1000 streams at c=50")
    p.add_argument(
        "--deadline",
        type=float,
        default=1200.0,
        help="seconds for the whole run; streams not started by then are not run",
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the gateway to settle after a phase",
    )
    p.add_argument(
        "--rss-tolerance",
        type=float,
        default=0.10,
        help="final RSS may exceed the warm RSS by this fraction",
    )
    p.add_argument(
        "--backend-idle-timeout",
        type=float,
        default=2.0,
        help="the backend's idle_timeout_s; slow readers stall 1.5x this long",
    )
    p.add_argument(
        "--stream-timeout", type=float, default=30.0, help="deadline of one stream, seconds"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default bench/results/soak-<UTC time>.json)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-second lines")
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temp dir (configs, logs, usage.db) even when it passed",
    )
    a = p.parse_args(argv)
    streams = a.streams if a.streams is not None else (1000 if a.quick else 10_000)
    conc = a.concurrency if a.concurrency is not None else (50 if a.quick else 200)
    warmup = a.warmup if a.warmup is not None else (300 if a.quick else 2000)
    if streams < 1 or conc < 1 or warmup < 0:
        p.error("--streams and --concurrency must be >= 1, --warmup >= 0")
    try:
        Mix(a.abort_pct, a.reset_pct, a.slow_pct)
    except ValueError as exc:
        p.error(str(exc))
    return Options(
        streams=streams,
        concurrency=conc,
        abort_pct=a.abort_pct,
        reset_pct=a.reset_pct,
        slow_pct=a.slow_pct,
        seed=a.seed,
        warmup=warmup,
        deadline_s=a.deadline,
        settle_timeout_s=a.settle_timeout,
        rss_tolerance=a.rss_tolerance,
        backend_idle_timeout_s=a.backend_idle_timeout,
        stream_timeout_s=a.stream_timeout,
        out=a.out,
        quiet=a.quiet,
        keep_workdir=a.keep_workdir,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the gateway and the mock are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run = execute(opts)
    except KeyboardInterrupt:
        emit("soak interrupted: gateway and mock stopped, no verdict")
        return 130
    cks = checks(run)
    fig = figures(run)
    print(summary(run, cks, fig), flush=True)
    path = write_results(run, cks, fig)
    passed = all(c.ok for c in cks)
    print(f"results: {path}", flush=True)
    if passed and not opts.keep_workdir:
        shutil.rmtree(run.workdir, ignore_errors=True)
    else:
        print(f"work dir kept (configs, logs, usage.db): {run.workdir}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
