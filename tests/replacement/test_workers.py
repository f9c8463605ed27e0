"""Replacement with ``workers: 2``: ``fastproxy run`` as a process (a primary and two
workers on one port), two mock LLM servers on 127.0.0.1, every request on a new
connection so the kernel spreads a session's turns over both workers.

Which worker served a request is read from the access log: worker ``i`` of ``n``
numbers its requests ``i+1, i+1+n, ...`` (docs/workers.md), so with two workers the
``rid`` parity names the worker. Requests are sent one at a time and each waits for the
previous one's access line, so the k-th line is the k-th request's.
"""

from __future__ import annotations

import http.client
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

from .support import OPENAI_FROM, OPENAI_TO, check_shape, models_seen, tree

CHAT = "/v1/chat/completions"


@pytest.fixture
def procs() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for gw in started:
        if gw.proc.poll() is None:
            gw.kill()


def write_config(path: Path, orig: MockLLMServer, target: MockLLMServer, **kw: Any) -> None:
    cfg = tree(orig, target, **kw)
    cfg.update(
        port=0,
        admin={"port": 0},
        workers=2,
        access_log=True,
        usage_tracking={
            "persistence_path": str(path.parent / "usage.db"),
            "flush_interval_seconds": 0.05,
        },
    )
    path.write_text(yaml.safe_dump(cfg))


def turn(port: int, session: str, stream: bool) -> tuple[str, str | None]:
    """One chat turn on a new connection: (backend that served it, replaced-from)."""
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            CHAT,
            orjson.dumps(body),
            {"content-type": "application/json", "x-session-id": session, "x-mock-tokens": "3"},
        )
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, data
        if stream:
            assert data.rstrip().endswith(b"data: [DONE]"), data[-200:]
        return r.getheader("x-fastproxy-backend") or "", r.getheader("x-fastproxy-replaced-from")
    finally:
        conn.close()


class Served:
    """Which worker served each request, in order, from the access log."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.workers: list[int] = []

    def lines(self) -> list[str]:
        return [line for line in self.gw.lines if "logger=fastproxy.access" in line]

    def turn(self, port: int, session: str, stream: bool) -> str:
        """One turn; the backend that served it. Records the worker (rid parity)."""
        backend, replaced_from = turn(port, session, stream)
        k = len(self.workers)
        line = wait_until(
            lambda: (found := self.lines()) and len(found) > k and found[k],
            what=f"access line {k}",
        )
        m = re.search(r"rid=(\d+)", line)
        assert m is not None, line
        self.workers.append(int(m.group(1)) % 2)
        if backend == "openai.2":
            assert replaced_from == OPENAI_FROM
        else:
            assert replaced_from is None
        return backend


def get(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        return orjson.loads(body)
    finally:
        conn.close()


def all_records(admin_port: int, count: int) -> list[dict[str, Any]]:
    def page() -> dict[str, Any]:
        return get(admin_port, "/v1/usage/recent?limit=1000")  # type: ignore[no-any-return]

    got = wait_until(lambda: (p := page())["total"] >= count and p, what=f"{count} records")
    assert got["total"] == count
    return list(reversed(got["records"]))


def test_stickiness_across_workers_and_each_decision_counted_once(
    tmp_path: Path,
    mock_factory: Callable[..., MockLLMServer],
    procs: list[GatewayProcess],
) -> None:
    orig, target = mock_factory(), mock_factory()
    cfg = tmp_path / "config.yaml"
    write_config(cfg, orig, target, probability=1.0, turn_count=3)
    gw = GatewayProcess(["--config", str(cfg)], cwd=str(tmp_path))
    procs.append(gw)
    port = gw.wait_ready()
    assert gw.admin_port is not None
    admin = gw.admin_port

    # Part 1, probability 1, turn_count 3: eight sessions of six turns, each turn on a
    # new connection. One policy for both workers makes exactly two activations per
    # session (turns 1 and 4), 16 in all; a policy per worker would activate again
    # whenever a session's turn reached the other worker, and the metrics would count
    # the workers' decisions separately.
    served = Served(gw)
    sessions = [f"w-sess-{i}" for i in range(8)]
    workers_of: dict[str, set[int]] = {s: set() for s in sessions}
    for n in range(6):
        for s in sessions:
            assert served.turn(port, s, stream=n % 2 == 1) == "openai.2"
            workers_of[s].add(served.workers[-1])
    doc = get(admin, "/v1/replacement/metrics")
    check_shape(doc)
    assert doc["activation_metrics"]["total_activations"] == 16
    assert doc["activation_metrics"]["unique_sessions_activated"] == 8
    assert doc["probability_check_metrics"]["total_probability_checks"] == 16
    assert doc["turn_count_metrics"]["total_turns_completed"] == 48
    assert doc["turn_count_metrics"]["turn_count_distribution"] == {"3": 16}
    assert doc["effectiveness"][0]["replaced_requests"] == 48
    recs = all_records(admin, 48)
    assert all(r["replacement"] == {"from": OPENAI_FROM, "to": OPENAI_TO} for r in recs)
    mixed = [s for s, ws in workers_of.items() if ws == {0, 1}]
    # Each session's six turns landed on one worker with probability 1/32; all eight
    # sessions so, about once in 10**12 runs.
    assert mixed, workers_of
    assert len(models_seen(target)) == 48 and models_seen(orig) == []
    # The metrics' effectiveness counts each stored record once.
    wait_until(
        lambda: (
            get(admin, "/v1/replacement/metrics")["effectiveness"][0]["recorded_requests"] == 48
        ),
        what="effectiveness over the 48 records",
    )

    # Part 2, the return made visible across workers: new sessions start a replacement
    # (turn 1 of 3), then a reload (SIGHUP) sets the probability to 0. Turns 2 and 3 stay
    # on the target whichever worker takes them, turns 4 and 5 go back to the original
    # and are not replaced again.
    late = [f"w-late-{i}" for i in range(4)]
    for s in late:
        assert served.turn(port, s, stream=False) == "openai.2"
    write_config(cfg, orig, target, probability=0.0, turn_count=3)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any("reload: config re-read" in line for line in gw.lines),
        timeout=30,
        what="the reload",
    )
    start = len(served.workers)
    backends = {s: [served.turn(port, s, stream=True) for _ in range(4)] for s in late}
    assert backends == {s: ["openai.2", "openai.2", "openai.1", "openai.1"] for s in late}
    # The sticky turns after the reload reached both workers.
    assert set(served.workers[start:]) == {0, 1}, served.workers[start:]
    final = get(admin, "/v1/replacement/metrics")
    assert final["activation_metrics"]["total_activations"] == 16 + 4
    assert final["turn_count_metrics"]["turn_count_distribution"] == {"3": 16 + 4}
    recs = all_records(admin, 48 + 4 * 5)
    assert sum(r["replacement"] is not None for r in recs) == 48 + 4 * 3
