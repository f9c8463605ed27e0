"""A tiny blocking HTTP/1.1 client over a raw socket, for malformed-input tests."""

from __future__ import annotations

import socket
import time

import httptools


class RawResponse:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False
        self.closed = False


class _Reader:
    """One response parser per socket: pipelined responses may share a recv()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.current = RawResponse()
        self.done: list[RawResponse] = []

    def on_message_begin(self) -> None:
        self.current = RawResponse()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.complete = True
        self.done.append(self.current)


_READERS: dict[int, _Reader] = {}


def read_response(sock: socket.socket, timeout: float = 10.0) -> RawResponse:
    reader = _READERS.get(id(sock))
    if reader is None or reader.sock is not sock:
        reader = _READERS[id(sock)] = _Reader(sock)
    deadline = time.monotonic() + timeout
    while not reader.done:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError("no complete response before the deadline") from None
        if not data:
            resp = reader.current
            resp.closed = True
            return resp
        reader.parser.feed_data(data)
    return reader.done.pop(0)


def connection_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the peer has closed (recv returns b"" or resets) before the deadline."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[RawResponse, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return read_response(sock, timeout), sock
