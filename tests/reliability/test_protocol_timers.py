"""ClientProtocol's deadlines on a fake clock: exact instants, no real sleeps.

The protocol keeps one lazy timer for three deadlines (header, body idle, keep-alive;
see the module docstring of fastproxy/dataplane/protocol.py): a new deadline re-arms the
timer only when it is earlier, and a timer that fires early re-arms itself for what is
left. These tests pin what a client observes: which status is written, and at which loop
instant the connection is closed, when the deadlines follow each other in every order
that matters. `FakeClockLoop.advance` fires each timer at its own due instant, so the
close time is compared exactly (within the protocol's stated 1 ms tolerance).

Only the public surface is used: ``ClientProtocol(plane)`` over a `FakeTransport`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

from fastproxy.dataplane.protocol import ClientProtocol
from tests.support.fake_transport import FakeClockLoop, FakeTransport, fake_clock_loop, make_plane

HEADER_S = 10.0
BODY_S = 30.0
KEEPALIVE_S = 75.0
TOLERANCE = 0.002  # the protocol treats a deadline within 1 ms as due

CHAT_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
)
BODY = b'{"model":"no-such-model","messages":[]}'
MODELS = b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture
def loop() -> Iterator[FakeClockLoop]:
    with fake_clock_loop() as lp:
        yield lp


class Conn:
    """One client connection to a fresh protocol, and the clock."""

    def __init__(self, loop: FakeClockLoop, **timeouts: float) -> None:
        self.loop = loop
        plane = make_plane(
            loop,
            {
                "timeouts": {
                    "header_seconds": HEADER_S,
                    "body_idle_seconds": BODY_S,
                    "keepalive_seconds": KEEPALIVE_S,
                    **timeouts,
                }
            },
        )
        self.transport = FakeTransport(loop)
        self.protocol = ClientProtocol(plane)
        self.t0 = loop.time()
        self.transport.connect(self.protocol)
        loop.settle()

    def send(self, data: bytes) -> None:
        self.transport.receive(data)
        self.loop.settle()

    def at(self, seconds: float) -> None:
        """Move the clock to ``t0 + seconds`` (never backwards)."""
        target = self.t0 + seconds
        assert target >= self.loop.time(), "a test cannot move the clock backwards"
        self.loop.advance(target - self.loop.time())

    @property
    def statuses(self) -> list[int]:
        return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", bytes(self.transport.written))]

    @property
    def closed_after(self) -> float | None:
        at = self.transport.closed_at
        return None if at is None else at - self.t0

    def assert_open(self) -> None:
        assert not self.transport.closed, (
            f"closed at t0+{self.closed_after}; written {bytes(self.transport.written)!r}"
        )


def assert_closed_at(conn: Conn, seconds: float) -> None:
    assert conn.transport.closed, f"still open at t0+{conn.loop.time() - conn.t0}"
    assert conn.closed_after == pytest.approx(seconds, abs=TOLERANCE)


# --------------------------------------------------------------------------------------
# the fake clock itself: the tests below are only as good as this


def test_fake_clock_fires_timers_in_order_at_their_instants(loop: FakeClockLoop) -> None:
    fired: list[tuple[str, float]] = []
    t0 = loop.time()
    loop.call_later(5, lambda: fired.append(("b", loop.time() - t0)))
    loop.call_later(2, lambda: fired.append(("a", loop.time() - t0)))
    cancelled = loop.call_later(3, lambda: fired.append(("x", loop.time() - t0)))
    cancelled.cancel()
    # A timer that schedules another inside the advanced span fires in the same advance.
    loop.call_later(4, lambda: loop.call_later(0.5, lambda: fired.append(("c", loop.time() - t0))))
    loop.advance(4.9)
    assert fired == [("a", 2.0), ("c", 4.5)]
    loop.advance(0.1)
    assert fired == [("a", 2.0), ("c", 4.5), ("b", 5.0)]
    assert loop.pending_timers() == []


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


def test_fake_transport_drives_write_flow_control(loop: FakeClockLoop) -> None:
    # A client that stops reading: writes pile up past the high-water mark (pause once),
    # then it reads them down to the low-water mark (resume once), as uvloop signals.
    proto = _Recorder()
    transport = FakeTransport(loop, high_water=100, low_water=20)
    transport.connect(proto)
    transport.hold_writes = True
    transport.write(b"x" * 60)
    assert proto.calls == []
    transport.writelines([b"x" * 30, b"x" * 30])
    transport.write(b"x")
    assert proto.calls == ["pause"] and transport.get_write_buffer_size() == 121
    transport.drain_client(50)
    assert proto.calls == ["pause"]
    transport.drain_client()
    assert proto.calls == ["pause", "resume"] and transport.get_write_buffer_size() == 0
    transport.close()
    loop.settle()
    assert transport.lost


# --------------------------------------------------------------------------------------
# header deadline


def test_silent_fresh_connection_is_closed_at_the_header_deadline(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.at(HEADER_S - 0.01)
    conn.assert_open()
    conn.at(HEADER_S + 0.01)
    assert_closed_at(conn, HEADER_S)
    assert conn.transport.written == b""  # nothing was asked: nothing to answer


def test_slowloris_partial_head_gets_408_at_the_header_deadline(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.at(1.0)
    conn.send(b"GET /v1/models HTTP/1.1\r\nHo")
    # Trickling more head bytes does not extend the header deadline: it is counted from
    # the request's first byte, so a client cannot hold a connection by dripping a head.
    for t in range(2, 11):
        conn.at(float(t))
        conn.send(b"x")
    conn.at(1.0 + HEADER_S - 0.01)
    conn.assert_open()
    conn.at(1.0 + HEADER_S + 0.01)
    assert conn.statuses == [408]
    assert b"request headers" in conn.transport.written
    assert_closed_at(conn, 1.0 + HEADER_S)


def test_head_completed_in_time_cancels_the_header_deadline(loop: FakeClockLoop) -> None:
    conn = Conn(loop, keepalive_seconds=1000.0)
    conn.send(b"GET /v1/models HTTP/1.1\r\n")
    conn.at(HEADER_S - 1)
    conn.send(b"Host: localhost\r\n\r\n")
    assert conn.statuses == [200]
    conn.at(HEADER_S * 5)
    conn.assert_open()
    assert conn.statuses == [200]


# --------------------------------------------------------------------------------------
# body idle deadline


def test_stalled_body_gets_408_at_the_body_idle_deadline(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.send(CHAT_HEAD % len(BODY) + BODY[:10])
    conn.at(BODY_S - 0.01)
    conn.assert_open()
    assert conn.statuses == []
    conn.at(BODY_S + 0.01)
    assert conn.statuses == [408]
    assert b"request body" in conn.transport.written
    assert_closed_at(conn, BODY_S)


def test_trickled_body_bytes_extend_the_body_deadline(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.send(CHAT_HEAD % len(BODY))
    t = 0.0
    # One byte every 0.9 x the idle limit: the body keeps arriving, so no 408, for a
    # total span far beyond one body deadline.
    for byte in BODY[:-1]:
        t += BODY_S * 0.9
        conn.at(t)
        conn.send(bytes([byte]))
        conn.assert_open()
    assert t > 10 * BODY_S
    assert conn.statuses == []
    # Then the client stalls: 408 one idle period after the last byte, not before.
    conn.at(t + BODY_S - 0.01)
    conn.assert_open()
    conn.at(t + BODY_S + 0.01)
    assert conn.statuses == [408]
    assert_closed_at(conn, t + BODY_S)


def test_body_completed_in_time_is_answered_not_timed_out(loop: FakeClockLoop) -> None:
    conn = Conn(loop, keepalive_seconds=1000.0)
    conn.send(CHAT_HEAD % len(BODY) + BODY[:5])
    conn.at(BODY_S - 1)
    conn.send(BODY[5:])
    # No backend serves the model: the gateway's own 404, proof the body was accepted.
    assert conn.statuses == [404]
    conn.at(BODY_S * 4)
    conn.assert_open()
    assert conn.statuses == [404]


# --------------------------------------------------------------------------------------
# keep-alive


def test_idle_keepalive_connection_closes_silently(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.at(2.0)
    conn.send(MODELS)
    assert conn.statuses == [200]
    written = bytes(conn.transport.written)
    conn.at(2.0 + KEEPALIVE_S - 0.01)
    conn.assert_open()
    conn.at(2.0 + KEEPALIVE_S + 0.01)
    assert_closed_at(conn, 2.0 + KEEPALIVE_S)
    assert bytes(conn.transport.written) == written  # no 408 for a connection at rest


def test_each_request_restarts_the_keepalive_period(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.send(MODELS)
    for t in (60.0, 120.0, 180.0):  # each within 75 s of the previous answer
        conn.at(t)
        conn.send(MODELS)
        conn.assert_open()
    assert conn.statuses == [200, 200, 200, 200]
    conn.at(180.0 + KEEPALIVE_S + 0.01)
    assert_closed_at(conn, 180.0 + KEEPALIVE_S)


# --------------------------------------------------------------------------------------
# one timer, several deadlines


def test_short_header_deadline_after_long_keepalive_is_kept(loop: FakeClockLoop) -> None:
    # The keep-alive timer (75 s) is armed after the answer; a request that starts 5 s
    # later has a 10 s header deadline, which comes first and must fire at its instant,
    # not when the long timer would have.
    conn = Conn(loop)
    conn.send(MODELS)
    conn.at(5.0)
    conn.send(b"GET /v1/models HTTP/1.1\r\nHo")
    conn.at(5.0 + HEADER_S - 0.01)
    conn.assert_open()
    conn.at(5.0 + HEADER_S + 0.01)
    assert conn.statuses == [200, 408]
    assert_closed_at(conn, 5.0 + HEADER_S)


def test_long_body_deadline_after_short_header_deadline_is_honoured(
    loop: FakeClockLoop,
) -> None:
    # The header timer (10 s after the first byte) is still armed when the head completes
    # at 9 s; it fires at 10 s, finds the body deadline further away and waits for it.
    conn = Conn(loop)
    conn.send(b"POST /v1/chat/completions HTTP/1.1\r\n")
    conn.at(9.0)
    conn.send(
        b"Host: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY)
    )
    conn.at(9.0 + BODY_S - 0.01)
    conn.assert_open()
    assert conn.statuses == []
    conn.at(9.0 + BODY_S + 0.01)
    assert conn.statuses == [408]
    assert_closed_at(conn, 9.0 + BODY_S)


def test_short_keepalive_after_long_body_deadline_is_kept(loop: FakeClockLoop) -> None:
    # Body idle 30 s is armed, the body completes at once, then the keep-alive period
    # (here shorter: 3 s) must close the connection at 3 s, not at 30 s.
    conn = Conn(loop, keepalive_seconds=3.0)
    conn.at(1.0)
    conn.send(CHAT_HEAD % len(BODY) + BODY)
    assert conn.statuses == [404]
    conn.at(1.0 + 3.0 - 0.01)
    conn.assert_open()
    conn.at(1.0 + 3.0 + 0.01)
    assert_closed_at(conn, 1.0 + 3.0)


def test_header_deadline_of_a_pipelined_request_counts_from_its_first_byte(
    loop: FakeClockLoop,
) -> None:
    # A complete request and the start of the next arrive together: the second one's
    # header deadline starts with its first byte, and the answer to the first does not
    # reset it to a keep-alive period.
    conn = Conn(loop)
    conn.at(3.0)
    conn.send(MODELS + b"GET /v1/models HTTP/1.1\r\nHo")
    assert conn.statuses == [200]
    conn.at(3.0 + HEADER_S - 0.01)
    conn.assert_open()
    conn.at(3.0 + HEADER_S + 0.01)
    assert conn.statuses == [200, 408]
    assert_closed_at(conn, 3.0 + HEADER_S)


def test_closed_connection_leaves_no_timer_behind(loop: FakeClockLoop) -> None:
    conn = Conn(loop)
    conn.send(b"GET /v1/models HTTP/1.1\r\nHo")
    assert loop.pending_timers(), "a partial head must be under a deadline"
    conn.transport.reset_by_peer()
    loop.settle()
    # A timer left armed would hold the protocol (and its state) alive until it fires.
    assert loop.pending_timers() == []
    conn.at(HEADER_S * 3)
    assert conn.transport.written == b""
