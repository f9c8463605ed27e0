"""Small helpers shared by the mock LLM tests (raw sockets, stats reads on the server loop)."""

from __future__ import annotations

import socket

from fastproxy.mockllm import MockLLMServer
from tests.support.loop_thread import LoopThread
from tests.support.waiting import wait_until


def raw_request(port: int, data: bytes, until: bytes | None = None, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until ``until`` appears or the server closes; return all read."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while until is None or until not in out:
            piece = sock.recv(65536)
            if not piece:
                break
            out += piece
        return out


def stat(lt: LoopThread, srv: MockLLMServer, name: str) -> int:
    """Read a counter on the server's loop (the loop owns it)."""
    return lt.call(lambda: getattr(srv.stats, name))


def wait_stat(
    lt: LoopThread, srv: MockLLMServer, name: str, value: int, timeout: float = 10.0
) -> None:
    wait_until(
        lambda: stat(lt, srv, name) == value, timeout=timeout, what=f"stats.{name} == {value}"
    )
