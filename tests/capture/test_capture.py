"""Wire capture end to end: real gateway, real mock backends, real files read with cbor2."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.capture.support import (
    abort_a_stream,
    all_events,
    capture_files,
    data_of,
    read_file,
    stream_ended,
)
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

CLIENT_KEY = "client-key-PLANTED-7f3a9c2e41"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MSG = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}

Factory = Callable[..., RunningGateway]


def capturing(
    gateway_factory: Factory, tmp_path: Path, backends: dict[str, Any], **extra: Any
) -> tuple[RunningGateway, Path]:
    out = tmp_path / "captures"
    tree: dict[str, Any] = {
        "backends": backends,
        "auth": {"api_keys": [CLIENT_KEY]},
        "wire_capture": {"enabled": True, "output_dir": str(out), **extra.pop("capture", {})},
        **extra,
    }
    return gateway_factory(tree), out


def meta(e: dict[str, Any]) -> dict[str, Any]:
    return e.get("meta", {})


def check_order(directory: Path) -> None:
    """In every file: seq strictly increasing, ts never going back."""
    for path in capture_files(directory):
        _, events = read_file(path)
        seqs = [e["seq"] for e in events]
        stamps = [e["ts"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), path
        assert stamps == sorted(stamps), path


def by_dir(events: list[dict[str, Any]], d: int) -> bytes:
    return b"".join(data_of(e) for e in events if e["dir"] == d)


def test_openai_stream_all_four_directions(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    gw, out = capturing(gateway_factory, tmp_path, {"openai.1": backend_for(mock_llm)})
    health = httpx.get(gw.url + "/internal/health", headers=AUTH, timeout=10).json()
    assert health["wire_capture"]["state"] == "on"
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers=AUTH,
        timeout=10,
    ) as r:
        body = r.read()
    assert body.rstrip().endswith(b"data: [DONE]")
    events = wait_until(lambda: stream_ended(out), what="the stream's end marker")
    assert {e["dir"] for e in events} == {0, 1, 2, 3}
    rid = meta(events[0])["rid"]
    assert all(meta(e)["rid"] == rid for e in events)
    assert events[0]["dir"] == 0
    client_req = by_dir(events, 0)
    assert client_req.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b'"stream":true' in client_req
    upstream = by_dir(events, 2)
    assert upstream.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"include_usage" in upstream  # what the gateway really sent, not the client's
    assert [meta(e)["be"] for e in events if e["dir"] == 2] == ["openai.1"]
    heads = [e for e in events if e["dir"] == 3 and "sc" in meta(e)]
    assert [meta(e)["sc"] for e in heads] == [200]
    assert b"data: [DONE]" in by_dir(events, 3)
    assert b"data: [DONE]" in by_dir(events, 1)
    starts = [e for e in events if meta(e).get("ss")]
    ends = [e for e in events if meta(e).get("se")]
    assert len(starts) == 1 and len(ends) == 1
    assert starts[0]["dir"] == 1 and data_of(starts[0]) == b""
    assert meta(ends[0])["sc"] == 200 and meta(ends[0])["oc"] == "ok"
    assert starts[0]["seq"] < ends[0]["seq"] == max(e["seq"] for e in events)
    check_order(out)


def test_anthropic_stream(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    gw, out = capturing(
        gateway_factory, tmp_path, {"anthropic.1": backend_for(mock_llm, "anthropic")}
    )
    with httpx.stream(
        "POST", gw.url + "/v1/messages", json={**MSG, "stream": True}, headers=AUTH, timeout=10
    ) as r:
        r.read()
    events = wait_until(lambda: stream_ended(out), what="the stream's end marker")
    assert {e["dir"] for e in events} == {0, 1, 2, 3}
    assert b"event: message_stop" in by_dir(events, 3)
    assert b"event: message_stop" in by_dir(events, 1)
    assert by_dir(events, 2).startswith(b"POST /v1/messages HTTP/1.1\r\n")
    assert [meta(e)["be"] for e in events if e["dir"] == 2] == ["anthropic.1"]
    check_order(out)


def test_json_request(gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path) -> None:
    gw, out = capturing(gateway_factory, tmp_path, {"openai.1": backend_for(mock_llm)})
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
    assert r.status_code == 200

    def complete() -> list[dict[str, Any]] | None:
        events = all_events(out)
        return events if {e["dir"] for e in events} == {0, 1, 2, 3} else None

    events = wait_until(complete, what="four directions")
    assert len({meta(e)["rid"] for e in events}) == 1
    assert not any(meta(e).get("ss") or meta(e).get("se") for e in events)
    answer = by_dir(events, 1)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(r.content)
    assert orjson.loads(by_dir(events, 3)[by_dir(events, 3).index(b"\r\n\r\n") + 4 :]) == r.json()
    check_order(out)


def test_failover_shows_both_attempts(
    gateway_factory: Factory, mock_factory: Callable[..., MockLLMServer], tmp_path: Path
) -> None:
    a, b = mock_factory(), mock_factory()
    gw, out = capturing(
        gateway_factory,
        tmp_path,
        {
            "openai.1": backend_for(a, models=["gpt-4o"]),
            "openai.2": backend_for(b, models=["gpt-4o-mini"]),
        },
        failover_routes={"gpt-4o": ["openai.2:gpt-4o-mini"]},
    )
    a.set_behaviour(status=503)
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=10)
    assert r.status_code == 200 and r.headers["x-fastproxy-backend"] == "openai.2"

    def answered() -> list[dict[str, Any]] | None:
        events = all_events(out)
        return events if any(e["dir"] == 1 for e in events) else None

    events = wait_until(answered, what="the answer")
    legs = [(e["dir"], meta(e).get("be"), meta(e).get("sc")) for e in events if e["dir"] in (2, 3)]
    assert legs[:2] == [(2, "openai.1", None), (3, "openai.1", 503)]
    assert (2, "openai.2", None) in legs and (3, "openai.2", 200) in legs
    models = [meta(e)["mod"] for e in events if e["dir"] == 2]
    assert models == ["gpt-4o", "gpt-4o-mini"]
    check_order(out)


def test_client_abort_mid_stream(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    gw, out = capturing(gateway_factory, tmp_path, {"openai.1": backend_for(mock_llm)})
    body = orjson.dumps({**CHAT, "stream": True})
    abort_a_stream(gw.port, body, CLIENT_KEY)
    events = wait_until(lambda: stream_ended(out), what="the stream's end marker")
    end = next(e for e in events if meta(e).get("se"))
    assert meta(end)["oc"] == "client_aborted"
    assert b"[DONE]" not in by_dir(events, 3) + by_dir(events, 1)
    assert {e["dir"] for e in events} == {0, 1, 2, 3}
    check_order(out)


def test_no_key_reaches_a_file(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    env_key = "sk-ant-envbackendPLANTED0123456789"
    os.environ["CAPTURE_TEST_BACKEND_KEY"] = env_key
    try:
        gw, out = capturing(
            gateway_factory,
            tmp_path,
            {
                "openai.1": backend_for(mock_llm),
                "anthropic.1": {
                    "type": "anthropic",
                    "api_url": mock_llm.url,
                    "api_key_env": "CAPTURE_TEST_BACKEND_KEY",
                },
            },
            capture={"redact_headers": ["x-custom-secret"]},
        )
        gw.gateway._env["CAPTURE_TEST_BACKEND_KEY"] = env_key
    finally:
        del os.environ["CAPTURE_TEST_BACKEND_KEY"]
    planted = [
        CLIENT_KEY,
        "sk-backend-openai-secret",
        env_key,
        "sk-proj-clientbodyPLANTED987654321",
        "cookie-value-PLANTED",
        "custom-header-PLANTED",
        "json-field-PLANTED-secret",
    ]
    prompt = {
        **CHAT,
        "api_key": "json-field-PLANTED-secret",
        "messages": [{"role": "user", "content": f"my key is {planted[3]} and {CLIENT_KEY}"}],
    }
    headers = {**AUTH, "cookie": f"s={planted[4]}", "x-custom-secret": planted[5]}
    for stream in (False, True):
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={**prompt, "stream": stream},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 200
    r = httpx.post(
        gw.url + "/v1/messages",
        json={**MSG, "stream": True},
        headers={"x-api-key": CLIENT_KEY},
        timeout=10,
    )
    assert r.status_code == 200

    def three_answers() -> list[dict[str, Any]] | None:
        events = all_events(out)
        return events if len({meta(e)["rid"] for e in events if e["dir"] == 3}) == 3 else None

    events = wait_until(three_answers, what="three exchanges")
    wait_until(lambda: sum(1 for e in all_events(out) if meta(e).get("se")) == 2)
    gw.stop()  # the writer drains and exits: everything it was given is on disk
    captured = b"".join(p.read_bytes() for p in capture_files(out))
    captured += b"".join(data_of(e) for e in all_events(out))
    for key in planted:
        assert key.encode() not in captured, key
    # The redaction is what hid them: the requests themselves were captured.
    assert b"authorization: [REDACTED]" in captured and b"x-api-key: [REDACTED]" in captured
    assert b"x-custom-secret: [REDACTED]" in captured
    assert len([e for e in events if e["dir"] == 2]) == 3


def test_rotation_and_total_cap_under_load(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    file_cap, total_cap = 64 * 1024, 3 * 64 * 1024
    gw, out = capturing(
        gateway_factory,
        tmp_path,
        {"openai.1": backend_for(mock_llm)},
        capture={"max_file_bytes": file_cap, "max_total_bytes": total_cap},
    )
    noise = os.urandom(3000).hex()  # does not compress to nothing
    with httpx.Client(headers=AUTH, timeout=10) as client:
        for i in range(150):
            r = client.post(
                gw.url + "/v1/chat/completions",
                json={**CHAT, "messages": [{"role": "user", "content": f"{i} {noise}"}]},
            )
            assert r.status_code == 200

    def status() -> dict[str, Any]:
        return httpx.get(gw.url + "/internal/health", headers=AUTH, timeout=10).json()[
            "wire_capture"
        ]

    # Five events per exchange: the request and its forward, the backend's head and
    # body, the answer.
    wait_until(lambda: status()["events_written"] == 750, what="every event written")
    doc = status()
    assert doc["files_deleted"] > 0 and doc["files_opened"] > 3 and doc["dropped"] == 0
    files = capture_files(out)
    sizes = [p.stat().st_size for p in files]
    assert sum(sizes) <= total_cap and max(sizes) <= file_cap
    assert len(files) == doc["files_opened"] - doc["files_deleted"]
    for path in files:
        header, events = read_file(path)
        assert events and header["metadata"]["file_index"] >= 1
    # The newest events are the ones kept.
    assert max(e["seq"] for e in all_events(out)) == 750
    check_order(out)


def _disabled_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "wire capture disabled" in r.getMessage()]


def test_directory_removed_while_running(
    gateway_factory: Factory,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fastproxy.capture")
    gw, out = capturing(gateway_factory, tmp_path, {"openai.1": backend_for(mock_llm)})
    assert any(f"wire capture: {out}" in r.getMessage() for r in caplog.records)
    with httpx.Client(headers=AUTH, timeout=10) as client:
        assert client.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        wait_until(lambda: len(all_events(out)) == 5, what="the first exchange written")
        shutil.rmtree(out)
        deadline = time.monotonic() + 10
        while not _disabled_lines(caplog):
            assert time.monotonic() < deadline, "capture never noticed the directory is gone"
            assert client.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        for _ in range(20):  # traffic goes on, capture stays off, nothing more is logged
            assert client.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        doc = client.get(gw.url + "/internal/health").json()["wire_capture"]
    assert doc["state"] == "disabled" and "removed" in doc["reason"]
    assert doc["exchanges_skipped"] >= 20
    assert len(_disabled_lines(caplog)) == 1
    assert not out.exists()


def test_unusable_directory_at_start(
    gateway_factory: Factory,
    mock_llm: MockLLMServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm)},
            "wire_capture": {"enabled": True, "output_dir": str(blocker / "captures")},
        }
    )
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            assert client.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        doc = client.get(gw.url + "/internal/health").json()["wire_capture"]
    assert doc["state"] == "disabled" and doc["events_captured"] == 0
    assert doc["exchanges_skipped"] == 5 and "Not a directory" in doc["reason"]
    assert len(_disabled_lines(caplog)) == 1


def test_off_by_default(gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path) -> None:
    gw = gateway_factory({"backends": {"openai.1": backend_for(mock_llm)}})
    assert gw.plane.capture is None
    assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 200
    doc = httpx.get(gw.url + "/internal/health", timeout=10).json()
    assert doc["wire_capture"] == {"enabled": False}
    assert not (Path(gw.gateway.config.state_dir) / "wire_captures").exists()


def test_each_worker_writes_its_own_files(mock_llm: MockLLMServer, tmp_path: Path) -> None:
    import http.client

    import yaml

    from tests.support.proc import GatewayProcess

    out = tmp_path / "captures"
    tree = {
        "port": 0,
        "admin": {"port": 0},
        "workers": 2,
        "backends": {"openai": backend_for(mock_llm)},
        "usage_tracking": {"enabled": False},
        "wire_capture": {"enabled": True, "output_dir": str(out)},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    gw = GatewayProcess(["--config", str(cfg)], cwd=str(tmp_path))
    try:
        port = gw.wait_ready()
        body = orjson.dumps(CHAT)
        assert gw.admin_port is not None
        admin = gw.admin_port

        def capture_doc() -> dict[str, Any]:
            health = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
            health.request("GET", "/internal/health")
            doc: dict[str, Any] = orjson.loads(health.getresponse().read())["wire_capture"]
            health.close()
            return doc

        for _ in range(40):  # a new connection each: the kernel spreads them over both
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
            conn.close()
        # The primary adds up the workers' counters (sent with their heartbeats): 40
        # exchanges of 4 events each (client in, backend out, backend head and body,
        # client out), all written.
        deadline = time.monotonic() + 15
        doc = capture_doc()
        while doc.get("events_written", 0) < 40 * 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            doc = capture_doc()
        assert doc["state"] == "on" and doc["workers_reporting"] == 2, doc
        assert doc["dir"] == str(out)
        assert doc["events_written"] == doc["events_captured"] >= 40 * 4, doc
        assert gw.stop() == 0  # each worker's writer drains before the worker exits
    finally:
        gw.kill()
    assert "wire capture: " in gw.output()
    rids_by_worker: dict[int, set[int]] = {}
    for path in capture_files(out):
        header, events = read_file(path)
        worker = header["metadata"]["worker"]
        assert path.name.startswith(f"capture-w{worker}-")
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        rids = rids_by_worker.setdefault(worker, set())
        for e in events:
            rids.add(meta(e)["rid"])
        # Worker i of 2 numbers its requests i, i+2, ...: no other process wrote here.
        assert {meta(e)["rid"] % 2 for e in events} == {worker % 2}
    assert set(rids_by_worker) == {1, 2}
    assert sum(len(r) for r in rids_by_worker.values()) == 40
    check_order(out)
