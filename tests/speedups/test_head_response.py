"""parse_simple_response against httptools' response parser, the strict parser it shortcuts.

The upstream connection hands a backend's answer that arrived whole in one read to this
one-call parser; whatever it accepts, httptools must read as exactly one complete message
with the same status, keep-alive verdict, headers and body, and what it declines goes to
httptools. Both implementations (compiled and pure) must agree on every input: ordinary
answers, seeded mutations of them, and the framing a broken or hostile backend could send.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httptools
import pytest

from tests.speedups.helpers import agree_on_mutations, mutations

LIMITS = (65536, 100)
BASE = [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 14:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n"
    b'{"id":"x","usage":{"a":1}}\n',
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"retry-after: 2\r\ncontent-length: 2\r\n\r\n{}",
    b"HTTP/1.1 503 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx-request-id:\tabc \r\nContent-Length: 5\r\n\r\nhello",
]
TRICKS = [
    # framing the one-call parser must leave to httptools
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2 \r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-A\x00: b\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-A: b\rc\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 20x OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 O\xffK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
]
PLANT = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"/", b"a", b"0"]


class _Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.messages = 0
        self.keep_alive: bool | None = None
        self.parser: Any = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages += 1


def _strict(data: bytes) -> tuple[Any, ...]:
    sink = _Collect()
    parser = httptools.HttpResponseParser(sink)
    sink.parser = parser
    parser.feed_data(data)
    return parser.get_status_code(), sink.keep_alive, sink.headers, sink.body, sink.messages


@pytest.mark.parametrize("data", BASE + TRICKS)
def test_each_accepted_response_parses_the_same_with_httptools(
    speedups_impl: ModuleType, data: bytes
) -> None:
    got = speedups_impl.parse_simple_response(data, *LIMITS)
    if data in TRICKS:
        assert got is None, f"framing left to httptools was taken: {data!r}"
        return
    assert got is not None, data
    status, keep_alive, headers, body_start, length = got
    assert _strict(data) == (status, keep_alive, headers, data[body_start:], 1)
    assert length == len(data) - body_start


def test_mutations_agree_with_httptools_and_between_implementations(
    speedups_impl: ModuleType,
) -> None:
    from fastproxy._speedups import _pure

    taken = agree_on_mutations(
        lambda data: speedups_impl.parse_simple_response(data, *LIMITS),
        lambda data: _pure.parse_simple_response(data, *LIMITS),
        _strict,
        lambda got, data: (got[0], got[1], got[2], data[got[3] :], 1),
        mutations(20261206, 6000, BASE, PLANT),
    )
    assert taken > 300, "the mutations left too few accepted inputs to compare"


@pytest.mark.parametrize(("limits", "why"), [((40, 100), "head bytes"), ((65536, 2), "count")])
def test_limits_decline_so_httptools_answers(
    speedups_impl: ModuleType, limits: tuple[int, int], why: str
) -> None:
    """Bad input: a backend's answer over one of the caller's head limits (``why``)."""
    assert speedups_impl.parse_simple_response(BASE[0], *limits) is None


def test_only_exact_bytes_objects(speedups_impl: ModuleType) -> None:
    assert speedups_impl.parse_simple_response(bytearray(BASE[0]), *LIMITS) is None
