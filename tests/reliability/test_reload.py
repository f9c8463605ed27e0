"""Reload (SIGHUP): the config file re-read and applied to a running gateway.

In-process tests drive `Gateway.reload` with the file re-read as SIGHUP re-reads it
(`LoadedConfig.reread`); the process tests send the real signal to `fastproxy run`,
under load, and read what it logs and tells systemd.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from fastproxy.config import load_config
from fastproxy.mockllm import MockLLMServer
from fastproxy.reload import plan_reload
from tests.conftest import RunningGateway, backend_for
from tests.support.proc import GatewayProcess

CHAT = "/v1/chat/completions"


def _body(model: str, **extra: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def _post(
    conn: http.client.HTTPConnection,
    model: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[int, dict[str, str], bytes]:
    conn.request(
        "POST", CHAT, _body(model, **extra), {"content-type": "application/json", **(headers or {})}
    )
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


@pytest.fixture
def connect() -> Any:
    """``connect(port)``: a keep-alive client connection, closed after the test."""
    made: list[http.client.HTTPConnection] = []

    def make(port: int) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def _rewrite(gw: RunningGateway, change: Callable[[dict[str, Any]], None]) -> str:
    """Edit the gateway's config file as an operator would; its path."""
    path = gw.gateway.config.state_dir + "/config.yaml"
    tree = yaml.safe_load(Path(path).read_text())
    change(tree)
    Path(path).write_text(yaml.safe_dump(tree))
    return path


def _reload(gw: RunningGateway) -> Any:
    """What SIGHUP does: re-read the same file, apply it."""
    path = gw.gateway.config.state_dir + "/config.yaml"
    loaded = load_config({}, config_file=path, env={})
    return gw.lt.run(gw.gateway.reload(loaded.reread(env={})))


def test_plan_reload_applies_routing_and_keeps_restart_keys() -> None:
    old = load_config({"port": 0}, env={}, use_files=False).config
    new_tree = {
        "port": 9999,  # a listening address: restart only
        "access_log": True,  # logging: restart only
        "limits": {"max_body_bytes": 1234},
        "backends": {"b": {"type": "openai", "api_url": "http://127.0.0.1:1/v1"}},
    }
    new = load_config({}, env={}, use_files=False, config_file=None).config
    import msgspec

    new = msgspec.convert({**msgspec.to_builtins(new), **new_tree}, type=type(new), strict=False)
    plan = plan_reload(old, new)
    assert sorted(plan.restart_keys) == ["access_log", "port"]
    assert plan.config.port == old.port and plan.config.access_log is False
    assert plan.config.limits.max_body_bytes == 1234
    assert plan.added == ["b"] and not plan.removed and not plan.changed


def test_reload_adds_a_backend_and_new_requests_reach_it(
    gateway_factory: Callable[..., RunningGateway],
    mock_factory: Callable[..., MockLLMServer],
    connect: Any,
) -> None:
    a = mock_factory(models=["model-a"])
    b = mock_factory(models=["model-b"])
    gw = gateway_factory({"backends": {"a": backend_for(a)}})
    conn = connect(gw.port)
    status, _, body = _post(conn, "model-b")
    assert status == 404, body  # no backend serves it yet
    old_breaker = gw.health.breakers["a"]
    old_pool = gw.plane.pools["a"]

    _rewrite(gw, lambda t: t["backends"].update(b=backend_for(b)))
    plan = _reload(gw)
    assert plan is not None and plan.added == ["b"] and plan.kept == ["a"]

    # The same keep-alive connection: the next request is routed by the new config.
    status, headers, body = _post(conn, "model-b")
    assert status == 200, body
    assert headers["x-fastproxy-backend"] == "b"
    assert b.stats.snapshot()["requests"], "backend b never saw the request"
    status, headers, _ = _post(conn, "model-a")
    assert status == 200 and headers["x-fastproxy-backend"] == "a"
    # The kept backend carried on: same breaker (state and history), same warm pool.
    assert gw.health.breakers["a"] is old_breaker
    assert gw.plane.pools["a"] is old_pool
    # The admin views list the new backend too.
    admin = connect(gw.gateway.admin_port)
    admin.request("GET", "/internal/health")
    health = orjson.loads(admin.getresponse().read())["endpoint_health"]
    names = {x["name"] for x in health["backends"]}
    assert names == {"a", "b"}


def test_removed_backend_finishes_its_stream_then_is_gone(
    gateway_factory: Callable[..., RunningGateway],
    mock_factory: Callable[..., MockLLMServer],
    connect: Any,
) -> None:
    a = mock_factory(models=["model-a"])
    b = mock_factory(models=["model-b"])
    gw = gateway_factory({"backends": {"a": backend_for(a), "b": backend_for(b)}})
    pool_b = gw.plane.pools["b"]
    got: dict[str, Any] = {}
    first_bytes = threading.Event()

    def stream() -> None:
        # A stream of 30 events 30 ms apart (~1 s) to backend b, read as it comes.
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
        conn.request(
            "POST",
            CHAT,
            _body("model-b", stream=True),
            {"content-type": "application/json", "x-mock-tokens": "30", "x-mock-interval-ms": "30"},
        )
        r = conn.getresponse()
        got["status"] = r.status
        chunks = [r.read1(65536)]
        first_bytes.set()
        while chunk := r.read1(65536):
            chunks.append(chunk)
        got["body"] = b"".join(chunks)
        conn.close()

    t = threading.Thread(target=stream)
    t.start()
    assert first_bytes.wait(10), "the stream never started"
    _rewrite(gw, lambda tree: tree["backends"].pop("b"))
    plan = _reload(gw)
    assert plan is not None and plan.removed == ["b"]
    t.join(20)
    # The stream planned before the reload ended whole, on the backend it was planned on.
    assert got["status"] == 200
    assert got["body"].rstrip().endswith(b"data: [DONE]"), got["body"][-200:]
    # New requests no longer find backend b; its retired pool let its connection go.
    conn = connect(gw.port)
    status, _, _ = _post(conn, "model-b")
    assert status == 404
    assert pool_b.retired
    deadline = time.monotonic() + 5
    while gw.lt.call(lambda: pool_b.open_connections) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.lt.call(lambda: pool_b.open_connections) == 0


def test_reload_applies_limits_and_keys_to_a_keep_alive_connection(
    gateway_factory: Callable[..., RunningGateway], mock_llm: MockLLMServer, connect: Any
) -> None:
    gw = gateway_factory({"backends": {"openai": backend_for(mock_llm)}})
    conn = connect(gw.port)
    big = "x" * 4000
    status, _, _ = _post(conn, "gpt-4o", metadata={"pad": big})
    assert status == 200

    def change(tree: dict[str, Any]) -> None:
        tree["limits"] = {"max_body_bytes": 2000}
        tree["auth"] = {"api_keys": ["sk-client-new"]}

    _rewrite(gw, change)
    assert _reload(gw) is not None
    # Same connection, next request: the new key is required ...
    status, _, body = _post(conn, "gpt-4o")
    assert status == 401, body
    conn = connect(gw.port)
    auth = {"authorization": "Bearer sk-client-new"}
    status, _, _ = _post(conn, "gpt-4o", auth)
    assert status == 200
    # ... and a body over the new limit (4 KB > 2,000 bytes) is refused before it is read.
    status, _, body = _post(conn, "gpt-4o", auth, metadata={"pad": big})
    assert status == 413, body
    assert orjson.loads(body)["error"]["code"] == "request_too_large"


def test_reload_keeps_listening_address_and_says_so(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    caplog: pytest.LogCaptureFixture,
    connect: Any,
) -> None:
    gw = gateway_factory({"backends": {"openai": backend_for(mock_llm)}})
    port = gw.port
    _rewrite(gw, lambda t: t.update(port=port + 1, access_log=True))
    with caplog.at_level("WARNING", logger="fastproxy"):
        plan = _reload(gw)
    assert plan is not None and sorted(plan.restart_keys) == ["access_log", "port"]
    assert gw.gateway.config.port == 0  # as configured at start (0: any free port)
    warnings = [r.getMessage() for r in caplog.records if "after a restart" in r.getMessage()]
    assert len(warnings) == 2 and any(w.startswith("reload: port changed") for w in warnings)
    conn = connect(port)
    assert _post(conn, "gpt-4o")[0] == 200  # still served where it was


# -- the real signal --------------------------------------------------------------------
def _load(port: int, model: str, stop: threading.Event, results: list[int]) -> None:
    """Keep-alive requests until ``stop``; every status (or 0 for a failed exchange)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        try:
            results.append(_post(conn, model)[0])
        except (OSError, http.client.HTTPException):
            results.append(0)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def test_sighup_under_load_adds_a_backend_without_a_failed_request(
    tmp_path: Path, mock_factory: Callable[..., MockLLMServer], connect: Any
) -> None:
    a = mock_factory(models=["model-a"])
    b = mock_factory(models=["model-b"])
    cfg = tmp_path / "config.yaml"
    tree: dict[str, Any] = {
        "port": 0,
        "admin": {"port": 0},
        "usage_tracking": {"enabled": False},
        "backends": {"a": backend_for(a)},
    }
    cfg.write_text(yaml.safe_dump(tree))
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sd:
        sd.bind(str(notify))
        gw = GatewayProcess(
            ["--config", str(cfg)],
            cwd=str(tmp_path),
            env={"NOTIFY_SOCKET": str(notify), "STATE_DIRECTORY": str(tmp_path / "state")},
        )
        try:
            port = gw.wait_ready()
            stop = threading.Event()
            results: list[int] = []
            loaders = [
                threading.Thread(target=_load, args=(port, "model-a", stop, results))
                for _ in range(4)
            ]
            for t in loaders:
                t.start()
            deadline = time.monotonic() + 10
            while len(results) < 200 and time.monotonic() < deadline:
                time.sleep(0.01)

            # 1. A broken file: refused with one log line, the running config kept.
            cfg.write_text("backends: [this is not a mapping\n")
            gw.proc.send_signal(1)
            _wait_line(gw, "reload refused")
            refused = [x for x in gw.lines if "reload refused" in x]
            assert len(refused) == 1, refused

            # 2. The file adds backend b: new requests reach it, none fails meanwhile.
            tree["backends"]["b"] = backend_for(b)
            cfg.write_text(yaml.safe_dump(tree))
            before = len(results)
            gw.proc.send_signal(1)
            _wait_line(gw, "reload: config re-read")
            conn = connect(port)
            status, headers, body = _post(conn, "model-b")
            assert status == 200, body
            assert headers["x-fastproxy-backend"] == "b"
            deadline = time.monotonic() + 10
            while len(results) < before + 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            for t in loaders:
                t.join(10)
            assert len(results) > before + 100, "the load stalled during the reload"
            assert set(results) == {200}, {s: results.count(s) for s in set(results)}
            # systemd heard the reload begin and end (Type=notify-reload's protocol).
            heard = _drain(sd)
            reloading = [m for m in heard if m.startswith("RELOADING=1")]
            assert len(reloading) == 1 and "MONOTONIC_USEC=" in reloading[0], heard
            assert any("READY=1" in m for m in heard[heard.index(reloading[0]) :]), heard
        finally:
            assert gw.stop() == 0, "".join(gw.lines)


def _wait_line(gw: GatewayProcess, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in gw.lines):
            return
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in the log:\n" + "".join(gw.lines))


def _drain(sock: socket.socket) -> list[str]:
    sock.settimeout(0.05)
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


def test_printed_unit_reloads_by_sighup() -> None:
    """`systemctl reload` runs the unit's ExecReload=: it must send the main process the
    SIGHUP the tests above exercise, with a kill that exists."""
    import shlex
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fastproxy", "service", "unit"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [x for x in out.splitlines() if x.startswith("ExecReload=")]
    assert len(lines) == 1, out
    argv = shlex.split(lines[0].removeprefix("ExecReload="))
    assert argv[1:] == ["-HUP", "$MAINPID"]
    assert Path(argv[0]).is_file()
