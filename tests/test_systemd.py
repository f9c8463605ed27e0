"""sd_notify as systemd sees it: READY after the listeners, WATCHDOG, STOPPING on SIGTERM."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx

from fastproxy.systemd import Notifier
from tests.support.notify import recv_until
from tests.support.proc import GatewayProcess


def test_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        gw = GatewayProcess(
            ["--port", "0", "--admin-port", "0"],
            cwd=str(tmp_path),
            env={
                "NOTIFY_SOCKET": str(path),
                "WATCHDOG_USEC": "400000",
                "STATE_DIRECTORY": str(tmp_path / "state"),
            },
        )
        try:
            ready = recv_until(sock, "READY=1")
            port = gw.wait_ready()
            # READY means the data listener already accepts requests.
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                timeout=10,
                json={"model": "demo", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200
            assert any("READY=1" in m for m in ready)
            recv_until(sock, "WATCHDOG=1")
        finally:
            # Keep reading while the gateway stops, as systemd does: a receiver that
            # stops reading fills its queue and the gateway drops pings (never waits).
            heard: list[str] = []
            reader = threading.Thread(target=lambda: heard.extend(_drain(sock, 20.0)))
            reader.start()
            rc = gw.stop()
            reader.join(25)
        assert rc == 0
        assert any("STOPPING=1" in m for m in heard), heard


def _drain(sock: socket.socket, timeout: float) -> list[str]:
    """Datagrams until STOPPING=1 arrives or ``timeout`` passes."""
    try:
        return recv_until(sock, "STOPPING=1", timeout)
    except AssertionError as exc:
        return [str(exc)]


def test_a_receiver_that_stops_reading_never_blocks_the_gateway(tmp_path: Path) -> None:
    """Bad peer: a notify socket nobody reads. Its queue fills after a few datagrams; the
    notifier runs on the event loop, so it must drop the rest, not wait for room."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        done = threading.Event()

        def ping_a_lot() -> None:
            for _ in range(200):
                notifier.watchdog()
            done.set()

        threading.Thread(target=ping_a_lot, daemon=True).start()
        assert done.wait(10), "notify() blocked on a full socket"
        sock.settimeout(1)
        assert sock.recv(64) == b"WATCHDOG=1"  # the ones that fitted were delivered
