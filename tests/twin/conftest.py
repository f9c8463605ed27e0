"""``twin``: a real ``fastproxy run`` subprocess per _speedups implementation.

The gateway runs as its own process so that FASTPROXY_NO_EXTENSIONS (read once, when
``fastproxy._speedups`` is first imported) picks the implementation for the whole data
plane, exactly as an operator would set it. The test process's own setting does not
matter: `GatewayProcess` drops every FASTPROXY_* variable and the fixture sets only the
one it means. Each gateway proves which implementation it runs through
``fastproxy_build_info{speedups=...}`` on ``/metrics`` before any test uses it.

One gateway per implementation serves every test of the session (a start costs about a
second, most of it loading the exact tokenizer); tests keep apart by sending their own
``x-session-id`` and reading only that session's usage records.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fastproxy.mockllm import MockLLMServer
from tests.speedups.helpers import IMPLS
from tests.support.loop_thread import LoopThread
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

_BUILD_INFO = re.compile(r'^fastproxy_build_info\{[^}]*speedups="([a-z]+)"[^}]*\} 1$', re.M)


@dataclass
class TwinGateway:
    """A running gateway subprocess and how to reach its two listeners."""

    impl: str
    proc: GatewayProcess
    url: str  # data plane, http://127.0.0.1:PORT
    admin: str  # admin listener, http://127.0.0.1:PORT
    db: Path  # usage_tracking.persistence_path
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def speedups(self) -> str:
        """The implementation the process reports on /metrics (fastproxy_build_info)."""
        text = self._http.get(self.admin + "/metrics").raise_for_status().text
        found = _BUILD_INFO.findall(text)
        assert len(found) == 1, f"no single fastproxy_build_info sample in /metrics:\n{text}"
        return str(found[0])

    def get_json(self, path: str, **params: Any) -> Any:
        return self._http.get(self.admin + path, params=params).raise_for_status().json()

    def records(self, session: str, count: int) -> list[dict[str, Any]]:
        """The session's usage records, oldest first, once exactly ``count`` are stored.

        The store writes in batches (flush_interval_seconds), so the records appear some
        milliseconds after the response: poll with a deadline, then insist on the count
        (a record too many is as wrong as one missing).
        """
        wait_until(
            lambda: self.get_json("/v1/usage/recent", session_id=session)["total"] >= count,
            timeout=15,
            what=f"{count} usage record(s) of session {session}",
        )
        page = self.get_json("/v1/usage/recent", session_id=session)
        assert page["total"] == count, page
        return list(reversed(page["records"]))  # /recent is newest first

    def backend_activity(self, backend: str) -> dict[str, Any]:
        """The backend's activity block of /v1/diagnostics (bytes counted in CounterBlocks)."""
        diag = self.get_json("/v1/diagnostics")
        (inst,) = [i for i in diag["instances"] if i["name"] == backend]
        return dict(inst["activity"])

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="session")
def mock() -> Iterator[MockLLMServer]:
    """The real mock LLM on 127.0.0.1, in this process; both gateways use it.

    Tests steer it per request (x-mock-* headers) and never change its persistent
    behaviour, so sharing it cannot leak one test's steering into another.
    """
    lt = LoopThread().start()
    server = MockLLMServer(host="127.0.0.1", port=0)
    lt.run(server.start())
    yield server
    lt.run(server.close())
    lt.stop()
    assert not lt.errors, f"unhandled exceptions on the mock's loop: {lt.errors}"


@pytest.fixture(scope="session", params=IMPLS)
def twin(
    request: pytest.FixtureRequest,
    mock: MockLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwinGateway]:
    impl: str = request.param
    state = tmp_path_factory.mktemp(f"twin-{impl}")
    db = state / "usage.db"
    config = state / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 0,
                "admin": {"port": 0},
                "state_dir": str(state),
                "log_level": "INFO",
                "enable_activity_tracking": True,
                "backends": {
                    "openai.1": {"type": "openai", "api_url": mock.url, "api_key": "sk-o"},
                    "anthropic.1": {"type": "anthropic", "api_url": mock.url, "api_key": "sk-a"},
                },
                "default_backend": "openai.1",
                # Small batches: a record is readable a few ms after its response.
                "usage_tracking": {"persistence_path": str(db), "flush_interval_seconds": 0.05},
            }
        )
    )
    # "python" forces the twin; "cython" leaves the variable unset (GatewayProcess drops
    # any inherited FASTPROXY_*), so the process takes the default: the compiled core.
    env = {"FASTPROXY_NO_EXTENSIONS": "1"} if impl == "python" else {}
    proc = GatewayProcess(["--config", str(config)], env=env)
    gw: TwinGateway | None = None
    try:
        port = proc.wait_ready()
        wait_until(lambda: proc.admin_port, what="the admin listener's port in the log")
        gw = TwinGateway(
            impl, proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proc.admin_port}", db
        )
        assert gw.speedups() == impl, proc.output()
        yield gw
    finally:
        if gw is not None:
            gw.close()
        code = proc.stop()
    # A clean stop is part of the contract on both builds (records flushed, exit 0).
    assert code == 0, proc.output()


@pytest.fixture
def session(request: pytest.FixtureRequest, twin: TwinGateway) -> str:
    """A session id of this test alone: its usage records are the ones with this id."""
    return f"twin-{twin.impl}-{request.node.originalname}-{uuid.uuid4().hex[:8]}"


def export_from_file(db: Path, session: str) -> list[dict[str, Any]]:
    """The session's records read from the SQLite file itself, by `fastproxy usage export
    --db` in a fresh process: what is on disk, not what the gateway holds in memory."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastproxy",
            "usage",
            "export",
            "--db",
            str(db),
            "--session-id",
            session,
            "--format",
            "ndjson",
            "--out",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
