"""`fastproxy run` as users run it: the demo backend, SIGTERM drain, binding rules."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import orjson
import yaml

from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until


def test_demo_backend_with_no_config(tmp_path: Path) -> None:
    gw = GatewayProcess(["--port", "0", "--admin-port", "0"], cwd=str(tmp_path))
    try:
        port = gw.wait_ready()
        body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=10
        ) as r:
            assert r.headers["x-fastproxy-backend"] == "demo"
            text = r.read()
        assert text.rstrip().endswith(b"data: [DONE]") and b'"content"' in text
        msg = httpx.post(
            f"http://127.0.0.1:{port}/v1/messages",
            timeout=10,
            json={
                "model": "demo",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ).json()
        assert msg["type"] == "message" and msg["content"][0]["text"]
    finally:
        assert gw.stop() == 0, gw.output()


def test_sigterm_drains_inflight_stream_then_exits_0(tmp_path: Path) -> None:
    gw = GatewayProcess(
        ["--port", "0", "--admin-port", "0", "--drain-timeout", "10"], cwd=str(tmp_path)
    )
    port = gw.wait_ready()
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    got: dict[str, bytes] = {}
    started = threading.Event()

    def client() -> None:
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers={"x-mock-tokens": "30", "x-mock-interval-ms": "30"},
            timeout=20,
        ) as r:
            parts = []
            for piece in r.iter_bytes():
                parts.append(piece)
                started.set()
            got["body"] = b"".join(parts)

    t = threading.Thread(target=client)
    t.start()
    assert started.wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    t.join(20)
    assert gw.wait(timeout=20) == 0, gw.output()
    # The in-flight stream finished normally (30 events x 30 ms < 10 s drain).
    assert got["body"].rstrip().endswith(b"data: [DONE]")


def test_drain_timeout_ends_streams_with_error_event(tmp_path: Path) -> None:
    gw = GatewayProcess(
        ["--port", "0", "--admin-port", "0", "--drain-timeout", "0.5"], cwd=str(tmp_path)
    )
    port = gw.wait_ready()
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    got: dict[str, bytes] = {}
    started = threading.Event()

    def client() -> None:
        with httpx.stream(
            "POST",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers={"x-mock-tokens": "100000", "x-mock-interval-ms": "20"},
            timeout=20,
        ) as r:
            parts = []
            try:
                for piece in r.iter_bytes():
                    parts.append(piece)
                    started.set()
            except httpx.HTTPError:
                pass
            got["body"] = b"".join(parts)

    t = threading.Thread(target=client)
    t.start()
    assert started.wait(10)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.wait(timeout=20) == 0, gw.output()
    t.join(20)
    last = [e for e in got["body"].split(b"\n\n") if e.strip()][-1]
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "gateway_shutdown"
    assert b"[DONE]" not in got["body"]


def test_refuses_public_bind_without_auth(tmp_path: Path) -> None:
    gw = GatewayProcess(["--host", "0.0.0.0", "--port", "0"], cwd=str(tmp_path))
    assert gw.wait(timeout=20) == 2
    wait_until(lambda: "requires auth.api_keys" in gw.output(), timeout=5)


def test_config_file_run(tmp_path: Path, mock_llm) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "backends": {"openai.1": {"api_url": mock_llm.url, "api_key_env": "MY_KEY"}},
                "default_backend": "openai.1",
                "admin": {"port": 0},
            }
        )
    )
    gw = GatewayProcess(["--config", str(cfg), "--port", "0"], env={"MY_KEY": "sk-from-env"})
    try:
        port = gw.wait_ready()
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=10,
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200
        assert dict(mock_llm.stats.requests[-1].headers)["authorization"] == "Bearer sk-from-env"
        assert "sk-from-env" not in gw.output()
    finally:
        assert gw.stop() == 0


def test_access_log_one_line_per_request_without_secrets(tmp_path: Path) -> None:
    gw = GatewayProcess(
        ["--port", "0", "--admin-port", "0", "--access-log"],
        cwd=str(tmp_path),
        env={"FASTPROXY_API_KEYS": "client-secret-123"},
    )
    try:
        port = gw.wait_ready()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "demo", "messages": [{"role": "user", "content": "a planted phrase"}]}
        for _ in range(3):
            r = httpx.post(
                url, json=body, headers={"authorization": "Bearer client-secret-123"}, timeout=10
            )
            assert r.status_code == 200
        assert httpx.post(url, json=body, timeout=10).status_code == 401
        wait_until(lambda: gw.output().count("logger=fastproxy.access") == 4, timeout=5)
    finally:
        assert gw.stop() == 0
    out = gw.output()
    access = [line for line in out.splitlines() if "logger=fastproxy.access" in line]
    assert sum("status=200" in line for line in access) == 3
    assert sum("status=401" in line for line in access) == 1
    assert "client-secret-123" not in out and "planted phrase" not in out
