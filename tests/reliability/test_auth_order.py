"""Authentication and refusal happen at the head, before the body; a large valid body is
held once. Each test says the exact bytes it sends."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for
from tests.reliability.conftest import (
    CHAT_PATH,
    MESSAGES_PATH,
    PATHS,
    RawClient,
    assert_answers,
    assert_closed,
    assert_error,
    backend_requests,
    payload,
    request,
)
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

KEY = b"client-key-1"


@pytest.fixture
def keyed(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer
) -> RunningGateway:
    return gateway_factory(
        {
            "backends": {
                "openai.1": backend_for(mock_llm, "openai"),
                "anthropic.1": backend_for(mock_llm, "anthropic"),
            },
            "default_backend": "openai.1",
            "auth": {"api_keys": [KEY.decode()]},
            "limits": {"max_body_bytes": 1_000_000},
        }
    )


def _head(path: str, length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n" % length + extra + b"\r\n"
    )


@pytest.mark.parametrize("path", PATHS)
def test_no_key_is_refused_before_the_body(
    keyed: RunningGateway, mock_llm: MockLLMServer, path: str
) -> None:
    """Sends only the head of a 900 kB request, with no key: 401 in the path's dialect
    arrives at once (the gateway does not wait for the body), then the connection
    closes; nothing reaches the backend."""
    with RawClient(keyed.port) as client:
        client.send(_head(path, 900_000))
        assert_error(client.read(timeout=3), 401, path, "invalid_api_key")
        assert_closed(client)
    assert backend_requests(mock_llm) == 0


@pytest.mark.parametrize(
    "key_header", [b"authorization: Bearer wrong-key\r\n", b"x-api-key: wrong-key\r\n"]
)
def test_a_wrong_key_gets_no_100_continue(
    keyed: RunningGateway, mock_llm: MockLLMServer, key_header: bytes
) -> None:
    """Sends a head with `Expect: 100-continue` and a wrong key: the first bytes back are
    the 401, never `100 Continue`."""
    with RawClient(keyed.port) as client:
        client.send(_head(CHAT_PATH, 500, b"expect: 100-continue\r\n" + key_header))
        client.sock.settimeout(3)
        first = client.sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 401 "), first
    assert backend_requests(mock_llm) == 0


@pytest.mark.parametrize(
    ("target", "length", "status", "code"),
    [
        ("/v1/no-such-api", 500, 404, "not_found"),
        ("/v1/models", 500, 405, "method_not_allowed"),
        (CHAT_PATH, 2_000_000, 413, "request_too_large"),
    ],
)
def test_no_100_continue_for_a_request_that_will_be_refused(
    keyed: RunningGateway,
    mock_llm: MockLLMServer,
    target: str,
    length: int,
    status: int,
    code: str,
) -> None:
    """Sends a valid key and `Expect: 100-continue` to an unknown path, to a GET-only path
    with a body, and with a Content-Length over `max_body_bytes`: the refusal comes first,
    no `100 Continue`, and the connection closes (the body was never read)."""
    with RawClient(keyed.port) as client:
        client.send(_head(target, length, b"expect: 100-continue\r\nx-api-key: " + KEY + b"\r\n"))
        client.sock.settimeout(3)
        first = client.sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 %d " % status), first
        body = orjson.loads(first.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == code
    assert backend_requests(mock_llm) == 0


@pytest.mark.parametrize("path", PATHS)
def test_a_valid_key_gets_100_continue_then_the_answer(
    keyed: RunningGateway, mock_llm: MockLLMServer, path: str
) -> None:
    """Sends a valid key and `Expect: 100-continue`, waits for `100 Continue`, then sends
    the body: one 200 answer in the path's dialect."""
    body = payload(path)
    with RawClient(keyed.port) as client:
        client.send(
            _head(
                path,
                len(body),
                b"expect: 100-continue\r\nauthorization: Bearer "
                + KEY
                + b"\r\nx-mock-tokens: 4\r\n",
            )
        )
        client.sock.settimeout(3)
        interim = client.sock.recv(25)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(body)
        assert_answers(client.read(), path, tokens=4)
    assert backend_requests(mock_llm) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/usage/stats"),
        ("GET", "/v1/usage/export"),
        ("GET", "/internal/health"),
        ("GET", "/v1/diagnostics"),
        ("POST", "/v1/diagnostics/backends/openai.1/reactivate"),
        ("GET", "/v1/models"),
    ],
)
def test_monitoring_on_the_data_port_needs_a_key_when_keys_are_set(
    keyed: RunningGateway, method: str, path: str
) -> None:
    """With `auth.api_keys` set, sends monitoring requests to the data port without a key
    (401), then with the key (answered); the admin listener keeps its loopback rule and
    answers without one."""
    url = keyed.url + path
    assert httpx.request(method, url, timeout=10).status_code == 401
    with_key = httpx.request(method, url, headers={"x-api-key": KEY.decode()}, timeout=10)
    assert with_key.status_code in (200, 204), with_key.text
    if path != "/v1/models":
        admin = f"http://127.0.0.1:{keyed.gateway.admin_port}{path}"
        assert httpx.request(method, admin, timeout=10).status_code in (200, 204)


def test_a_rejected_request_is_recorded_once(
    keyed: RunningGateway, mock_llm: MockLLMServer
) -> None:
    """Sends one chat request with a wrong key: the refusal from the head still leaves
    exactly one usage record, outcome `rejected`, status 401."""
    with RawClient(keyed.port) as client:
        client.send(request(MESSAGES_PATH, extra=b"x-api-key: nope\r\n"))
        assert client.read().status == 401
    admin = f"http://127.0.0.1:{keyed.gateway.admin_port}/v1/usage/recent"
    records = wait_until(
        lambda: httpx.get(admin, timeout=10).json()["records"],
        what="the record of the refused request",
    )
    assert len(records) == 1
    assert records[0]["outcome"] == "rejected" and records[0]["http_status_code"] == 401
    assert records[0]["frontend_type"] == "anthropic"


# -- memory: a 60 MiB body is held once --------------------------------------------------
@pytest.fixture
def mock_process() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastproxy", "mock-llm", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[-1]
    yield url
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024  # type: ignore[union-attr]


def _post(port: int, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(_head(CHAT_PATH, len(body)))
        view = memoryview(body)
        for i in range(0, len(body), 1 << 20):
            s.sendall(view[i : i + (1 << 20)])
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("usage", [False, True])
def test_a_60_mib_request_is_held_once(mock_process: str, usage: bool) -> None:
    """Sends one valid 60 MiB chat request to a gateway in its own process and reads its
    peak RSS: the body is held once (growth under 1.25x the body), with usage tracking
    off and on (the writer estimates a prompt this large from its bytes instead of
    parsing it). Before the fix: 3.0x and 3.5x (body parts, their join, the parsed JSON,
    the join with the upstream head, a JSON parser's scratch buffer, the writer's
    parse)."""
    most = 1.25
    tmp = tempfile.mkdtemp()
    cfg = Path(tmp) / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "port": 0,
                "admin": {"port": 0},
                "state_dir": tmp,
                "backends": {
                    "openai.1": {
                        "type": "openai",
                        "api_url": mock_process,
                        "api_key": "k",
                        "models": ["gpt-4o"],
                    }
                },
                "usage_tracking": {"enabled": usage},
                "health_check": {"enabled": False},
            }
        )
    )
    gw = GatewayProcess(["--config", str(cfg)])
    try:
        port = gw.wait_ready()
        small = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(3):
            assert _post(port, small) == b"HTTP/1.1 200 OK"
        before = _peak_rss(gw.pid)
        size = 60 << 20
        big = orjson.dumps(
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "word " * (size // 5)}]}
        )
        assert _post(port, big) == b"HTTP/1.1 200 OK"
        del big
        if usage:  # the writer has parsed the body once its record is stored
            admin = f"http://127.0.0.1:{gw.admin_port}/v1/usage/recent"
            page = wait_until(
                lambda: (p := httpx.get(admin, timeout=10).json())["total"] == 4 and p,
                timeout=30,
                what="the large request's record",
            )
            big_rec = page["records"][0]  # newest first
            # Estimated from the bytes: about a token per "word " (5 bytes) of the prompt.
            assert 0.8 * size / 5 < big_rec["ctp_prompt_tokens"] < 1.5 * size / 5
        growth = (_peak_rss(gw.pid) - before) / size
        assert growth < most, f"peak RSS grew by {growth:.2f}x the body"
    finally:
        assert gw.stop() == 0
