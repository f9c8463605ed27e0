"""Multi-process mode: ``workers: 2`` behind one port, seen by operators as one gateway.

Every test runs ``fastproxy run`` as a process (a primary and its workers) against the
mock LLM on 127.0.0.1, sends real traffic over many connections, and reads the
answers where an operator would: /metrics, /v1/diagnostics, /v1/usage/stats, the log,
the systemd notify socket, the usage database.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for
from tests.support.notify import recv_until
from tests.support.proc import GatewayProcess

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def _start(
    tmp_path: Path, mock: MockLLMServer, extra: dict[str, Any] | None = None, **env: str
) -> GatewayProcess:
    tree: dict[str, Any] = {
        "port": 0,
        "admin": {"port": 0},
        "workers": 2,
        "backends": {"openai": backend_for(mock)},
        "usage_tracking": {"persistence_path": str(tmp_path / "usage.db")},
        **(extra or {}),
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    gw = GatewayProcess(["--config", str(cfg)], cwd=str(tmp_path), env=env)
    gw.wait_ready()
    return gw


@pytest.fixture
def stop_all() -> Iterator[list[GatewayProcess]]:
    procs: list[GatewayProcess] = []
    yield procs
    for gw in procs:
        if gw.proc.poll() is None:
            gw.kill()


def _get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        return body if path == "/metrics" else orjson.loads(body)
    finally:
        conn.close()


def _requests(port: int, connections: int, per_connection: int) -> list[int]:
    """``connections`` keep-alive connections in parallel, ``per_connection`` requests
    each; every status (0: the exchange failed)."""
    out: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        got = []
        for _ in range(per_connection):
            try:
                conn.request("POST", CHAT, BODY, {"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                got.append(r.status)
            except (OSError, http.client.HTTPException):
                got.append(0)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.close()
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _poll(what: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


class Load:
    """``n`` threads sending chat requests on keep-alive connections until `stop`;
    every status lands in ``statuses`` (0: the exchange failed). ``retry_closed``: a
    connection the server closed before answering is retried once on a new one, as the
    SDKs do. ``end_on_error``: a thread stops at its first failed exchange (a draining
    gateway closes connections)."""

    def __init__(
        self,
        port: int,
        n: int,
        body: bytes = BODY,
        *,
        retry_closed: bool = False,
        end_on_error: bool = False,
    ) -> None:
        self.port, self.body = port, body
        self.retry_closed, self.end_on_error = retry_closed, end_on_error
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _run(self) -> None:
        conn = self._connect()
        while not self._stop.is_set():
            for attempt in range(2 if self.retry_closed else 1):
                try:
                    conn.request("POST", CHAT, self.body, {"content-type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    self.statuses.append(r.status)
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    if self.end_on_error:
                        return
                    conn = self._connect()
                    if attempt or not self.retry_closed:
                        self.statuses.append(0)
        conn.close()

    def wait_for(self, count: int) -> None:
        _poll(lambda: len(self.statuses), lambda k: k >= count, timeout=30)

    def stop(self) -> list[int]:
        self._stop.set()
        for t in self._threads:
            t.join(20)
        return self.statuses


def _metric_sum(text: bytes, name: str) -> float:
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_count_every_request_once(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    gw = _start(tmp_path, mock_llm)
    stop_all.append(gw)
    admin = gw.admin_port
    assert admin is not None
    n_conn, per = 40, 10  # 40 connections: both workers' sockets get some
    statuses = _requests(gw.port or 0, n_conn, per)
    n = n_conn * per
    assert statuses.count(200) == n, {s: statuses.count(s) for s in set(statuses)}

    # Workers report with their heartbeat (every 0.5 s): poll until the counts arrive,
    # then they must be exactly n, not more.
    metrics = _poll(
        lambda: _get(admin, "/metrics"),
        lambda m: _metric_sum(m, "fastproxy_requests_total") >= n,
    )
    assert _metric_sum(metrics, "fastproxy_requests_total") == n
    assert _metric_sum(metrics, "fastproxy_gen_ai_client_operation_duration_seconds_count") == n
    assert _metric_sum(metrics, "fastproxy_client_connections_accepted_total") == n_conn
    stats = _poll(
        lambda: _get(admin, "/v1/usage/stats"), lambda s: s["request_count"] >= n, timeout=20
    )
    assert stats["request_count"] == n
    diag = _poll(
        lambda: _get(admin, "/v1/diagnostics"),
        lambda d: sum(w["connections_total"] for w in d["workers"]) >= n_conn,
    )
    workers = diag["workers"]
    assert [w["index"] for w in workers] == [0, 1] and all(w["up"] for w in workers)
    assert sum(w["connections_total"] for w in workers) == n_conn
    assert all(w["connections_total"] > 0 for w in workers), workers  # both served
    # The mock saw exactly n chat requests: none was sent twice.
    chats = [r for r in mock_llm.stats.requests if r.path == CHAT]
    assert len(chats) == n
    assert gw.stop() == 0


def test_a_killed_worker_is_replaced_and_clients_lose_only_its_requests(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    gw = _start(tmp_path, mock_llm)
    stop_all.append(gw)
    admin, port = gw.admin_port or 0, gw.port or 0
    before = _get(admin, "/v1/diagnostics")["workers"]
    victim = before[0]["pid"]
    conns = 8
    load = Load(port, conns)
    results = load.statuses
    load.wait_for(200)
    os.kill(victim, signal.SIGKILL)
    diag = _poll(
        lambda: _get(admin, "/v1/diagnostics")["workers"],
        lambda ws: ws[0]["restarts"] == 1 and ws[0]["up"],
    )
    assert diag[0]["pid"] != victim and diag[0]["restarts"] == 1
    mark = len(results)
    load.wait_for(mark + 200)
    load.stop()
    # A client connection to the killed worker loses at most its one request in flight;
    # after the replacement every request is answered.
    assert results.count(0) <= conns, results.count(0)
    assert set(results[mark:]) <= {200, 0} and results[mark + 50 :].count(0) == 0
    assert any(f"(pid {victim}) exited" in line for line in gw.lines)
    assert gw.stop() == 0


def test_a_stuck_worker_is_restarted(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    # WATCHDOG_USEC=1 s: a worker silent for 2 s is taken for stuck.
    gw = _start(tmp_path, mock_llm, WATCHDOG_USEC="1000000")
    stop_all.append(gw)
    admin = gw.admin_port or 0
    victim = _get(admin, "/v1/diagnostics")["workers"][1]["pid"]
    os.kill(victim, signal.SIGSTOP)  # its loop stops: no heartbeat, no requests
    diag = _poll(
        lambda: _get(admin, "/v1/diagnostics")["workers"],
        lambda ws: ws[1]["restarts"] == 1 and ws[1]["up"],
        timeout=20,
    )
    assert diag[1]["pid"] != victim
    assert any(f"(pid {victim}) sent nothing for" in line for line in gw.lines), gw.lines
    statuses = _requests(gw.port or 0, 10, 5)
    assert statuses.count(200) == 50
    assert gw.stop() == 0


def test_notify_ready_after_every_worker_then_stopping(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        tree: dict[str, Any] = {
            "port": 0,
            "admin": {"port": 0},
            "workers": 2,
            "backends": {"openai": backend_for(mock_llm)},
            "usage_tracking": {"enabled": False},
        }
        cfg = tmp_path / "config.yaml"
        cfg.write_text(yaml.safe_dump(tree))
        gw = GatewayProcess(
            ["--config", str(cfg)],
            cwd=str(tmp_path),
            env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"},
        )
        stop_all.append(gw)
        heard = recv_until(sock, "READY=1", 30)
        ready = next(m for m in heard if "READY=1" in m)
        assert "2/2 workers up" in ready
        # READY means every worker listens: a burst of new connections all succeed.
        port = gw.wait_ready()
        assert _requests(port, 20, 1).count(200) == 20
        status = recv_until(sock, "STATUS=2/2 workers up", 30)
        assert any("WATCHDOG=1" in m for m in status + recv_until(sock, "WATCHDOG=1"))
        gw.proc.send_signal(signal.SIGTERM)
        recv_until(sock, "STOPPING=1")
        assert gw.wait() == 0


def test_sigterm_under_load_loses_no_usage_record(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    gw = _start(tmp_path, mock_llm)
    stop_all.append(gw)
    port = gw.port or 0
    # Draining closes the connections: each load thread ends at its first failure.
    load = Load(port, 8, end_on_error=True)
    load.wait_for(300)
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.wait(60) == 0
    answered = [s for s in load.stop() if s == 200]
    with sqlite3.connect(tmp_path / "usage.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM usage_requests").fetchone()[0]
    assert rows == len(answered), (rows, len(answered))


def test_sighup_with_workers_adds_a_backend_under_load_without_a_failure(
    tmp_path: Path, mock_factory: Callable[..., MockLLMServer], stop_all: list[GatewayProcess]
) -> None:
    a = mock_factory(models=["model-a"])
    b = mock_factory(models=["model-b"])
    tree: dict[str, Any] = {
        "port": 0,
        "admin": {"port": 0},
        "workers": 2,
        "backends": {"a": backend_for(a)},
        "usage_tracking": {"enabled": False},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    gw = GatewayProcess(["--config", str(cfg)], cwd=str(tmp_path))
    stop_all.append(gw)
    port = gw.wait_ready()
    body_a = orjson.dumps({"model": "model-a", "messages": [{"role": "user", "content": "x"}]})
    load = Load(port, 6, body_a)
    results = load.statuses
    load.wait_for(200)
    tree["backends"]["b"] = backend_for(b)
    cfg.write_text(yaml.safe_dump(tree))
    gw.proc.send_signal(signal.SIGHUP)
    _poll(lambda: any("reload: config re-read" in x for x in gw.lines), bool)
    load.wait_for(len(results) + 200)
    # New connections land on either worker: every one of them routes model-b to b.
    body_b = orjson.dumps({"model": "model-b", "messages": [{"role": "user", "content": "x"}]})
    served_by = set()
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", CHAT, body_b, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        served_by.add(r.getheader("x-fastproxy-backend"))
        conn.close()
    load.stop()
    assert served_by == {"b"}
    assert set(results) == {200}, {s: results.count(s) for s in set(results)}
    assert gw.stop() == 0


def test_activity_and_top_show_the_streams_of_every_worker(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    import subprocess
    import sys

    gw = _start(tmp_path, mock_llm, {"enable_activity_tracking": True})
    stop_all.append(gw)
    admin, port = gw.admin_port or 0, gw.port or 0
    k = 12  # slow streams on new connections: the kernel spreads them over both workers
    done = threading.Event()
    bodies: list[bytes] = []

    def stream() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = orjson.dumps(
            {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        )
        conn.request(
            "POST",
            CHAT,
            body,
            {"content-type": "application/json", "x-mock-tokens": "40", "x-mock-interval-ms": "50"},
        )
        r = conn.getresponse()
        bodies.append(r.read())
        conn.close()
        if len(bodies) == k:
            done.set()

    threads = [threading.Thread(target=stream) for _ in range(k)]
    for t in threads:
        t.start()
    diag = _poll(
        lambda: _get(admin, "/v1/diagnostics"),
        lambda d: d["global_activity"]["total_active_connections"] == k,
    )
    conns = diag["instances"][0]["activity"]["connections"]
    assert len(conns) == k and len({c["connection_id"] for c in conns}) == k
    assert all(w["in_flight"] > 0 for w in diag["workers"]), diag["workers"]  # both serve
    top = subprocess.run(
        [sys.executable, "-m", "fastproxy", "top", "--once", "--url", f"http://127.0.0.1:{admin}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "250"},  # wide enough that no id is cut short
    )
    assert top.returncode == 0, top.stderr
    assert f"Active Connections: {k} " in top.stdout, top.stdout
    rows = [line for line in top.stdout.splitlines() if "│ streaming │" in line]
    assert len(rows) == k, top.stdout
    assert done.wait(30)
    for t in threads:
        t.join(10)
    assert all(b.rstrip().endswith(b"data: [DONE]") for b in bodies)
    # Finished streams leave the live view; their bytes stay in the lifetime totals.
    act = _poll(
        lambda: _get(admin, "/v1/diagnostics"),
        lambda d: d["global_activity"]["total_active_connections"] == 0,
    )["instances"][0]["activity"]
    assert act["lifetime_bytes_tx"] >= sum(len(b) for b in bodies) * 0.5
    assert gw.stop() == 0


def test_sigusr2_replaces_every_worker_under_load(
    tmp_path: Path, mock_llm: MockLLMServer, stop_all: list[GatewayProcess]
) -> None:
    gw = _start(tmp_path, mock_llm)
    stop_all.append(gw)
    admin, port = gw.admin_port or 0, gw.port or 0
    before = {w["pid"] for w in _get(admin, "/v1/diagnostics")["workers"]}
    # Like the SDKs, the load retries once a request on a keep-alive connection the
    # server closed before answering (a draining worker closes its idle ones).
    load = Load(port, 6, retry_closed=True)
    statuses = load.statuses
    load.wait_for(200)
    gw.proc.send_signal(signal.SIGUSR2)
    _poll(lambda: any("rolling restart done" in x for x in gw.lines), bool, timeout=30)
    after = _poll(
        lambda: _get(admin, "/v1/diagnostics")["workers"],
        lambda ws: all(w["up"] for w in ws),
    )
    load.wait_for(len(statuses) + 200)
    load.stop()
    assert {w["pid"] for w in after}.isdisjoint(before)  # every worker is a new process
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # Totals carried across the replacement: every answered request is counted.
    metrics = _poll(
        lambda: _get(admin, "/metrics"),
        lambda m: _metric_sum(m, "fastproxy_requests_total") >= len(statuses),
    )
    assert _metric_sum(metrics, "fastproxy_requests_total") == len(statuses)
    assert gw.stop() == 0
