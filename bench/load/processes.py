"""The processes under test: the mock LLM, fastproxy, nginx (and optional peers).

Each relay runs as its own OS process, started fresh for every scenario, so its peak RSS
(VmHWM) and CPU time belong to that scenario alone. CPU time and memory are read from
/proc, not from the process itself, so the measurement costs the relay nothing.

Pinning (taskset): on two cores the backend (nginx serving canned answers, or the mock)
gets CPU 1 and the relay CPU 0, so the relay has a core of its own and the backend is
never the relay's competitor. The load
generator cannot have a third core, so it runs unpinned and the scheduler puts it on
whichever core has slack: the caveat is that under load it steals time from the relay
or the backend. The "direct" figure (client → backend) shows the generator's own ceiling.
With four or more cores the generator gets the remaining cores to itself.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .scenarios import POLICY_KEYS, bench_key

CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parents[1]
MODEL = "gpt-4o"

# Environment variables the fastproxy config loader reads: scrubbed so a developer's shell
# cannot silently change what is measured (the generated config file is the whole truth).
_CONFIG_ENV_PREFIXES = (
    "FASTPROXY_",
    "USAGE_TRACKING_",
    "WIRE_CAPTURE_",
    "ENABLE_ACTIVITY_TRACKING",
    "REPLACEMENT_",
)


class StartError(RuntimeError):
    """A process under test did not come up; the message carries its log tail."""


@dataclass(frozen=True)
class Pinning:
    """Which CPUs each role may use; None means unpinned."""

    relay: tuple[int, ...] | None
    mock: tuple[int, ...] | None  # the backend: nginx serving canned answers, or the mock
    loadgen: tuple[int, ...] | None

    @classmethod
    def plan(cls, enabled: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(None, None, None)
        if len(cpus) < 4:
            return cls((cpus[0],), (cpus[1],), None)
        return cls((cpus[0],), (cpus[1],), tuple(cpus[2:]))

    def describe(self) -> str:
        def one(cpus: tuple[int, ...] | None) -> str:
            return "unpinned" if cpus is None else "CPU " + ",".join(map(str, cpus))

        return (
            f"relay (nginx/fastproxy/peer) {one(self.relay)}; backend (canned nginx or mock) "
            f"{one(self.mock)}; "
            f"load generator {one(self.loadgen)}"
        )


def taskset_prefix(cpus: tuple[int, ...] | None) -> list[str]:
    return [] if cpus is None else ["taskset", "-c", ",".join(map(str, cpus))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"process exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise StartError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:.0f} s")


# --------------------------------------------------------------------------- /proc readers


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def pin_process(pid: int, cpus: set[int]) -> None:
    """Move every thread of ``pid`` to ``cpus``. ``sched_setaffinity(pid)`` alone moves
    only the thread whose id is the pid: a helper's threads started before it (the
    recorder's writer) would stay where they were, on the relay's core."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` from /proc/PID/stat (fields 14 and 15), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces; everything after its ')' is fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime+stime per thread of ``pid`` (tid -> seconds), from /proc/PID/task/*/stat."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended in between
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def thread_split(
    before: dict[int, dict[int, float]], after: dict[int, dict[int, float]], main_pid: int
) -> dict[str, float]:
    """CPU seconds between two ``Proc.thread_cpu`` snapshots, split by role.

    ``loop``: the main thread of the started process (fastproxy runs its event loop
    there; for nginx it is the master); ``other threads``: every other thread of that
    process (fastproxy's usage writer, asyncio's executor threads); ``busiest other
    thread``: the largest of those; ``child processes``: everything in the children
    (nginx's worker). A thread or process born during the round counts from zero."""
    loop = others = busiest = children = 0.0
    for pid, threads in after.items():
        for tid, secs in threads.items():
            delta = max(0.0, secs - before.get(pid, {}).get(tid, 0.0))
            if pid != main_pid:
                children += delta
            elif tid == main_pid:
                loop += delta
            else:
                others += delta
                busiest = max(busiest, delta)
    out = {"loop": loop, "other threads": others, "busiest other thread": busiest}
    if len(after) > 1:
        out["child processes"] = children
    return out


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all CPUs), from /proc/stat.

    Compared with the CPU time of our own processes it gives the background load during a
    round: on a shared machine that is the figure that says whether a round is clean."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One started process tree; ``measured`` pids are summed for CPU and memory."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    measure_children: bool = False

    def pids(self, measured: bool = False) -> list[int]:
        pid = self.popen.pid
        # nginx: the master forks the one worker that does the work; count both.
        own = [pid, *_children(pid)] if self.measure_children else [pid]
        # fastproxy+usage-pg: the PostgreSQL server does the database work the SQLite
        # variant's recorder does itself, so its processes count in the relay's CPU
        # (``measured``); not in its memory, where each would count shared buffers again.
        extra: Callable[[], list[int]] | None = self.info.get("extra_pids")
        return own + extra() if measured and extra is not None else own

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids(measured=True))

    def thread_cpu(self) -> dict[int, dict[int, float]]:
        """pid -> tid -> CPU seconds, for every measured process."""
        return {p: thread_cpu_seconds(p) for p in self.pids(measured=True)}

    def rss_kib(self) -> int:
        return sum(status_kib(p, "VmRSS") for p in self.pids())

    def hwm_kib(self) -> int:
        return sum(status_kib(p, "VmHWM") for p in self.pids())

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        # SIGTERM is a graceful stop for all three (nginx: fast shutdown, fastproxy: drain).
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def spawn(
    name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it for its lifetime
    try:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env, start_new_session=True
        )
    finally:
        log.close()
    return popen, log_path


def checked_start(proc: Proc, timeout_s: float) -> Proc:
    try:
        wait_port(proc.port, timeout_s, proc.popen)
    except StartError as exc:
        proc.stop()
        raise StartError(f"{proc.name}: {exc}\n{proc.log_tail()}") from None
    return proc


def start_mock(
    workdir: Path,
    cpus: tuple[int, ...] | None,
    python: str = sys.executable,
    src: Path | None = None,
) -> Proc:
    port = free_port()
    argv = [
        *taskset_prefix(cpus),
        *python_cmd(python, src),
        "-m",
        "fastproxy",
        "mock-llm",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
    ]
    popen, log = spawn("mock", argv, workdir, clean_env(src, python))
    return checked_start(Proc("mock", popen, port, workdir, log), 15)


def fastproxy_config(
    mock_port: int,
    workdir: Path,
    *,
    usage: bool = False,
    activity: bool = False,
    capture: bool = False,
    policy: bool = False,
    usage_pg: bool = False,
    pg_dsn: str | None = None,
    tracing: bool = False,
    otlp_url: str | None = None,
) -> dict[str, Any]:
    """The generated gateway config: one OpenAI backend (the mock), monitoring as asked.
    ``usage_pg``: usage records go to PostgreSQL at ``pg_dsn`` (a placeholder when only
    the config is checked: the loader does not connect).

    The ``wire_capture`` section is written only when capture is asked for, so the
    other variants run exactly the default configuration."""
    config: dict[str, Any] = {
        "host": "127.0.0.1",
        "backends": {
            "mock": {
                "type": "openai",
                "api_url": f"http://127.0.0.1:{mock_port}/v1",
                "models": [MODEL],
                # Scenario (c) holds 2,000 streams open at once: one upstream socket each.
                "max_connections": 4096,
            }
        },
        "usage_tracking": {"enabled": usage, "persistence_path": str(workdir / "usage.db")},
        "enable_activity_tracking": activity,
        "log_level": "WARNING",
        "access_log": False,
    }
    if usage_pg:
        config["usage_tracking"].update(
            store="postgresql", postgresql_dsn=pg_dsn or "postgresql://127.0.0.1:9/bench"
        )
    if capture:
        config["wire_capture"] = {"enabled": True, "output_dir": str(workdir / "captures")}
    if tracing:
        # Every request sampled (no traceparent comes in): the whole cost, measured.
        config["tracing"] = {
            "enabled": True,
            "endpoint": otlp_url or "http://127.0.0.1:9/v1/traces",
            "sampler": "always_on",
        }
    if policy:
        # A second entry for the same server, so the group has two backends to balance.
        config["backends"]["mock2"] = dict(config["backends"]["mock"])
        config.update(policy_config())
    return config


def policy_config() -> dict[str, Any]:
    """Scenario e's gateway policy: POLICY_KEYS named keys (by digest), each with limits
    far above what the rig can send (so the limiter runs its full path and never
    refuses), a limit on the model, and the model served by a least_busy group over two
    backend entries for the same server."""
    keys = [
        {
            "name": f"bench-{i:03d}",
            "secret_sha256": hashlib.sha256(bench_key(i).encode()).hexdigest(),
            "team": f"team-{i % 4}",
            "limits": {"rpm": 100_000_000, "tpm": 10_000_000_000},
        }
        for i in range(POLICY_KEYS)
    ]
    return {
        "auth": {"keys": keys},
        "rate_limits": {"models": {MODEL: {"rpm": 100_000_000, "tpm": 10_000_000_000}}},
        "groups": {
            MODEL: {
                "strategy": "least_busy",
                "members": [
                    {"backend": "mock", "model": MODEL},
                    {"backend": "mock2", "model": MODEL},
                ],
            }
        },
    }


def check_fastproxy_config(
    config: dict[str, Any], workdir: Path, python: str, src: Path | None = None
) -> str | None:
    """None if ``fastproxy check-config`` accepts the config, else its one-line error."""
    path = workdir / "check-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = subprocess.run(
        [*python_cmd(python, src), "-m", "fastproxy", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_env(src, python),
        timeout=60,
        cwd=workdir,
    )
    if out.returncode == 0:
        return None
    return (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]


def start_fastproxy(
    name: str,
    config: dict[str, Any],
    workdir: Path,
    cpus: tuple[int, ...] | None,
    python: str = sys.executable,
    src: Path | None = None,
    helper_cpus: tuple[int, ...] | None = None,
) -> Proc:
    """fastproxy with its helper processes (the usage recorder) measured with it and
    pinned to ``helper_cpus``: the other core, like a writer process on a core of its
    own, so the relay's core runs the event loop alone."""
    pdir = workdir / name
    pdir.mkdir()
    cfg_path = pdir / "config.yaml"
    config = {**config}
    for key in ("usage_tracking", "wire_capture"):  # keep state files per process
        if key not in config:
            continue
        section = dict(config[key])
        for sub in ("persistence_path", "output_dir"):
            if sub in section:
                section[sub] = str(pdir / Path(section[sub]).name)
        config[key] = section
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port, admin_port = free_port(), free_port()
    argv = [
        *taskset_prefix(cpus),
        *python_cmd(python, src),
        "-m",
        "fastproxy",
        "run",
        "--config",
        str(cfg_path),
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
    ]
    popen, log = spawn("fastproxy", argv, pdir, clean_env(src, python))
    proc = Proc(
        name,
        popen,
        port,
        pdir,
        log,
        info={"config": config, "admin_port": admin_port},
        measure_children=True,
    )
    proc = checked_start(proc, 30)
    if helper_cpus is not None:
        # The recorder is started before the data port listens: it exists by now.
        for child in _children(popen.pid):
            pin_process(child, set(helper_cpus))
    return proc


def start_pinned_gateway(
    work: Path, config: dict[str, Any], args: list[str], ports: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    """A gateway for the profiling tools (bench.profile, bench.usage.saturation): the
    config written to ``work/fastproxy.yaml``, ``python *args`` on CPU 0 with
    ``{config}`` in ``args`` replaced by its path, its helper processes (the usage
    recorder) pinned to CPU 1 once ``ports`` listen, its log in ``work/gw.log``."""
    path = work / "fastproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "FASTPROXY_NO_EXTENSIONS"}
    argv = [a.replace("{config}", str(path)) for a in args]
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, *argv],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "gw.log").open("wb"),
    )
    for port in ports:
        wait_port(port, 30, gateway)
    for child in _children(gateway.pid):
        pin_process(child, {1})
    return gateway


def python_cmd(python: str, src: Path | None) -> list[str]:
    """How to start the interpreter for fastproxy code (see clean_env for the -S)."""
    return [python] if src is None else [python, "-S"]


@functools.cache
def site_dirs(python: str) -> str:
    code = (
        "import sysconfig, os; p = sysconfig.get_paths(); "
        "print(os.pathsep.join(dict.fromkeys([p['purelib'], p['platlib']])))"
    )
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def clean_env(src: Path | None = None, python: str = sys.executable) -> dict[str, str]:
    """The environment for fastproxy processes, and for the checkout to measure.

    ``src`` (``--snapshot``/``--fastproxy-src``) must be the only fastproxy the process
    can import. PYTHONPATH alone is not enough: the venv's editable install adds a finder
    at the end of sys.meta_path that still serves the working tree's modules whenever the
    snapshot lacks one (a service module added since), so the process runs with ``-S``
    (no site, no .pth finders) and gets site-packages back through PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_ENV_PREFIXES)}
    if src is None:
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env["PYTHONPATH"] = str(src) + os.pathsep + site_dirs(python)
    return env


# --------------------------------------------------------------------------- nginx


def nginx_binary(install: bool) -> str | None:
    """Path of nginx; installs Debian's package first when asked and it is missing."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if found or not install or shutil.which("apt-get") is None or os.geteuid() != 0:
        return found
    print("nginx not found: apt-get install -y nginx", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = (
        subprocess.run(
            ["apt-get", "install", "-y", "nginx"], env=env, stdout=subprocess.DEVNULL
        ).returncode
        == 0
    )
    if not ok:
        subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "nginx"], env=env, stdout=subprocess.DEVNULL)
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def start_nginx(binary: str, mock_port: int, workdir: Path, cpus: tuple[int, ...] | None) -> Proc:
    ndir = workdir / "nginx"
    ndir.mkdir()
    # The worker drops to an unprivileged user when started as root; it must be able to
    # reach its temp directories under our (0700 mkdtemp) work directory.
    os.chmod(workdir, 0o755)
    port = free_port()
    template = (BENCH_DIR / "nginx.conf").read_text()
    conf = (
        template.replace("{{DIR}}", str(ndir))
        .replace("{{PORT}}", str(port))
        .replace("{{UPSTREAM_PORT}}", str(mock_port))
    )
    conf_path = ndir / "nginx.conf"
    conf_path.write_text(conf)
    argv = [*taskset_prefix(cpus), binary, "-p", str(ndir), "-c", str(conf_path)]
    popen, log = spawn("nginx", argv, ndir)
    proc = Proc("nginx", popen, port, ndir, log, measure_children=True)
    return checked_start(proc, 15)


def http_get_json(port: int, path: str, timeout_s: float = 5) -> Any:
    """GET a JSON document (the admin listener's), None when it cannot be had."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def http_ok(
    port: int, path: str, body: bytes, headers: dict[str, str], timeout_s: float = 10
) -> bool:
    """One request through a relay: proves the whole chain answers before load starts."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
