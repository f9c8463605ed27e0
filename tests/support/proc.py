"""Run ``fastproxy run`` in a subprocess and learn its ports from its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


class GatewayProcess:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None
    ) -> None:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FASTPROXY", "USAGE_TRACKING", "WIRE_CAPTURE"))
        }
        full_env["XDG_CONFIG_HOME"] = "/nonexistent"
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastproxy", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self.admin_port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"data plane listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._ready.set()
            m = re.search(r"admin listening on http://\S+:(\d+)", line)
            if m:
                self.admin_port = int(m.group(1))
        self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> int:
        if not self._ready.wait(timeout) or self.port is None:
            raise AssertionError("gateway did not start:\n" + "".join(self.lines))
        return self.port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def socket_inodes(self) -> set[str]:
        out = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
        return out

    def tcp_states(self) -> dict[str, int]:
        """TCP states of this process's sockets (from /proc/net/tcp{,6})."""
        names = {
            "01": "ESTABLISHED",
            "06": "TIME_WAIT",
            "08": "CLOSE_WAIT",
            "0A": "LISTEN",
            "04": "FIN_WAIT1",
            "05": "FIN_WAIT2",
            "07": "CLOSE",
            "09": "LAST_ACK",
        }
        inodes = self.socket_inodes()
        counts: dict[str, int] = {}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            if not Path(table).exists():
                continue
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    state = names.get(cols[3], cols[3])
                    counts[state] = counts.get(state, 0) + 1
        return counts

    def stop(self, sig: int = 15, timeout: float = 40.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 40.0) -> int:
        """Wait for exit (no signal sent) and release the pipe."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop(timeout=10)

    def output(self) -> str:
        time.sleep(0)
        return "".join(self.lines)
