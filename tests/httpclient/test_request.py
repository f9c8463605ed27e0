"""The one request builder reproduces, byte for byte, every head the gateway built by hand.

The ``old_*`` functions are frozen copies of the hand-built heads as they were before
``httpclient.request`` existed (health probe and webhook: monitor/probes.py and
monitor/notify.py at f90c452; model discovery: gateway.py ``_fetch_models``; the data
plane's POST: ``_upstream_request``). Each builder call below is the one that replaces
it; the equality holds for representative backends (key or none, configured extra
headers, default and explicit ports, a deeper api_url path) and client headers.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from fastproxy.config import BackendConfig
from fastproxy.dataplane import wire
from fastproxy.httpclient.backend import Backend
from fastproxy.httpclient.request import request_head
from fastproxy.monitor.notify import USER_AGENT as WEBHOOK_AGENT
from fastproxy.monitor.notify import webhook_target
from fastproxy.monitor.probes import ACCEPT_JSON, probe_target
from fastproxy.monitor.probes import USER_AGENT as PROBE_AGENT

HOP = b"x-fastproxy-hop: 1\r\n"


# -- the heads as they were built by hand ------------------------------------------------
def old_probe_head(backend: Backend, method: str, path: str) -> bytes:
    target = backend.base_path + (path if path.startswith("/") else "/" + path).encode()
    version = (
        b"anthropic-version: " + backend.config.anthropic_version.encode() + b"\r\n"
        if backend.type == "anthropic"
        else b""
    )
    return (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nhost: "
        + backend.host_header
        + b"\r\naccept: application/json\r\naccept-encoding: identity\r\n"
        + b"user-agent: fastproxy-health\r\n"
        + backend.auth_headers
        + version
        + b"connection: close\r\n\r\n"
    )


def old_webhook_head(hook: Backend, data: bytes) -> bytes:
    parts = urlsplit(hook.api_url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (
        b"POST "
        + target.encode("latin-1")
        + b" HTTP/1.1\r\nhost: "
        + hook.host_header
        + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(data)
        + b"user-agent: fastproxy-health\r\nconnection: close\r\n\r\n"
    )


def old_discovery_head(backend: Backend) -> bytes:
    return (
        b"GET "
        + backend.upstream_path(b"/v1/models")
        + b" HTTP/1.1\r\nhost: "
        + backend.host_header
        + b"\r\naccept-encoding: identity\r\n"
        + backend.auth_headers
        + b"connection: close\r\n\r\n"
    )


def old_dataplane_head(
    backend: Backend,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    prefix: bytes,
    payload_len: int,
) -> bytes:
    lines = [
        b"POST ",
        backend.upstream_path(path),
        b" HTTP/1.1\r\nhost: ",
        backend.host_header,
        b"\r\ncontent-type: application/json\r\ncontent-length: ",
        b"%d" % (len(prefix) + payload_len),
        b"\r\nx-fastproxy-hop: 1\r\naccept-encoding: identity\r\n",
        backend.auth_headers,
    ]
    has_version = False
    for name, value in headers:
        if name in wire.NOT_FORWARDED:
            continue
        if name == b"anthropic-version":
            has_version = True
        lines += (name, b": ", value, b"\r\n")
    if backend.type == "anthropic" and not has_version:
        lines += (b"anthropic-version: ", backend.config.anthropic_version.encode(), b"\r\n")
    lines += (b"\r\n", prefix)
    return b"".join(lines)


# -- representative inputs ---------------------------------------------------------------
BACKENDS = {
    "openai-key-extra": Backend(
        "openai.1",
        BackendConfig(
            api_url="https://api.example.com/v1/",
            api_key="sk-test-123456",
            extra_headers={"OpenAI-Organization": "org-7", "x-team": "a b"},
        ),
        env={},
    ),
    "openai-no-key-port": Backend(
        "openai.2", BackendConfig(api_url="http://10.0.0.5:8000/v1"), env={}
    ),
    "openai-key-from-env-deep-path": Backend(
        "openai.azure",
        BackendConfig(
            api_url="https://res.example.net:443/openai/deployments/gpt/v1",
            api_key_env="AZ_KEY",
        ),
        env={"AZ_KEY": "az-secret"},
    ),
    "anthropic-key": Backend(
        "anthropic.1",
        BackendConfig(api_url="http://127.0.0.1:8080/v1", api_key="sk-ant-k"),
        env={},
    ),
    "anthropic-pinned-version": Backend(
        "anthropic.2",
        BackendConfig(
            api_url="https://api.anthropic.example/v1",
            api_key="k2",
            anthropic_version="2024-01-01",
        ),
        env={},
    ),
}

CLIENT_HEADERS = {
    "sdk": [
        (b"host", b"127.0.0.1:4000"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"connection", b"keep-alive"),
        (b"accept", b"application/json"),
        (b"content-type", b"application/json"),
        (b"user-agent", b"OpenAI/Python 1.54.0"),
        (b"x-stainless-lang", b"python"),
        (b"authorization", b"Bearer client-key"),
        (b"x-session-id", b"s1"),
        (b"content-length", b"42"),
        (b"cookie", b"a=b"),
        (b"x-fastproxy-hop", b"1"),
    ],
    "pins-anthropic-version": [
        (b"host", b"gw"),
        (b"x-api-key", b"client"),
        (b"anthropic-version", b"2023-01-01"),
        (b"anthropic-beta", b"tools-2024"),
        (b"content-length", b"10"),
    ],
    "none": [],
}

PREFIXES = {"as-sent": b"", "spliced": b'{"stream_options":{"include_usage":true},'}


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS.keys())
@pytest.mark.parametrize("headers", CLIENT_HEADERS.values(), ids=CLIENT_HEADERS.keys())
@pytest.mark.parametrize("prefix", PREFIXES.values(), ids=PREFIXES.keys())
@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/messages"])
def test_dataplane_post(
    backend: Backend, headers: list[tuple[bytes, bytes]], prefix: bytes, path: bytes
) -> None:
    payload = b'"model":"m","messages":[]}'
    new = request_head(
        backend,
        b"POST",
        backend.upstream_path(path),
        content_length=len(prefix) + len(payload),
        extra=HOP,
        headers=headers,
        skip=wire.NOT_FORWARDED,
        body_prefix=prefix,
    )
    assert new == old_dataplane_head(backend, path, headers, prefix, len(payload))


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS.keys())
@pytest.mark.parametrize(("method", "path"), [("GET", "/models"), ("HEAD", "models"), ("GET", "/")])
def test_health_probe(backend: Backend, method: str, path: str) -> None:
    new = request_head(
        backend,
        method.encode(),
        probe_target(backend, path),
        extra=ACCEPT_JSON,
        user_agent=PROBE_AGENT,
        close=True,
    )
    assert new == old_probe_head(backend, method, path)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9000/hook", "https://hooks.example.com", "http://h:81/a/b/?x=1&y=%20"],
)
def test_webhook(url: str) -> None:
    hook = Backend("webhook", BackendConfig(type="openai", api_url=url), env={})
    data = b'{"at":"2024-01-01T00:00:00.000Z","backend":"openai.1","from":"closed","to":"open"}'
    new = request_head(
        hook,
        b"POST",
        webhook_target(hook.api_url),
        content_length=len(data),
        identity=False,
        user_agent=WEBHOOK_AGENT,
        auth=False,
        close=True,
    )
    assert new == old_webhook_head(hook, data)


@pytest.mark.parametrize("backend", BACKENDS.values(), ids=BACKENDS.keys())
def test_model_discovery(backend: Backend) -> None:
    new = request_head(
        backend, b"GET", backend.upstream_path(b"/v1/models"), anthropic_version=False, close=True
    )
    assert new == old_discovery_head(backend)


def test_anthropic_version_is_sent_to_anthropic_backends_only_when_the_client_sent_none() -> None:
    an, oa = BACKENDS["anthropic-pinned-version"], BACKENDS["openai-key-extra"]
    assert b"anthropic-version: 2024-01-01\r\n" in request_head(an, b"GET", b"/v1/models")
    pinned = request_head(an, b"GET", b"/", headers=[(b"anthropic-version", b"2023-06-01")])
    assert pinned.count(b"anthropic-version") == 1
    assert b"anthropic-version" not in request_head(oa, b"GET", b"/v1/models")
    assert b"anthropic-version" not in request_head(an, b"GET", b"/", anthropic_version=False)


def test_empty_body_still_announces_its_length() -> None:
    head = request_head(BACKENDS["openai-no-key-port"], b"POST", b"/x", content_length=0)
    assert head == (
        b"POST /x HTTP/1.1\r\nhost: 10.0.0.5:8000\r\ncontent-type: application/json\r\n"
        b"content-length: 0\r\naccept-encoding: identity\r\n\r\n"
    )
