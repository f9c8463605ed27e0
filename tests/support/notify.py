"""Reading what a gateway tells systemd: the datagrams on a NOTIFY_SOCKET the test binds."""

from __future__ import annotations

import socket
import time


def recv_until(sock: socket.socket, wanted: str, timeout: float = 15.0) -> list[str]:
    """The datagrams received until one contains ``wanted``; fails after ``timeout``."""
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
