"""The load benchmark's generated gateway config is one the gateway's loader accepts.

``bench.load`` measures each monitoring variant with a config made by
``processes.fastproxy_config``; a key the loader refuses would make every fastproxy
target fail to start (or be skipped as "rejected"). Wire capture is not built yet, so its
section is refused whatever it says: it must appear only in the config of the variant
that asks for capture, and that variant is then reported as rejected, not run.

The default backend of the benchmark is nginx serving canned answers
(bench/load/backend.py): its config renders, and (when nginx is installed) a gateway in
front of it relays the canned JSON and the 200-event stream.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.load import backend
from bench.load.backend import start_nginx_backend
from bench.load.processes import fastproxy_config, nginx_binary, start_fastproxy
from bench.load.report import derive
from bench.load.scenarios import JSON_BODY, SSE_BODY, STREAM_HEADER, build
from fastproxy.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load(tree: dict[str, object], tmp_path: Path) -> object:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_config(None, config_file=str(path), env={}, use_files=False).config


@pytest.mark.parametrize(
    "flags", [{}, {"usage": True}, {"activity": True}, {"usage": True, "activity": True}]
)
def test_every_built_variant_loads(tmp_path: Path, flags: dict[str, bool]) -> None:
    tree = fastproxy_config(9, tmp_path, **flags)
    assert "wire_capture" not in tree
    config = _load(tree, tmp_path)
    assert config.usage_tracking.enabled is bool(flags.get("usage"))  # type: ignore[attr-defined]
    assert config.enable_activity_tracking is bool(flags.get("activity"))  # type: ignore[attr-defined]


def test_the_capture_variant_loads(tmp_path: Path) -> None:
    tree = fastproxy_config(9, tmp_path, capture=True)
    config = _load(tree, tmp_path)
    assert config.wire_capture.enabled is True  # type: ignore[attr-defined]
    assert str(tmp_path) in config.wire_capture.output_dir  # type: ignore[attr-defined]


def test_the_load_benchmark_cli_starts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


# --------------------------------------------------------------------------- nginx backend


def test_the_canned_answers_have_the_openai_shape() -> None:
    doc = json.loads(backend.chat_json())
    assert doc["object"] == "chat.completion"
    assert doc["usage"]["completion_tokens"] == 16
    assert 500 <= len(backend.chat_json()) <= 700  # like the mock's 613-byte answer
    events = backend.chat_sse().split("\n\n")
    assert events[-1] == ""
    events = events[:-1]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert len(content) == backend.STREAM_EVENTS + 1  # the role chunk carries content ""
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 200


def test_the_nginx_backend_config_renders(tmp_path: Path) -> None:
    conf = backend.render_conf(tmp_path / "conf", tmp_path / "canned", 18080)
    assert "{{" not in conf
    assert "listen 127.0.0.1:18080" in conf
    assert "worker_processes 1;" in conf and "access_log off;" in conf
    assert "keepalive_requests 1000000;" in conf
    assert f"alias {tmp_path / 'canned'}/;" in conf
    # The canned JSON sits in the config as one single-quoted nginx string.
    assert "return 200 '" + backend.chat_json() + "';" in conf
    assert "$http_x_bench_stream" in conf
    assert STREAM_HEADER.split(":")[0] == "x-bench-stream"


def test_paced_scenarios_keep_the_mock() -> None:
    by_key = {s.key: s for s in build(["a", "b", "c", "d"], 1, 1.0, quick=True)}
    assert {k for k, s in by_key.items() if s.paced} == {"bp", "c"}
    for key in ("b", "bp", "c", "d-b"):
        assert STREAM_HEADER in by_key[key].workload.headers


def _post(port: int, headers: dict[str, str], body: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.mark.skipif(nginx_binary(install=False) is None, reason="nginx is not installed")
def test_the_nginx_backend_answers_through_fastproxy(tmp_path: Path) -> None:
    binary = nginx_binary(install=False)
    assert binary is not None
    nginx = start_nginx_backend(binary, tmp_path, None)
    gateway = None
    try:
        json_headers = {"content-type": "application/json"}
        # Straight from the backend: the canned answers, JSON and stream.
        status, _, body = _post(nginx.port, json_headers, JSON_BODY)
        assert status == 200 and body == backend.chat_json().encode()
        gateway = start_fastproxy(
            "fastproxy", fastproxy_config(nginx.port, tmp_path), tmp_path, None
        )
        status, head, body = _post(gateway.port, json_headers, JSON_BODY)
        assert status == 200, body[:300]
        doc = json.loads(body)
        assert doc["usage"]["total_tokens"] == 23
        assert (
            doc["choices"][0]["message"]["content"]
            == json.loads(backend.chat_json())["choices"][0]["message"]["content"]
        )
        name, value = (p.strip() for p in STREAM_HEADER.split(":", 1))
        status, head, body = _post(gateway.port, {**json_headers, name: value}, SSE_BODY)
        assert status == 200, body[:300]
        assert head["content-type"].startswith("text/event-stream")
        events = body.decode().split("\n\n")[:-1]
        # role, 200 content chunks, finish, [DONE]: the gateway asked the backend for the
        # usage chunk (stream_options) and keeps it from a client that did not ask.
        assert len(events) == backend.STREAM_EVENTS + 3
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == (
            "stop"
        )
        # Asked for, the usage chunk reaches the client.
        asked = json.dumps({**json.loads(SSE_BODY), "stream_options": {"include_usage": True}})
        status, head, body = _post(gateway.port, {**json_headers, name: value}, asked)
        events = body.decode().split("\n\n")[:-1]
        assert status == 200 and len(events) == backend.STREAM_EVENTS + 4
        assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 200
    finally:
        if gateway is not None:
            gateway.stop()
        nginx.stop()
    assert not Path(nginx.info["canned_dir"]).exists()


def test_ratios_carry_their_spread_over_rounds() -> None:
    def target(rps: list[float], cpu: list[float]) -> dict[str, object]:
        rounds = [
            {"rps": r, "cpu_s_per_1k_req": c, "errors": {}} for r, c in zip(rps, cpu, strict=True)
        ]
        return {"rounds": rounds, "rps": sorted(rps)[len(rps) // 2]}

    sc = {
        "key": "a64",
        "targets": {
            "nginx": target([100, 100, 100], [1, 1, 1]),
            "fastproxy": target([30, 40, 35], [3, 2, 4]),
        },
    }
    d = derive(sc)["fastproxy"]
    assert d["throughput_vs_nginx"] == pytest.approx(0.35)
    assert d["throughput_vs_nginx_range"] == pytest.approx([0.30, 0.40])
    assert d["cpu_per_req_vs_nginx_range"] == [2, 4]
