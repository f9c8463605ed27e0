"""The two processes under soak: the mock LLM and one gateway, both on 127.0.0.1.

Both are the installed ``fastproxy`` entry point (``.venv/bin/fastproxy``), started with
their own session so a signal to the benchmark never reaches them by accident, and
stopped by pid only. Their output goes to files in the run's work directory, never to a
pipe nobody drains.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fastproxy.config.sources import ENV_VARS

MODEL = "gpt-4o"
_MOCK_LINE = re.compile(rb"mock-llm listening on http://127\.0\.0\.1:(\d+)/v1")


class StartError(RuntimeError):
    """A process did not come up; the message carries the tail of its log."""


def fastproxy_argv() -> list[str]:
    """The installed entry point beside this interpreter, else ``python -m fastproxy``."""
    exe = Path(sys.executable).with_name("fastproxy")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("fastproxy")
    return [found] if found else [sys.executable, "-m", "fastproxy"]


def clean_env() -> dict[str, str]:
    """This environment without the variables the config loader reads, so a developer's
    shell cannot change what the soak runs (the generated file is the whole config).
    Others pass, FASTPROXY_NO_EXTENSIONS among them: the suite runs twice with it."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM and wait up to ``timeout_s``; the exit status, None if it had to be
        killed (a gateway that does not stop by itself is a finding, not a detail)."""
        if self.popen.poll() is not None:
            return self.popen.returncode
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            return None


def _spawn(name: str, argv: list[str], workdir: Path) -> Proc:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=clean_env(),
            start_new_session=True,
        )
    return Proc(name, popen, log_path)


def start_mock(workdir: Path, timeout_s: float = 20.0) -> tuple[Proc, int]:
    """``fastproxy mock-llm --port 0``; its port is read from its first output line."""
    proc = _spawn(
        "mock",
        [
            *fastproxy_argv(),
            "mock-llm",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "WARNING",
        ],
        workdir,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            m = _MOCK_LINE.search(proc.log_path.read_bytes())
            if m:
                return proc, int(m.group(1))
        if not proc.alive():
            break
        time.sleep(0.05)
    proc.terminate(5)
    raise StartError(f"mock-llm did not report its port in {timeout_s:.0f} s\n{proc.log_tail()}")


def gateway_config(
    workdir: Path, mock_port: int, port: int, admin_port: int, backend_idle_timeout_s: float
) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "backends": {
            "mock": {
                "type": "openai",
                "api_url": f"http://127.0.0.1:{mock_port}/v1",
                "models": [MODEL],
                "max_connections": 1024,
                # Short, so that a slow reader's stall outlasts it within a bounded soak:
                # a backend held back by the gateway's own backpressure is not idle.
                "idle_timeout_s": backend_idle_timeout_s,
                # Idle pooled upstream sockets are kept on purpose; a short life lets the
                # settle phase see them closed within seconds rather than 30.
                "pool_idle_timeout_s": 2.0,
            }
        },
        "health_check": {
            # The injected resets are per-request faults of a healthy backend. A chance run
            # of them would open the breaker and refuse every stream for its cooldown: the
            # breaker's correct reaction, but not what a resource soak measures.
            "circuit_breaker_enabled": False,
        },
        "usage_tracking": {"enabled": True, "persistence_path": str(workdir / "usage.db")},
        "log_level": "WARNING",
        "access_log": False,
    }


def start_gateway(workdir: Path, config: dict[str, Any], timeout_s: float = 60.0) -> Proc:
    cfg_path = workdir / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = _spawn("gateway", [*fastproxy_argv(), "run", "--config", str(cfg_path)], workdir)
    admin = config["admin"]["port"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(
                f"gateway exited with status {proc.popen.returncode}\n{proc.log_tail()}"
            )
        if http_status(admin, "/internal/health") == 200:
            return proc
        time.sleep(0.1)
    proc.terminate(10)
    raise StartError(
        f"gateway admin listener not answering in {timeout_s:.0f} s\n{proc.log_tail()}"
    )


def http_status(port: int, path: str, timeout_s: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return None


def http_json(port: int, path: str, timeout_s: float = 5.0) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
