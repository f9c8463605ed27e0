"""The Host header a backend is sent: ``uri-host [":" port]`` (as RFC 9110 defines it), so an
IPv6 literal keeps its brackets (``host: [::1]:8080``, never ``host: ::1:8080``, which
no server can split into a host and a port) while the connection itself is made to the
bare address. The port is left out when it is the scheme's default.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from fastproxy.config import BackendConfig
from fastproxy.httpclient.backend import Backend
from fastproxy.httpclient.fetch import fetch
from fastproxy.httpclient.request import request_head
from tests.httpclient.scripted import CLOSE, ScriptedServer, answer


def _backend(url: str) -> Backend:
    return Backend("openai.t", BackendConfig(api_url=url, api_key="k"), env={})


def _host_line(head: bytes) -> bytes:
    (line,) = [x for x in head.split(b"\r\n") if x.lower().startswith(b"host:")]
    return line


@pytest.mark.parametrize(
    ("api_url", "host_header", "address", "port"),
    [
        ("http://[::1]:8080", b"[::1]:8080", "::1", 8080),
        ("http://[::1]:8080/v1", b"[::1]:8080", "::1", 8080),
        ("http://[::1]/v1", b"[::1]", "::1", 80),  # the default port is left out
        ("https://[2001:db8::1]:443/v1", b"[2001:db8::1]", "2001:db8::1", 443),
        ("https://[2001:DB8::A]:8443", b"[2001:db8::a]:8443", "2001:db8::a", 8443),
        ("http://127.0.0.1:8080", b"127.0.0.1:8080", "127.0.0.1", 8080),
        ("https://api.example.com/v1", b"api.example.com", "api.example.com", 443),
    ],
)
def test_host_header_and_connect_address(
    api_url: str, host_header: bytes, address: str, port: int
) -> None:
    backend = _backend(api_url)
    assert backend.host_header == host_header
    assert (backend.host, backend.port) == (address, port)  # what the pool connects to
    for head in (
        request_head(backend, b"GET", backend.upstream_path(b"/v1/models")),
        request_head(backend, b"POST", b"/v1/chat/completions", content_length=2),
    ):
        assert _host_line(head) == b"host: " + host_header


def test_ipv6_api_url_sends_the_bracketed_host() -> None:
    head = request_head(_backend("http://[::1]:8080"), b"GET", b"/models")
    assert b"\r\nhost: [::1]:8080\r\n" in head


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_backend_on_the_wire() -> None:
    ok = answer(200, b'{"data":[]}', b"content-type: application/json\r\n")
    async with ScriptedServer(lambda c, n, req: (ok, CLOSE), host="::1") as srv:
        backend = _backend(srv.url())
        assert srv.url().startswith("http://[::1]:")
        r = await fetch(
            backend,
            b"GET",
            backend.upstream_path(b"/v1/models"),
            timeout_s=5.0,
            loop=asyncio.get_running_loop(),
        )
        assert r.status == 200
    ((_, _, sent),) = srv.requests
    assert _host_line(sent) == b"host: [::1]:%d" % srv.port
