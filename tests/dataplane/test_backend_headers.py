"""Headers from a backend are validated before anything reaches the client."""

from __future__ import annotations

import httpx
import pytest

from fastproxy.dataplane.wire import is_safe_header
from tests.conftest import RunningGateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "bad_header",
    [
        b"x-evil: ok\x00bad\r\n",  # NUL inside a value
        b"x-evil: first\r\n second-line\r\n",  # obsolete line folding (response splitting risk)
        b"bad header: x\r\n",
    ],  # space inside a name
)
def test_malformed_backend_header_is_never_relayed(
    gateway_factory, raw_backend, bad_header: bytes
) -> None:
    body = b'{"ok":true}'
    url = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + bad_header
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
    gw: RunningGateway = gateway_factory(
        {"backends": {"openai.1": {"api_url": url, "models": ["m"]}}}
    )
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 502
    assert "x-evil" not in r.headers and "bad header" not in r.headers
    assert r.json()["error"]["code"] == "upstream_error"


def test_is_safe_header_rules() -> None:
    assert is_safe_header(b"x-request-id", b"abc-123")
    assert not is_safe_header(b"x-a", b"one\r\nset-cookie: x")
    assert not is_safe_header(b"x-a", b"nul\x00")
    assert not is_safe_header(b"x a", b"v")
    assert not is_safe_header(b"", b"v")


def test_backend_cost_reaches_x_usage_cost(gateway: RunningGateway) -> None:
    r = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={**CHAT, "model": "gpt-4o"},
        headers={"x-mock-cost": "0.0123"},
        timeout=10,
    )
    assert r.status_code == 200
    assert float(r.headers["x-usage-cost"]) == pytest.approx(0.0123)


def test_compressed_backend_body_keeps_its_content_encoding(gateway_factory, raw_backend) -> None:
    """A backend that ignores our `accept-encoding: identity` and gzips anyway: the client
    must still be told, or it would read gzip bytes as JSON."""
    import gzip

    payload = gzip.compress(b'{"id":"x","choices":[]}')
    url = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload
    )
    gw: RunningGateway = gateway_factory(
        {"backends": {"openai.1": {"api_url": url, "models": ["m"]}}}
    )
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.json() == {"id": "x", "choices": []}  # httpx decoded it thanks to the header
