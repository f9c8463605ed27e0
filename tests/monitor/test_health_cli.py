"""``fastproxy health``: the table, --json, exit codes, an unreachable API."""

from __future__ import annotations

import json
import socket

from fastproxy.cli import build_parser
from fastproxy.cli_health import run
from tests.conftest import backend_for


def _ns(*args: str):
    return build_parser().parse_args(["health", *args])


def test_table_and_exit_code_ok(gateway_factory, mock_llm, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that no cell is folded
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)}})
    assert run(_ns("--url", gw.url)) == 0
    out = capsys.readouterr().out
    assert "fastproxy health" in out and "openai.1" in out
    assert gw.plane.backends["openai.1"].normalized_url in out
    assert "closed" in out and "healthy" in out


def test_json_and_degraded_exit_code(gateway_factory, mock_llm, server_loop, capsys) -> None:
    server_loop.call(lambda: mock_llm.set_behaviour(path_prefix="/v1/models", status=401))
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)}})
    assert run(_ns("--url", gw.url + "/internal/health", "--json")) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "degraded"
    assert doc["endpoint_health"]["endpoints"][0]["condition"] == "misconfigured"


def test_unreachable_api(capsys) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert run(_ns("--url", f"http://127.0.0.1:{port}", "--timeout", "2")) == 1
    assert "cannot reach the gateway" in capsys.readouterr().err
