"""Run the selected scenarios: start the processes, drive the rounds, collect the figures.

Per scenario every target is started fresh (so peak RSS belongs to that scenario), checked
with one real request, warmed up, then measured in interleaved rounds: round r visits the
targets in an order rotated by r, so slow drift in the machine's background load spreads
over all targets instead of landing on whichever ran last. Figures are medians over rounds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import peers
from . import processes as P
from .backend import start_nginx_backend
from .drivers import drive
from .otlpsink import exports, start_otlp_sink
from .pgcluster import PgCluster
from .report import aggregate
from .scenarios import FEATURE_MODULES, FEATURES, JSON_BODY, MONITORING, Scenario, bench_key

# Waits before each new attempt at a round measured under background load.
RETRY_WAITS_S = (3.0, 10.0, 20.0, 30.0)
ALL = "fastproxy+all"


@dataclass
class Options:
    scenarios: list[Scenario]
    pin: bool = True
    install_nginx: bool = True
    loadgen_procs: int = 1
    force_loadgen: bool = False
    fastproxy_src: Path | None = None
    python: str = sys.executable
    peers: tuple[str, ...] = ()
    reference_cmd: str | None = None
    # LiteLLM pulls in ~150 packages: it may live in a venv of its own.
    litellm_python: str | None = None
    keep: bool = False
    # "nginx": canned answers from memory (bench/load/backend.py); "mock": fastproxy's mock
    # LLM. Paced scenarios (bp, c) use the mock whatever this says.
    backend: str = "nginx"
    # A round during which other processes used more than this many cores is measured
    # again (at most MAX_RETRIES times): on a shared machine a test suite starting in the
    # middle of a round would otherwise decide the figure.
    max_background: float = 0.35
    retry_budget_s: float = 900.0
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def feature_available(feature: str, opts: Options, workdir: Path, mock_port: int = 9) -> str | None:
    """None when the feature can be measured, else why not (recorded as a note)."""
    modules = FEATURE_MODULES[feature]
    code = (
        "import importlib.util,sys;"
        f"sys.exit(0 if any(importlib.util.find_spec(m) for m in {modules!r}) else 1)"
    )
    src = opts.fastproxy_src
    # cwd: a neutral directory, since `-c` puts it first on sys.path.
    if (
        subprocess.run(
            [*P.python_cmd(opts.python, src), "-c", code],
            cwd=workdir,
            env=P.clean_env(src, opts.python),
        ).returncode
        != 0
    ):
        return (
            f"{feature}: skipped, the feature is not built yet (no module {' or '.join(modules)})"
        )
    cfg = P.fastproxy_config(mock_port, workdir, **{feature: True})
    err = P.check_fastproxy_config(cfg, workdir, opts.python, opts.fastproxy_src)
    if err is not None:
        return f"{feature}: skipped, fastproxy rejects the config key: {err}"
    return None


class Suite:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.workdir = Path(tempfile.mkdtemp(prefix="fastproxy-bench-"))
        self.pin = P.Pinning.plan(opts.pin)
        self.notes = opts.notes
        # The backends started so far ("nginx", "mock"), kept across scenarios, and the one
        # the current scenario uses.
        self.backends: dict[str, P.Proc] = {}
        self.backend: P.Proc | None = None  # the current scenario's
        self.nginx_bin: str | None = None
        self.unavailable: dict[str, str] = {}
        self.features = dict(FEATURES)
        self.retry_spent_s = 0.0
        self.pg: PgCluster | None = None
        self.otlp: P.Proc | None = None

    @property
    def litellm_python(self) -> str:
        return self.opts.litellm_python or self.opts.python

    # -- set-up ---------------------------------------------------------------------
    def prepare(self) -> None:
        self.nginx_bin = P.nginx_binary(self.opts.install_nginx)
        if self.nginx_bin is None:
            self.unavailable["nginx"] = "nginx is not installed (apt-get install -y nginx)"
        if self.opts.backend == "nginx" and self.nginx_bin is None:
            self.notes.append(
                "backend: nginx is not installed, so the mock LLM serves every scenario"
            )
        if any(t in FEATURES for s in self.opts.scenarios for t in s.targets):
            ready = []
            for feature in FEATURE_MODULES:
                why = feature_available(feature, self.opts, self.workdir)
                if why is None:
                    ready.append(feature)
                    continue
                self.notes.append(why)
                for target, flags in FEATURES.items():
                    if flags.get(feature) and target != ALL:
                        self.unavailable[target] = why
            # "+all" means every feature that exists; with fewer than two it would only
            # repeat a single-feature variant.
            # usage_pg is another store for usage, not a feature of its own.
            # tracing is measured on its own (it needs the OTLP sink).
            own = ("policy", "usage_pg", "tracing")
            self.features[ALL] = {f: True for f in ready if f not in own}
            if len([f for f in ready if f not in own]) < 2:
                self.unavailable[ALL] = "fewer than two monitoring features are built"
        if "litellm" in self.opts.peers and not peers.litellm_available(self.litellm_python):
            self.unavailable["litellm"] = (
                f"litellm is not importable by {self.litellm_python} "
                "(pip install 'litellm[proxy]', or set BENCH_LITELLM_PYTHON)"
            )
        if "reference" in self.opts.peers and not self.opts.reference_cmd:
            self.unavailable["reference"] = "BENCH_REFERENCE_CMD is not set"

    def backend_kind(self, sc: Scenario) -> str:
        """Which backend serves ``sc``: the canned nginx unless pacing or --backend say mock."""
        if self.opts.backend == "mock" or sc.paced or self.nginx_bin is None:
            return "mock"
        return "nginx"

    def use_backend(self, sc: Scenario) -> str:
        """Start (once) the backend ``sc`` needs and make it current; returns its kind."""
        kind = self.backend_kind(sc)
        if kind not in self.backends:
            if kind == "nginx":
                assert self.nginx_bin is not None
                self.backends[kind] = start_nginx_backend(
                    self.nginx_bin, self.workdir, self.pin.mock
                )
            else:
                self.backends[kind] = P.start_mock(
                    self.workdir, self.pin.mock, self.opts.python, self.opts.fastproxy_src
                )
        self.backend = self.backends[kind]
        return kind

    def start_target(self, name: str) -> P.Proc | None:
        assert self.backend is not None
        sub = self.workdir / f"{name.replace('+', '_')}-{time.monotonic_ns()}"
        sub.mkdir()
        cpus = self.pin.relay
        if name == "direct":
            return None
        if name == "nginx":
            assert self.nginx_bin is not None
            return P.start_nginx(self.nginx_bin, self.backend.port, sub, cpus)
        if name == "fastproxy" or name in FEATURES:
            flags = self.features.get(name, {})
            dsn = self.pg_cluster().new_db() if flags.get("usage_pg") else None
            otlp = self.otlp_sink_url() if flags.get("tracing") else None
            cfg = P.fastproxy_config(self.backend.port, sub, **flags, pg_dsn=dsn, otlp_url=otlp)
            proc = P.start_fastproxy(
                name,
                cfg,
                sub,
                cpus,
                self.opts.python,
                self.opts.fastproxy_src,
                helper_cpus=self.pin.mock,
            )
            if dsn is not None:
                assert self.pg is not None
                proc.info["extra_pids"] = self.pg.pids
            return proc
        if name == "litellm":
            return peers.start_litellm(self.backend.port, sub, cpus, self.litellm_python)
        if name == "reference":
            assert self.opts.reference_cmd is not None
            return peers.start_reference(self.opts.reference_cmd, self.backend.port, sub, cpus)
        raise ValueError(name)

    def otlp_sink_url(self) -> str:
        """The tracing variant's OTLP collector, started once, on the helper core."""
        if self.otlp is None:
            self.otlp = start_otlp_sink(self.workdir, self.pin.mock)
        return f"http://127.0.0.1:{self.otlp.port}/v1/traces"

    def pg_cluster(self) -> PgCluster:
        """The usage-pg variant's PostgreSQL server, started once, on the helper core."""
        if self.pg is None:
            try:
                self.pg = PgCluster(self.workdir, self.pin.mock)
            except RuntimeError as exc:
                raise P.StartError(str(exc)) from None
        return self.pg

    # -- one scenario ---------------------------------------------------------------
    def run_scenario(self, sc: Scenario) -> dict[str, Any]:
        notes: list[str] = []
        kind = self.use_backend(sc)
        assert self.backend is not None
        if kind == "mock" and sc.paced and self.opts.backend == "nginx":
            notes.append(
                "backend: the mock LLM, since this scenario paces its events and a canned "
                "nginx backend cannot (figures are capped by the mock, not comparable "
                "with the nginx-backed scenarios)"
            )
        backend = "nginx (canned answers)" if kind == "nginx" else "mock LLM"
        procs: dict[str, P.Proc | None] = {}
        skipped = {n: self.unavailable[n] for n in sc.targets if n in self.unavailable}
        if sc.key.startswith("d-") and not set(MONITORING) - set(skipped):
            # Without a single monitoring feature, d would only repeat a's and b's runs.
            return {
                "key": sc.key,
                "title": sc.title,
                "backend": backend,
                "workload": sc.workload.__dict__,
                "rounds": 0,
                "duration_s": sc.duration_s,
                "targets": {},
                "notes": [
                    "skipped: no monitoring feature is built yet",
                    *sorted(set(skipped.values())),
                ],
            }
        try:
            for name in sc.targets:
                if name in skipped:
                    notes.append(f"{name}: {skipped[name]}")
                    continue
                try:
                    procs[name] = self.start_target(name)
                except P.StartError as exc:
                    notes.append(f"{name}: did not start: {exc}")
                    log(f"  {name} did not start: {exc}")
                    continue
                port = self.port(name, procs[name])
                check_headers = {"content-type": "application/json"}
                if sc.workload.keys:
                    check_headers["authorization"] = "Bearer " + bench_key(0)
                if not P.http_ok(port, sc.workload.path, JSON_BODY.encode(), check_headers):
                    notes.append(f"{name}: the check request failed; target dropped")
                    proc = procs.pop(name)
                    if proc is not None:
                        proc.stop()
            if not sc.slow_streams:
                for name in list(procs):
                    self.drive(name, procs[name], sc, sc.warmup_s)
                    why = self.inert_feature(name, procs[name])
                    if why is not None:
                        # Measuring a feature that does nothing would report its cost as 0.
                        notes.append(f"{name}: not measured: {why}")
                        log(f"  {name}: not measured: {why}")
                        proc = procs.pop(name)
                        if proc is not None:
                            proc.stop()
            names = list(procs)
            idle = {n: (p.rss_kib() if p else self.backend.rss_kib()) for n, p in procs.items()}
            rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for r in range(sc.rounds):
                order = names[r % len(names) :] + names[: r % len(names)] if names else []
                for name in order:
                    rounds[name].append(self.clean_round(name, procs[name], sc, r))
            hwm = {n: (p.hwm_kib() if p else None) for n, p in procs.items()}
            for name, proc in procs.items():
                if proc is not None and self.features.get(name, {}).get("capture"):
                    notes.append(f"{name}: {self.capture_kept(proc)}")
        finally:
            for proc in procs.values():
                if proc is not None:
                    proc.stop()
        return {
            "key": sc.key,
            "title": sc.title,
            "backend": backend,
            "workload": sc.workload.__dict__,
            "rounds": sc.rounds,
            "duration_s": sc.duration_s,
            "notes": notes,
            "targets": {
                n: aggregate(rounds[n], idle_rss_kib=idle[n], hwm_kib=hwm[n], workload=sc.workload)
                for n in rounds
            },
        }

    def inert_feature(self, name: str, proc: P.Proc | None) -> str | None:
        """Why a monitoring variant is not doing its work after the warm-up, or None.

        A config key can exist before its feature does (a service that logs "not built"
        and records nothing), so each feature must leave evidence: a usage database, a
        capture file, activity tracking reported on by /v1/diagnostics."""
        flags = self.features.get(name)
        if not flags or proc is None:
            return None
        cfg = proc.info["config"]
        deadline = time.monotonic() + 2 * cfg["usage_tracking"].get("flush_interval_seconds", 1.0)
        if flags.get("usage_pg"):
            # No file: the recorder reports the rows it wrote to PostgreSQL.
            while time.monotonic() < deadline + 5:
                st = P.http_get_json(proc.info["admin_port"], "/internal/health")
                storage = st.get("storage", {}) if isinstance(st, dict) else {}
                if storage.get("rows_written", 0) > 0 and storage.get("usage_db") == "ok":
                    break
                time.sleep(0.2)
            else:
                return "usage tracking wrote no row to PostgreSQL after the warm-up"
        elif flags.get("usage"):
            db = Path(cfg["usage_tracking"]["persistence_path"])
            while not (db.exists() and db.stat().st_size > 0) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not db.exists():
                return f"usage tracking wrote no database ({db.name}) after the warm-up"
        if flags.get("tracing"):
            while self.otlp is not None and exports(self.otlp) == 0:
                if time.monotonic() > deadline + 10:
                    return "tracing exported no span after the warm-up"
                time.sleep(0.2)
        if flags.get("capture"):
            out = Path(cfg["wire_capture"]["output_dir"])
            if not (out.is_dir() and any(out.iterdir())):
                return "wire capture wrote no file after the warm-up"
        if flags.get("activity"):
            diag = P.http_get_json(proc.info["admin_port"], "/v1/diagnostics")
            if not (isinstance(diag, dict) and diag.get("activity_tracking_enabled") is True):
                return "/v1/diagnostics does not report activity_tracking_enabled: true"
        return None

    def capture_kept(self, proc: P.Proc) -> str:
        """How much of the traffic the capture kept: a throughput figure with capture on
        means little if the capture dropped events to reach it (its bound is full when
        the writer falls behind, and traffic is never slowed for it)."""
        health = P.http_get_json(proc.info["admin_port"], "/internal/health")
        wc = health.get("wire_capture") if isinstance(health, dict) else None
        if not isinstance(wc, dict):
            return "wire capture status not reported"
        kept, dropped = wc.get("events_captured", 0), wc.get("dropped", 0)
        share = 100 * dropped / (kept + dropped) if kept + dropped else 0.0
        return f"wire capture kept {kept} events, dropped {dropped} ({share:.2f} %)"

    def port(self, name: str, proc: P.Proc | None) -> int:
        assert self.backend is not None
        return self.backend.port if proc is None else proc.port

    def drive(self, name: str, proc: P.Proc | None, sc: Scenario, seconds: float) -> Any:
        return drive(
            self.port(name, proc),
            sc.workload,
            seconds,
            self.pin.loadgen,
            self.workdir,
            self.opts.loadgen_procs,
            self.opts.force_loadgen,
        )

    def clean_round(self, name: str, proc: P.Proc | None, sc: Scenario, r: int) -> dict[str, Any]:
        """One round, measured again while other processes used the machine.

        Other work on a shared machine comes in bursts (a test suite, a build) that last
        from seconds to minutes, so the waits grow. The attempt with the least background
        load is kept; if even that one is over the limit, it is marked noisy in the
        report. The waiting is bounded per run by ``retry_budget_s``."""
        best: dict[str, Any] | None = None
        for attempt in range(len(RETRY_WAITS_S) + 1):
            result = self.measure(name, proc, sc)
            result["attempts"] = attempt + 1
            bg = result["background_cpu"]
            log(
                f"  {sc.key} round {r + 1}/{sc.rounds} {name}: {result['rps']:,.0f} req/s"
                + (f", {result['events_per_s']:,.0f} events/s" if "events_per_s" in result else "")
                + f", background {bg:.2f} cores"
            )
            if best is None or bg < best["background_cpu"]:
                best = result
            if bg <= self.opts.max_background or sc.slow_streams:
                break
            if attempt == len(RETRY_WAITS_S) or self.retry_spent_s >= self.opts.retry_budget_s:
                break
            wait = RETRY_WAITS_S[attempt]
            log(f"    background load too high: measuring the round again in {wait:.0f} s")
            time.sleep(wait)
            self.retry_spent_s += wait + sc.duration_s
        assert best is not None
        best["noisy"] = best["background_cpu"] > self.opts.max_background
        return best

    def measure(self, name: str, proc: P.Proc | None, sc: Scenario) -> dict[str, Any]:
        assert self.backend is not None
        mock = self.backend
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        watched = proc or mock

        def sample_rss() -> None:
            while not stop.wait(0.5):
                samples.append((time.monotonic(), watched.rss_kib()))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        cpu0 = proc.cpu() if proc else 0.0
        threads0 = proc.thread_cpu() if proc else {}
        mock0 = mock.cpu()
        busy0 = P.machine_busy_seconds()
        t0 = time.monotonic()
        res = self.drive(name, proc, sc, sc.duration_s)
        wall = time.monotonic() - t0
        cpu = (proc.cpu() - cpu0) if proc else None
        threads = P.thread_split(threads0, proc.thread_cpu(), proc.popen.pid) if proc else {}
        mock_cpu = mock.cpu() - mock0
        ours = (cpu or 0.0) + mock_cpu + res.gen_cpu_s
        background = max(0.0, P.machine_busy_seconds() - busy0 - ours) / wall
        stop.set()
        sampler.join()
        elapsed = res.elapsed_s or wall
        out: dict[str, Any] = {
            "generator": res.generator,
            "completed": res.completed,
            "elapsed_s": elapsed,
            "errors": res.errors,
            "unfinished": res.unfinished,
            "rps": res.completed / elapsed,
            "lat_us": res.lat_us,
            "gen_cpu_util": res.gen_cpu_s / elapsed,
            "backend_cpu_util": mock_cpu / elapsed,
            "background_cpu": background,
        }
        if res.completed:
            # CPU per request of every process of the chain, relay threads split below.
            out["backend_cpu_s_per_1k_req"] = mock_cpu / res.completed * 1000
            out["gen_cpu_s_per_1k_req"] = res.gen_cpu_s / res.completed * 1000
        if sc.workload.kind == "sse":
            out.update(
                events=res.events,
                events_per_s=res.events / elapsed,
                ttft_us=res.ttft_us,
                gap_us=res.gap_us,
                read_gap_us=res.read_gap_us,
            )
        if cpu is not None:
            out["relay_cpu_s"] = cpu
            out["relay_cpu_util"] = cpu / elapsed
            if res.completed:
                out["cpu_s_per_1k_req"] = cpu / res.completed * 1000
                out["thread_cpu_s_per_1k_req"] = {
                    k: v / res.completed * 1000 for k, v in threads.items()
                }
            if res.events:
                out["cpu_s_per_1k_events"] = cpu / res.events * 1000
        if sc.slow_streams:
            # Every stream is open from the end of the ramp (plus interpreter start-up)
            # until the streams start ending; keep a second's margin on both sides.
            lo = t0 + 0.6 + sc.workload.ramp_s + 1.0
            hi = t0 + 0.6 + sc.workload.ramp_s + sc.stream_s - 1.0
            window = [kib for t, kib in samples if lo <= t <= hi]
            if window:
                out["rss_during_kib"] = statistics.median(window)
                out["rss_during_max_kib"] = max(window)
        if sc.slow_streams and res.unfinished:
            # Every slow stream must end by itself: one still open at the deadline failed.
            out["errors"] = {**out["errors"], "unfinished": res.unfinished}
        if proc is not None and not proc.alive():
            out["errors"] = {**out["errors"], "relay_died": 1}
        return out

    # -- whole suite --------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        results = []
        try:
            self.prepare()
            for sc in self.opts.scenarios:
                log(f"scenario {sc.key}: {sc.title}")
                results.append(self.run_scenario(sc))
        finally:
            for backend in self.backends.values():
                backend.stop()
            if self.pg is not None:
                self.pg.stop()
            if self.otlp is not None:
                self.otlp.stop()
            if not self.opts.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                log(f"work directory kept: {self.workdir}")
        return results


def speedups_implementation(opts: Options) -> str:
    code = "import fastproxy._speedups as s; print(getattr(s, 'IMPLEMENTATION', '?'))"
    src = opts.fastproxy_src
    out = subprocess.run(
        [*P.python_cmd(opts.python, src), "-c", code],
        capture_output=True,
        text=True,
        env=P.clean_env(src, opts.python),
        cwd=tempfile.gettempdir(),
    )
    return out.stdout.strip() or (
        "error: " + out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "unknown"
    )


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
