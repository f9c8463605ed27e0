"""Request framing errors on the monitoring endpoints: answered, then the connection closed.

A request whose body length is ambiguous (Content-Length and Transfer-Encoding together,
two different Content-Lengths, a folded or bare-LF header line) can be read one way by
this server and another way by anything in front of it. RFC 9112 requires a server that
sees both Content-Length and Transfer-Encoding to close the connection after answering;
for every such error here the only safe place for the next byte is nowhere, so each case
checks that:

- the answer is exactly the status named, with ``connection: close`` and an error body;
- a valid request pipelined right behind the bad one is never answered;
- the server closes the socket;
- the listener still serves a fresh connection.

The admin listener (h11) is the main subject; the same monitoring paths on the data port
(httptools) are held to the same rule.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import httptools
import httpx
import orjson
import pytest

from tests.admin.conftest import Admin
from tests.conftest import RunningGateway, backend_for
from tests.support.rawhttp import RawResponse, connection_closed, read_response
from tests.support.waiting import wait_until

ACTIVITY = b"/v1/diagnostics/activity"
REACTIVATE = b"/v1/diagnostics/backends/openai.1/reactivate"
# The valid request sent on the same socket right behind each bad one.
PIPELINED = b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\n\r\n"


def _post(
    head_lines: bytes, body: bytes, version: bytes = b"HTTP/1.1", path: bytes = REACTIVATE
) -> bytes:
    return (
        b"POST " + path + b" " + version + b"\r\nhost: localhost\r\n" + head_lines + b"\r\n" + body
    )


# (what is sent, the bytes, the admin listener's status)
ADMIN_CASES = [
    (
        "content-length then transfer-encoding chunked",
        _post(b"content-length: 5\r\ntransfer-encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    (
        "transfer-encoding chunked then content-length",
        _post(b"transfer-encoding: chunked\r\ncontent-length: 5\r\n", b"0\r\n\r\n"),
        400,
    ),
    (
        "content-length and transfer-encoding on a GET",
        b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "transfer-encoding on HTTP/1.0",
        _post(b"transfer-encoding: chunked\r\n", b"0\r\n\r\n", version=b"HTTP/1.0"),
        400,
    ),
    ("content-length that is not a number", _post(b"content-length: 1x\r\n", b"{}"), 400),
    ("negative content-length", _post(b"content-length: -1\r\n", b"{}"), 400),
    (
        "two different content-lengths",
        _post(b"content-length: 2\r\ncontent-length: 3\r\n", b"{}x"),
        400,
    ),
    ("content-length list of two values", _post(b"content-length: 2, 3\r\n", b"{}x"), 400),
    (
        "chunk size that is not hex",
        _post(b"transfer-encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk longer than its size",
        _post(b"transfer-encoding: chunked\r\n", b"2\r\n{}XX\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk size line ended by a bare LF",
        _post(b"transfer-encoding: chunked\r\n", b"2\n{}\r\n0\r\n\r\n"),
        400,
    ),
    (
        "obs-fold continuation of an ordinary header",
        b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\nx-note: a\r\n b\r\n\r\n",
        400,
    ),
    (
        "obs-fold continuation carrying transfer-encoding chunked",
        _post(b"transfer-encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    (
        "obs-fold continuation carrying content-length",
        _post(b"content-length:\r\n 2\r\n", b"{}"),
        400,
    ),
    (
        "bare LF line ends throughout the head",
        b"GET /v1/diagnostics/activity HTTP/1.1\nhost: localhost\n\n",
        400,
    ),
    (
        "bare LF ending an otherwise CRLF head",
        b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\n\n",
        400,
    ),
    # h11 refuses codings it cannot decode with 501; the connection still closes.
    (
        "transfer-encoding gzip, chunked",
        _post(b"transfer-encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
]

# The same monitoring paths on the data port: httptools refuses these framings itself.
DATA_CASES = [
    (
        "content-length then transfer-encoding chunked",
        _post(b"content-length: 5\r\ntransfer-encoding: chunked\r\n", b"0\r\n\r\n"),
    ),
    (
        "transfer-encoding chunked then content-length",
        _post(b"transfer-encoding: chunked\r\ncontent-length: 5\r\n", b"0\r\n\r\n"),
    ),
    (
        "content-length and transfer-encoding on a GET",
        b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "transfer-encoding on HTTP/1.0",
        _post(b"transfer-encoding: chunked\r\n", b"0\r\n\r\n", version=b"HTTP/1.0"),
    ),
    ("content-length that is not a number", _post(b"content-length: 1x\r\n", b"{}")),
    ("two different content-lengths", _post(b"content-length: 2\r\ncontent-length: 3\r\n", b"{}x")),
    (
        "chunk size that is not hex",
        _post(b"transfer-encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
    ),
    (
        "obs-fold continuation carrying transfer-encoding chunked",
        _post(b"transfer-encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    ),
    (
        "bare LF line ends throughout the head",
        b"GET /v1/diagnostics/activity HTTP/1.1\nhost: localhost\n\n",
    ),
]


@pytest.fixture
def admin_gw(gateway_factory: Callable[..., RunningGateway], mock_llm: object) -> Admin:
    return Admin(
        gateway_factory(
            {
                "backends": {"openai.1": backend_for(mock_llm, "openai")},  # type: ignore[arg-type]
                "default_backend": "openai.1",
                # Probes and the usage writer would add traffic and timers these cases ignore.
                "health_check": {"enabled": False},
                "usage_tracking": {"enabled": False},
            }
        )
    )


class _Answers:
    """Every response on one socket until the server closes it (httptools callbacks)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[RawResponse] = []
        self.closed = False

    def on_message_begin(self) -> None:
        self.responses.append(RawResponse())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers[name.decode().lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def _send_bad_then_valid(port: int, bad: bytes, timeout: float = 5.0) -> _Answers:
    """Send the bad request and a valid one behind it in a single write, then read every
    answer until the server closes (or the deadline passes, leaving ``closed`` False).

    rawhttp's ``connection_closed`` discards what it reads, so it cannot tell whether the
    pipelined request was answered; here every byte is parsed.
    """
    answers = _Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(bad + PIPELINED)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                answers.closed = True
                break
            answers.parser.feed_data(data)
    return answers


def _assert_answered_once_and_closed(answers: _Answers, status: int) -> RawResponse:
    assert answers.responses, "the bad request got no answer"
    resp = answers.responses[0]
    assert resp.complete, "the answer to the bad request is incomplete"
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers.get("connection") == "close", resp.headers
    assert len(answers.responses) == 1, (
        "the request pipelined behind the bad one was answered "
        f"{[r.status for r in answers.responses[1:]]}"
    )
    assert answers.closed, "the server kept the connection open after a framing error"
    return resp


@pytest.mark.parametrize(
    ("raw", "status"), [c[1:] for c in ADMIN_CASES], ids=[c[0] for c in ADMIN_CASES]
)
def test_admin_framing_error_is_answered_then_closed(
    admin_gw: Admin, raw: bytes, status: int
) -> None:
    resp = _assert_answered_once_and_closed(_send_bad_then_valid(admin_gw.port, raw), status)
    assert set(orjson.loads(resp.body)) == {"detail"}
    r = httpx.get(admin_gw.url + "/v1/diagnostics/activity", timeout=10)
    assert r.status_code == 200 and r.json()["enabled"] is False


@pytest.mark.parametrize("raw", [c[1] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_port_monitoring_path_framing_error_is_answered_then_closed(
    admin_gw: Admin, raw: bytes
) -> None:
    resp = _assert_answered_once_and_closed(_send_bad_then_valid(admin_gw.gw.port, raw), 400)
    assert set(orjson.loads(resp.body)) == {"error"}
    r = httpx.get(admin_gw.gw.url + "/v1/diagnostics/activity", timeout=10)
    assert r.status_code == 200 and r.json()["enabled"] is False


def test_admin_valid_chunked_and_content_length_requests_keep_the_connection(
    admin_gw: Admin,
) -> None:
    """The rule refuses ambiguity, not bodies: each framing alone still keeps alive."""
    sock = socket.create_connection(("127.0.0.1", admin_gw.port), timeout=10)
    with sock:
        for framing, body in (
            (b"content-length: 2\r\n", b"{}"),
            (b"transfer-encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"),
        ):
            sock.sendall(_post(framing, body))
            resp = read_response(sock)
            assert resp.status == 200 and not resp.closed, (resp.status, resp.body)
            assert resp.headers.get("connection") != "close"
        sock.sendall(PIPELINED)
        assert read_response(sock).status == 200


def _buffered_by_the_admin_listener(admin: Admin) -> bytes:
    """What the server side's h11 holds unparsed, over all admin connections."""
    return b"".join(p._conn.trailing_data[0] for p in list(admin.service.connections))


@pytest.mark.parametrize(
    ("first", "second", "status"),
    [
        # The blank line that ends the head is split over two reads; the server must see it
        # whole, or the bare LF of the second case slips through.
        (b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\n\r", b"\n", 200),
        (b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\n", b"\n", 400),
    ],
    ids=["CRLF blank line split after its CR", "bare LF blank line sent in a read of its own"],
)
def test_admin_head_end_split_over_two_reads(
    admin_gw: Admin, first: bytes, second: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", admin_gw.port), timeout=10) as sock:
        sock.sendall(first)
        wait_until(
            lambda: _buffered_by_the_admin_listener(admin_gw) == first,
            what="the first part to sit in the server's buffer",
        )
        sock.sendall(second)
        resp = read_response(sock)
        assert resp.status == status, (resp.status, resp.body)
        if status == 400:
            assert resp.headers.get("connection") == "close"
            assert connection_closed(sock)
        else:
            sock.sendall(PIPELINED)  # the connection is still in sync
            assert read_response(sock).status == 200
