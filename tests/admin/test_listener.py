"""The admin listener over real sockets: routing, HTTP strictness, limits, access, streams."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from fastproxy.admin import protocol as admin_protocol
from fastproxy.admin.routes import AdminRequest, AdminResponse, json_response
from tests.support.rawhttp import connection_closed, read_response
from tests.support.waiting import wait_until

from .conftest import Admin, non_loopback_ipv4

GET_ACTIVITY = b"GET /v1/diagnostics/activity HTTP/1.1\r\nhost: localhost\r\n\r\n"


def connect(admin: Admin) -> socket.socket:
    return socket.create_connection(("127.0.0.1", admin.port), timeout=10)


def add_route(admin: Admin, method: str, path: str, handler: Any) -> None:
    admin.gw.lt.call(lambda: admin.gw.gateway.monitoring.router.add(method, path, handler))


def test_bound_port_is_exposed_and_differs_from_data_port(admin: Admin) -> None:
    assert admin.port not in (0, admin.gw.port)


def test_routes_404_405_head(admin: Admin) -> None:
    r = httpx.get(admin.url + "/v1/diagnostics/activity")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "enabled": False,
        "total_active_connections": 0,
        "total_bytes_rx": 0,
        "total_bytes_tx": 0,
    }

    r = httpx.get(admin.url + "/no/such/path")
    assert r.status_code == 404
    assert r.json() == {"detail": "no such endpoint: /no/such/path"}

    r = httpx.delete(admin.url + "/v1/diagnostics")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert "detail" in r.json()

    get = httpx.get(admin.url + "/metrics")
    head = httpx.head(admin.url + "/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) > 0


def test_keep_alive_and_pipelining(admin: Admin) -> None:
    sock = connect(admin)
    try:
        for _ in range(3):  # sequential requests on one connection
            sock.sendall(GET_ACTIVITY)
            resp = read_response(sock)
            assert resp.status == 200 and not resp.closed
        sock.sendall(GET_ACTIVITY * 5)  # pipelined: answered in order, all of them
        for _ in range(5):
            resp = read_response(sock)
            assert resp.status == 200
            assert orjson.loads(resp.body)["enabled"] is False
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /metrics HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nhost: localhost\r\ncontent-length: x\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_requests_get_4xx_and_the_listener_keeps_serving(
    admin: Admin, raw: bytes, status: int
) -> None:
    sock = connect(admin)
    try:
        sock.sendall(raw)
        resp = read_response(sock)
        assert resp.status == status
        assert "detail" in orjson.loads(resp.body)
        assert connection_closed(sock)
    finally:
        sock.close()
    assert httpx.get(admin.url + "/v1/diagnostics/activity").status_code == 200


def test_body_limit(admin: Admin) -> None:
    big = admin_protocol.MAX_BODY_BYTES + 1
    sock = connect(admin)
    try:  # declared too large: answered before the body is read, then closed
        sock.sendall(
            b"POST /v1/diagnostics/backends/openai.1/reactivate HTTP/1.1\r\n"
            b"host: localhost\r\ncontent-length: %d\r\n\r\n" % big
        )
        assert read_response(sock).status == 413
        assert connection_closed(sock)
    finally:
        sock.close()
    sock = connect(admin)
    try:  # chunked, so the size is only known while reading
        sock.sendall(
            b"POST /v1/diagnostics/backends/openai.1/reactivate HTTP/1.1\r\n"
            b"host: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 65536
        try:
            for _ in range(big // len(piece) + 2):
                sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        assert read_response(sock).status == 413
    finally:
        sock.close()
    r = httpx.post(admin.url + "/v1/diagnostics/backends/openai.1/reactivate", content=b"{}")
    assert r.status_code == 200


def test_http10_is_answered_and_closed(admin: Admin) -> None:
    sock = connect(admin)
    try:
        # (Without a Host header the access policy answers 421: it cannot tell the name.)
        sock.sendall(b"GET /v1/diagnostics/activity HTTP/1.0\r\nhost: localhost\r\n\r\n")
        resp = read_response(sock)
        assert resp.status == 200
        assert connection_closed(sock)
    finally:
        sock.close()


def test_foreign_host_gets_421(admin: Admin) -> None:
    r = httpx.get(admin.url + "/v1/diagnostics", headers={"host": "evil.example:8001"})
    assert r.status_code == 421
    assert "detail" in r.json()
    for ok_host in ("localhost", f"localhost:{admin.port}", "127.0.0.1", "[::1]:8001"):
        assert httpx.get(admin.url + "/metrics", headers={"host": ok_host}).status_code == 200


def test_non_loopback_peer_gets_403(admin_factory: Callable[..., Admin]) -> None:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    admin = admin_factory({"admin": {"host": "0.0.0.0"}})
    url = f"http://{addr}:{admin.port}"
    for path in ("/v1/diagnostics", "/metrics", "/v1/diagnostics/activity"):
        r = httpx.get(url + path)
        assert r.status_code == 403, path
        assert r.json() == {"detail": "Diagnostic endpoint is restricted to local access only"}
    assert httpx.get(admin.url + "/v1/diagnostics").status_code == 200  # loopback still fine


def test_allowed_network_reads_metrics_but_not_diagnostics(
    admin_factory: Callable[..., Admin],
) -> None:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    admin = admin_factory({"admin": {"host": "0.0.0.0", "allow_networks": [f"{addr}/32"]}})
    url = f"http://{addr}:{admin.port}"
    assert httpx.get(url + "/metrics").status_code == 200
    r = httpx.get(url + "/v1/diagnostics")
    assert r.status_code == 403
    assert r.json() == {"detail": "Diagnostic endpoint is restricted to local access only"}


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_available(), reason="IPv6 is not available on this machine")
def test_dual_stack_bind_accepts_ipv4_mapped_loopback(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"admin": {"host": "::"}})
    seen: list[str | None] = []

    async def whoami(req: AdminRequest) -> AdminResponse:
        seen.append(req.peer_ip)
        return json_response({"peer": req.peer_ip})

    add_route(admin, "GET", "/test/whoami", whoami)
    r = httpx.get(f"http://127.0.0.1:{admin.port}/v1/diagnostics")  # IPv4 into a v6 socket
    assert r.status_code == 200
    assert httpx.get(f"http://127.0.0.1:{admin.port}/test/whoami").status_code == 200
    assert seen == ["::ffff:127.0.0.1"]
    assert httpx.get(f"http://[::1]:{admin.port}/v1/diagnostics").status_code == 200


def test_handler_error_is_500_and_the_connection_keeps_serving(admin: Admin) -> None:
    async def boom(req: AdminRequest) -> AdminResponse:
        raise RuntimeError("bug")

    add_route(admin, "GET", "/test/boom", boom)
    with httpx.Client() as client:
        r = client.get(admin.url + "/test/boom")
        assert r.status_code == 500
        assert r.json()["detail"].startswith("internal error")
        assert client.get(admin.url + "/v1/diagnostics/activity").status_code == 200
    admin.gw.lt.errors.clear()  # the logged traceback is the expected outcome here


def test_slow_handler_does_not_block_other_connections(admin: Admin) -> None:
    release = asyncio.Event()

    async def slow(req: AdminRequest) -> AdminResponse:
        await release.wait()
        return json_response({"ok": True})

    add_route(admin, "GET", "/test/slow", slow)
    sock = connect(admin)
    try:
        sock.sendall(b"GET /test/slow HTTP/1.1\r\nhost: localhost\r\n\r\n")
        wait_until(
            lambda: any(p._task is not None for p in _connections(admin)),
            what="the slow handler to start",
        )
        assert httpx.get(admin.url + "/v1/diagnostics/activity", timeout=5).status_code == 200
        admin.gw.lt.call(release.set)
        assert read_response(sock).status == 200
    finally:
        sock.close()


def _connections(admin: Admin) -> set[Any]:
    return admin.service.connections


def test_stream_is_chunked_and_flow_controlled(admin: Admin) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    total = 256  # 16 MiB in all: far beyond any socket buffer
    produced = [0]
    max_buffered = [0]

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(total):
            produced[0] += 1
            for proto in _connections(admin):
                if proto.transport is not None:
                    size = proto.transport.get_write_buffer_size()
                    max_buffered[0] = max(max_buffered[0], size)
            yield piece

    async def stream(req: AdminRequest) -> AdminResponse:
        return AdminResponse(content_type="application/octet-stream", stream=pieces())

    add_route(admin, "GET", "/test/stream", stream)
    with httpx.Client(timeout=30) as client, client.stream("GET", admin.url + "/test/stream") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        # Not reading: the server must pause instead of buffering 16 MiB.
        wait_until(
            lambda: any(p.flow.write_paused for p in _connections(admin)),
            what="the admin protocol to see pause_writing",
        )
        assert produced[0] < total
        received = 0
        digest = hashlib.sha256()
        for chunk in r.iter_bytes():
            digest.update(chunk)
            received += len(chunk)
        assert received == total * len(piece)
        assert digest.digest() == hashlib.sha256(piece * total).digest()
    assert max_buffered[0] < 2 * 1024 * 1024
    # The connection went back to keep-alive and serves again.
    assert httpx.get(admin.url + "/v1/diagnostics/activity").status_code == 200


def test_idle_keep_alive_and_incomplete_head_are_closed(
    admin_factory: Callable[..., Admin],
) -> None:
    admin = admin_factory({"timeouts": {"keepalive_seconds": 0.3, "header_seconds": 0.3}})
    sock = connect(admin)
    try:
        sock.sendall(GET_ACTIVITY)
        assert read_response(sock).status == 200
        assert connection_closed(sock, timeout=5)  # idle after a response
    finally:
        sock.close()
    sock = connect(admin)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: loc")  # never completed
        assert connection_closed(sock, timeout=5)
    finally:
        sock.close()


def test_connection_cap(admin: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_protocol, "MAX_CONNECTIONS", 2)
    held = [connect(admin), connect(admin)]
    try:
        wait_until(lambda: len(_connections(admin)) == 2, what="two admin connections")
        extra = connect(admin)
        try:
            resp = read_response(extra)
            assert resp.status == 503
            assert orjson.loads(resp.body)["detail"].startswith("too many admin connections")
        finally:
            extra.close()
    finally:
        for s in held:
            s.close()
    wait_until(lambda: not _connections(admin), what="admin connections to close")
    assert httpx.get(admin.url + "/metrics").status_code == 200


def test_admin_disabled_keeps_monitoring_on_the_data_port(
    admin_factory: Callable[..., Admin],
) -> None:
    admin = admin_factory({"admin": {"enabled": False}})
    assert admin.gw.gateway.admin_port is None
    r = httpx.get(admin.gw.url + "/v1/diagnostics")
    assert r.status_code == 200
    assert r.json()["activity_tracking_enabled"] is False


def test_host_name_with_port_zero_gets_one_port(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"admin": {"host": "localhost"}})
    server = admin.service._server
    assert server is not None
    ports = {s.getsockname()[1] for s in server.sockets}
    assert ports == {admin.port}
    r = httpx.get(f"http://localhost:{admin.port}/v1/diagnostics/activity")
    assert r.status_code == 200
