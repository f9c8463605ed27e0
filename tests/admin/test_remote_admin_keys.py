"""Remote reads of the admin listener with an admin key (``admin.api_keys``), opt-in.

How a remote peer is produced, honestly: the admin listener binds 0.0.0.0 and the test
connects to this machine's own non-loopback address (the default interface's, found by
``non_loopback_ipv4``). The kernel then reports that address as the peer, so the gateway
sees a real non-loopback peer on a real socket, the same technique as the listener's
403 tests; nothing in the access path is replaced or told to pretend. Machines without
such an address skip these tests. Loopback peers are the usual 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.rawhttp import connection_closed, read_response

from .conftest import Admin, non_loopback_ipv4

ADMIN_KEY = "adm-7c1f0e9d2b8a4c6e5f3a1b0d9e8c7f6a"
CLIENT_KEY = "sk-client-0123456789abcdef"
READ_PATHS = ("/v1/diagnostics", "/v1/diagnostics/activity", "/metrics", "/internal/health")
REACTIVATE = "/v1/diagnostics/backends/openai.1/reactivate"
LOCAL_ONLY = {"detail": "Diagnostic endpoint is restricted to local access only"}


@pytest.fixture
def remote_addr() -> str:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    return addr


def keyed(admin_factory: Callable[..., Admin], **admin_cfg: Any) -> Admin:
    return admin_factory(
        {
            "admin": {"host": "0.0.0.0", "api_keys": [ADMIN_KEY], **admin_cfg},
            "auth": {"api_keys": [CLIENT_KEY]},
        }
    )


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_remote_reads_need_the_admin_key_and_client_keys_never_open_it(
    admin_factory: Callable[..., Admin], remote_addr: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = keyed(admin_factory)
    url = f"http://{remote_addr}:{admin.port}"
    for path in READ_PATHS:
        r = httpx.get(url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer ")
        assert "admin key required" in r.json()["detail"]
        # A client key is a key, but not this kind: refused, in either header.
        for headers in (
            bearer(CLIENT_KEY),
            {"x-api-key": CLIENT_KEY},
            bearer(ADMIN_KEY[:-1] + "0"),
        ):
            r = httpx.get(url + path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json() == {"detail": "invalid admin key"}
        r = httpx.get(url + path, headers=bearer(ADMIN_KEY))
        assert r.status_code == 200, (path, r.text)
        assert ADMIN_KEY not in r.text
    # The Anthropic-style header works too, as it does for client keys.
    r = httpx.get(url + "/v1/diagnostics", headers={"x-api-key": ADMIN_KEY})
    assert r.status_code == 200
    assert {i["name"] for i in r.json()["instances"]} == {"openai.1", "anthropic.1"}
    # Behind a TLS terminator the Host is its public name: a keyed request is not a
    # DNS-rebinding request (a browser cannot attach a key it does not know).
    r = httpx.get(
        url + "/v1/diagnostics", headers={**bearer(ADMIN_KEY), "host": "gateway-admin.example.com"}
    )
    assert r.status_code == 200
    # The start-up line says how many keys; no record anywhere holds one.
    assert any(
        "remote reads allowed with an admin key (1 configured" in rec.getMessage()
        for rec in caplog.records
    )
    for rec in caplog.records:
        assert ADMIN_KEY not in rec.getMessage() and CLIENT_KEY not in rec.getMessage()


def test_a_refused_remote_request_is_answered_from_its_head_and_closed(
    admin_factory: Callable[..., Admin], remote_addr: str
) -> None:
    admin = keyed(admin_factory)
    with socket.create_connection((remote_addr, admin.port), timeout=10) as s:
        # The body is announced but never sent: the answer must not wait for it.
        s.sendall(
            b"POST " + REACTIVATE.encode() + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
        )
        r = read_response(s)
        assert r.status == 401 and b"admin key required" in r.body
        assert r.headers["connection"] == "close"
        assert connection_closed(s)


def test_remote_writes_are_refused_unless_switched_on(
    admin_factory: Callable[..., Admin], remote_addr: str
) -> None:
    reads_only = keyed(admin_factory)
    url = f"http://{remote_addr}:{reads_only.port}"
    r = httpx.post(url + REACTIVATE, headers=bearer(ADMIN_KEY))
    assert r.status_code == 403
    assert "admin.remote_writes" in r.json()["detail"]
    # The same POST from the machine itself needs no key, as before.
    assert httpx.post(reads_only.url + REACTIVATE).status_code == 200

    writes = keyed(admin_factory, remote_writes=True)
    url = f"http://{remote_addr}:{writes.port}"
    assert httpx.post(url + REACTIVATE).status_code == 401
    r = httpx.post(url + REACTIVATE, headers=bearer(ADMIN_KEY))
    assert r.status_code == 200
    assert r.json() == {"backend": "openai.1", "circuit_state": "closed"}
    # A web page still cannot make a browser holding the key flip a breaker.
    r = httpx.post(
        url + REACTIVATE, headers={**bearer(ADMIN_KEY), "origin": "https://evil.example"}
    )
    assert r.status_code == 403


def test_loopback_is_unchanged_and_keeps_the_rebinding_guard(
    admin_factory: Callable[..., Admin],
) -> None:
    admin = keyed(admin_factory)
    assert httpx.get(admin.url + "/v1/diagnostics").status_code == 200
    # A rebinding page reaches the loopback socket under its own name; a key (even the
    # right one) does not turn the guard off for a loopback peer.
    for headers in ({}, bearer(ADMIN_KEY)):
        r = httpx.get(admin.url + "/v1/diagnostics", headers={**headers, "host": "evil.example"})
        assert r.status_code == 421


def test_without_admin_keys_remote_peers_stay_refused(
    admin_factory: Callable[..., Admin], remote_addr: str
) -> None:
    """The default: no admin keys, so no key of any kind opens the listener remotely."""
    admin = admin_factory({"admin": {"host": "0.0.0.0"}, "auth": {"api_keys": [CLIENT_KEY]}})
    url = f"http://{remote_addr}:{admin.port}"
    for headers in ({}, bearer(CLIENT_KEY), bearer(ADMIN_KEY)):
        r = httpx.get(url + "/v1/diagnostics", headers=headers)
        assert r.status_code == 403 and r.json() == LOCAL_ONLY


def test_allowed_network_peers_keep_their_rules_and_a_key_adds_diagnostics(
    admin_factory: Callable[..., Admin], remote_addr: str
) -> None:
    admin = keyed(admin_factory, allow_networks=[f"{remote_addr}/32"])
    url = f"http://{remote_addr}:{admin.port}"
    assert httpx.get(url + "/metrics").status_code == 200  # a scraper needs no key
    r = httpx.get(url + "/v1/diagnostics")
    assert r.status_code == 403 and r.json() == LOCAL_ONLY
    assert httpx.get(url + "/v1/diagnostics", headers=bearer(ADMIN_KEY)).status_code == 200
    assert httpx.get(url + "/metrics", headers=bearer(CLIENT_KEY)).status_code == 401


def test_the_data_port_never_accepts_the_admin_key(
    gateway_factory: Callable[..., Any], mock_llm: Any, remote_addr: str
) -> None:
    """The admin key opens the admin listener only; the data port keeps its rules (a
    client key first, then loopback or allow_networks for monitoring paths)."""
    from tests.conftest import backend_for

    gw = gateway_factory(
        {
            "host": "0.0.0.0",
            "backends": {"openai.1": backend_for(mock_llm)},
            "admin": {"api_keys": [ADMIN_KEY]},
            "auth": {"api_keys": [CLIENT_KEY]},
            "health_check": {"enabled": False},
            "usage_tracking": {"enabled": False},
        }
    )
    url = f"http://{remote_addr}:{gw.port}"
    assert httpx.get(url + "/v1/diagnostics", headers=bearer(ADMIN_KEY)).status_code == 401
    r = httpx.get(url + "/v1/diagnostics", headers=bearer(CLIENT_KEY))
    assert r.status_code == 403 and r.json() == LOCAL_ONLY
