"""TLS to an https backend: verified against a CA bundle; refused when untrusted."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import RunningGateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def tls_mock(mock_factory, tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    mock = mock_factory(ssl=ctx)
    assert mock.url.startswith("https://")
    return mock, str(ca_path)


def test_tls_upstream_verified_with_ca_bundle(gateway_factory, tls_mock) -> None:
    mock, ca_path = tls_mock
    gw: RunningGateway = gateway_factory(
        {
            "backends": {
                "openai.1": {"api_url": mock.url, "api_key": "sk-x", "ca_bundle": ca_path}
            },
            "default_backend": "openai.1",
        }
    )
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200 and r.json()["choices"]
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10
    ) as s:
        assert s.read().rstrip().endswith(b"[DONE]")
    assert mock.stats.requests_total >= 2


def test_untrusted_certificate_is_refused(gateway_factory, tls_mock) -> None:
    mock, _ = tls_mock
    gw: RunningGateway = gateway_factory(
        {
            "backends": {
                "openai.1": {"api_url": mock.url, "api_key": "sk-x", "models": ["gpt-4o"]}
            },
            "default_backend": "openai.1",
        }
    )
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 502
    assert (
        "certificate" in r.json()["error"]["message"].lower()
        or "ssl" in r.json()["error"]["message"].lower()
    )
    assert mock.stats.requests_total == 0
