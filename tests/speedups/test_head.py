"""parse_simple_request against httptools, the strict parser it shortcuts.

Whatever the one-call parser accepts, httptools must parse as exactly one complete
message with the same method, target, headers and body; what it declines goes to
httptools. Both implementations (compiled and pure) must agree on every input. The
inputs: ordinary requests, then thousands of seeded mutations of them (bytes flipped,
inserted and deleted; CR/LF, spaces, tabs, colons, NUL, DEL and high bytes planted),
and the framing tricks a smuggler tries (duplicate or signed Content-Length,
Transfer-Encoding, folded lines, bare LF, a second request behind the first).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import httptools
import pytest

from tests.speedups.helpers import agree_on_mutations, mutations

LIMITS = (8192, 65536, 100)
BASE = [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: application/json\r\nContent-Length: 17\r\n\r\n"
    b'{"model":"gpt-4"}',
    b"POST /v1/messages HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
    b"x-api-key: sk-1\r\nanthropic-version: 2023-06-01\r\nconnection: keep-alive\r\n"
    b"content-length: 2\r\n\r\n{}",
    b"GET /v1/models?limit=5&after_id=x%20y HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\n\r\n",
    b"HEAD /internal/health HTTP/1.1\r\nHost: gw\r\nUser-Agent: curl/8.5.0\r\n\r\n",
]
TRICKS = [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2 \r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\nHost: a\nContent-Length: 2\n\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nX-A\x00: b\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nX-A : b\r\nContent-Length: 2\r\n\r\n{}",
    b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
]
PLANT = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x00", b"\x7f", b"\xff", b"/", b"a", b"0"]


class _Collect:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.messages = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages += 1


def _strict(data: bytes) -> tuple[Any, ...]:
    sink = _Collect()
    parser = httptools.HttpRequestParser(sink)
    parser.feed_data(data)
    return parser.get_method(), sink.url, sink.headers, sink.body, sink.messages


@pytest.mark.parametrize("data", BASE + TRICKS)
def test_each_accepted_request_parses_the_same_with_httptools(
    speedups_impl: ModuleType, data: bytes
) -> None:
    got = speedups_impl.parse_simple_request(data, *LIMITS)
    if data in TRICKS:
        assert got is None, f"a framing trick was taken: {data!r}"
        return
    assert got is not None, data
    method, target, headers, head_size, body_start, length = got
    assert _strict(data) == (method, target, headers, data[body_start:], 1)
    assert length == len(data) - body_start
    assert head_size == sum(len(k) + len(v) + 4 for k, v in headers)


def test_mutations_agree_with_httptools_and_between_implementations(
    speedups_impl: ModuleType,
) -> None:
    from fastproxy._speedups import _pure

    taken = agree_on_mutations(
        lambda data: speedups_impl.parse_simple_request(data, *LIMITS),
        lambda data: _pure.parse_simple_request(data, *LIMITS),
        _strict,
        lambda got, data: (got[0], got[1], got[2], data[got[4] :], 1),
        mutations(20261205, 6000, BASE, PLANT),
    )
    assert taken > 300, "the mutations left too few accepted inputs to compare"


@pytest.mark.parametrize(
    ("limits", "why"),
    [((10, 65536, 100), "target"), ((8192, 40, 100), "head bytes"), ((8192, 65536, 2), "count")],
)
def test_limits_decline_so_httptools_answers(
    speedups_impl: ModuleType, limits: tuple[int, int, int], why: str
) -> None:
    """Bad input: a request over one of the caller's head limits (named by ``why``)."""
    assert speedups_impl.parse_simple_request(BASE[0], *limits) is None


def test_only_exact_bytes_objects(speedups_impl: ModuleType) -> None:
    assert speedups_impl.parse_simple_request(bytearray(BASE[0]), *LIMITS) is None
