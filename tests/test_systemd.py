"""sd_notify as systemd sees it: READY after the listeners, WATCHDOG, STOPPING on SIGTERM."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.support.proc import GatewayProcess


def _recv_until(sock: socket.socket, wanted: str, timeout: float = 15.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(wanted in m for m in got):
            return got
    raise AssertionError(f"no {wanted!r} from the gateway; got {got}")


def test_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        gw = GatewayProcess(["--port", "0", "--admin-port", "0"], cwd=str(tmp_path),
                            env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000",
                                 "STATE_DIRECTORY": str(tmp_path / "state")})
        try:
            ready = _recv_until(sock, "READY=1")
            port = gw.wait_ready()
            # READY means the data listener already accepts requests.
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                           json={"model": "demo", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
            assert any("READY=1" in m for m in ready)
            _recv_until(sock, "WATCHDOG=1")
        finally:
            rc = gw.stop()
        assert rc == 0
        _recv_until(sock, "STOPPING=1")
