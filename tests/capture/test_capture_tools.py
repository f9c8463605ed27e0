"""Reading captures back: inspect (--json), --detect-issues, damage, replay and
mock-llm --from-capture, on captures made by a real gateway against the mock LLM."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from fastproxy.mockllm import MockLLMServer
from fastproxy.storage.capture_reader import group_exchanges, read_capture
from tests.capture.support import abort_a_stream, all_events, capture_files
from tests.capture.test_capture import AUTH, CHAT, CLIENT_KEY, MSG, capturing
from tests.conftest import RunningGateway, backend_for
from tests.support.waiting import wait_until

Factory = Callable[..., RunningGateway]
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> tuple[int, Any, str]:
    """``fastproxy ARGS`` in a subprocess: (exit status, stdout as JSON or text, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    try:
        out: Any = orjson.loads(proc.stdout)
    except orjson.JSONDecodeError:
        out = proc.stdout
    return proc.returncode, out, proc.stderr


def ends(out: Path, n: int) -> None:
    """Wait until n stream-end markers are on disk."""
    wait_until(
        lambda: sum(1 for e in all_events(out) if e.get("meta", {}).get("se")) >= n,
        what=f"{n} stream ends",
    )


def test_inspect_streams_failover_and_abort(
    gateway_factory: Factory, mock_factory: Callable[..., MockLLMServer], tmp_path: Path
) -> None:
    a, b = mock_factory(), mock_factory()
    gw, out = capturing(
        gateway_factory,
        tmp_path,
        {
            "openai.1": backend_for(a, models=["gpt-4o"]),
            "openai.2": backend_for(b, models=["gpt-4o-mini"]),
            "anthropic.1": backend_for(b, "anthropic"),
        },
        failover_routes={"gpt-4o": ["openai.2:gpt-4o-mini"]},
    )
    with httpx.Client(headers={**AUTH, "x-session-id": "s-1"}, timeout=10) as c:
        c.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True})
        c.post(gw.url + "/v1/messages", json={**MSG, "stream": True})
        a.set_behaviour(status=503)
        assert c.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        a.clear_behaviour()
    body = orjson.dumps({**CHAT, "stream": True})
    abort_a_stream(gw.port, body, CLIENT_KEY)
    ends(out, 3)
    gw.stop()
    rc, doc, _ = cli(
        "capture",
        "inspect",
        str(out),
        "--json",
        "--timeline",
        "--analyze-streaming",
        "--detect-issues",
    )
    s = doc["summary"]
    assert s["exchanges"] == 4 and s["streams"] == 3
    assert s["backend_attempts"] == {"openai.1": 3, "anthropic.1": 1, "openai.2": 1}
    assert s["sessions"] == {"s-1": 3}
    assert all(s["events_by_direction"][d] > 0 for d in s["events_by_direction"])
    streams = {st["rid"]: st for st in doc["streams"]}
    by_path = {t["rid"]: t for t in doc["timeline"]}
    oa, an, fo, ab = sorted(by_path)
    assert streams[oa]["terminal_seen"] and streams[oa]["outcome"] == "ok"
    assert streams[an]["terminal"] == "message_stop" and streams[an]["terminal_seen"]
    assert streams[ab]["outcome"] == "client_aborted" and not streams[ab]["terminal_seen"]
    for st in streams.values():
        assert 0 <= st["first_byte_s"] <= st["last_byte_s"]
    # Failover: two attempts in order, the first answered 503.
    legs = [(x["dir"], x["meta"].get("be"), x["meta"].get("sc")) for x in by_path[fo]["steps"]]
    assert [leg for leg in legs if leg[0] in (2, 3) and leg[1]] == [
        (2, "openai.1", None),
        (3, "openai.1", 503),
        (2, "openai.2", None),
        (3, "openai.2", 200),
    ]
    assert legs[0][0] == 0 and legs[-1][0] == 1
    steps = by_path[oa]["steps"]
    assert [x["t_ms"] for x in steps] == sorted(x["t_ms"] for x in steps)
    markers = [k for x in steps for k in ("ss", "se") if x["meta"].get(k)]
    assert markers == ["ss", "se"]
    kinds = sorted((i["kind"], i["rid"]) for i in doc["issues"])
    assert kinds == [("backend_error", fo), ("cut_stream", ab)], doc["issues"]
    assert rc == 1
    # Filters: a backend, a direction, a search.
    _, only, _ = cli(
        "capture",
        "inspect",
        str(out),
        "--json",
        "--backend",
        "openai.2",
        "--direction",
        "backend-out",
        "--entries",
        "5",
    )
    assert [e["meta"]["be"] for e in only["entries"]] == ["openai.2"]
    _, found, _ = cli(
        "capture",
        "inspect",
        str(out),
        "--json",
        "--search",
        "message_stop",
        "--direction",
        "3",
        "--last",
        "1",
    )
    assert found["summary"]["exchanges"] == 1 and found["entries"][0]["rid"] == an


def test_detect_issues_finds_each_planted_problem(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    gw, out = capturing(gateway_factory, tmp_path, {"openai.1": backend_for(mock_llm)})
    stream = {**CHAT, "stream": True}
    with httpx.Client(headers=AUTH, timeout=10) as c:
        url = gw.url + "/v1/chat/completions"
        ok = c.post(url, json=stream)  # a clean one among them: not reported
        limited = c.post(
            url, json=CHAT, headers={"x-mock-status": "429", "x-mock-retry-after": "0"}
        )
        cut = c.post(url, json=stream, headers={"x-mock-fault": "reset_after:2"})
        slow = c.post(url, json=stream, headers={"x-mock-ttft-ms": "3000", "x-mock-tokens": "2"})
        missing = c.post(url, json={**CHAT, "model": "no-such-model"})
    assert ok.status_code == 200 and limited.status_code == 429 and missing.status_code == 404
    assert b"[DONE]" not in cut.content and slow.status_code == 200
    ends(out, 3)
    gw.stop()
    rc, doc, _ = cli("capture", "inspect", str(out), "--json", "--detect-issues")
    assert rc == 1
    rids = sorted({t for t in (e["rid"] for e in doc["issues"])})
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for issue in doc["issues"]:
        by_kind.setdefault(issue["kind"], []).append(issue)
    assert set(by_kind) == {"rate_limit", "cut_stream", "slow_gap", "never_forwarded"}, doc
    first = min(rids) - 1  # the clean stream's rid
    assert all(i["rid"] != first for i in doc["issues"])
    assert all(i["status"] == 429 for i in by_kind["rate_limit"])
    assert "data: [DONE]" in by_kind["cut_stream"][0]["detail"]
    assert by_kind["cut_stream"][0]["outcome"] != "ok"
    (gap,) = by_kind["slow_gap"]
    assert 2.9 <= gap["gap_s"] < 6 and gap["between"] == "response head and read 1"
    (lost,) = by_kind["never_forwarded"]
    assert lost["status"] == 404 and "no-such-model" in lost["detail"]
    # A higher threshold hides the gap; the rest stays.
    _, doc2, _ = cli(
        "capture", "inspect", str(out), "--json", "--detect-issues", "--gap-seconds", "10"
    )
    assert "slow_gap" not in {i["kind"] for i in doc2["issues"]}
    # The readable output names them too.
    rc, text, _ = cli("capture", "inspect", str(out), "--detect-issues")
    assert rc == 1 and "never_forwarded" in text and "cut_stream" in text


def test_clean_capture_has_no_issues_and_a_cut_file_is_read_to_the_damage(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    gw, out = capturing(
        gateway_factory,
        tmp_path,
        {"openai.1": backend_for(mock_llm), "anthropic.1": backend_for(mock_llm, "anthropic")},
    )
    with httpx.Client(headers=AUTH, timeout=10) as c:
        assert c.post(gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
        c.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True})
        c.post(gw.url + "/v1/messages", json={**MSG, "stream": True})
    ends(out, 2)
    gw.stop()
    rc, doc, err = cli("capture", "inspect", str(out), "--json", "--detect-issues")
    assert rc == 0 and doc["issues"] == [] and doc["damage"] == [], (doc, err)
    (path,) = capture_files(out)
    whole = read_capture([path])
    last = whole.events[-1]
    cut = tmp_path / "cut.cbor"
    raw = path.read_bytes()
    cut.write_bytes(raw[: last.offset + 5])  # five bytes into the last event
    rc, doc, err = cli("capture", "inspect", str(cut), "--json")
    assert rc == 0 and "Traceback" not in err
    assert doc["summary"]["events"] == len(whole.events) - 1
    (note,) = doc["damage"]
    assert "truncated" in note and f"at byte {last.offset} of {last.offset + 5}" in note
    rc, doc, _ = cli("capture", "inspect", str(cut), "--json", "--detect-issues")
    assert rc == 1 and doc["issues"][0]["kind"] == "damaged_file"
    # The script is the same command; a file that is no capture is exit 2, one line.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/inspect_cbor_capture.py"), str(cut), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and orjson.loads(proc.stdout)["damage"] == [note]
    junk = tmp_path / "junk.cbor"
    junk.write_bytes(b"not cbor at all")
    rc, _, err = cli("capture", "inspect", str(junk))
    assert rc == 2 and "not a wire capture" in err and "Traceback" not in err
    rc, _, err = cli("capture", "inspect", str(path), "--direction", "9")
    assert rc == 2


def _backend_legs(directory: Path) -> list[tuple[str | None, int | None, bytes, bytes]]:
    """Per backend attempt, in order: backend, status, head bytes, body bytes."""
    out = []
    for ex in group_exchanges(read_capture([directory]).events):
        for a in ex.attempts:
            assert a.head_event is not None
            out.append((a.backend, a.status, a.head_event.data, a.body_bytes))
    return out


def test_replay_against_mock_from_capture_reproduces_the_backend_bytes(
    gateway_factory: Factory, mock_factory: Callable[..., MockLLMServer], tmp_path: Path
) -> None:
    a, b = mock_factory(), mock_factory()
    routes = {"gpt-4o": ["openai.2:gpt-4o-mini"]}
    gw, first = capturing(
        gateway_factory,
        tmp_path / "one",
        {
            "openai.1": backend_for(a, models=["gpt-4o"]),
            "openai.2": backend_for(b, models=["gpt-4o-mini"]),
            "anthropic.1": backend_for(b, "anthropic"),
        },
        failover_routes=routes,
    )
    with httpx.Client(headers=AUTH, timeout=10) as c:
        c.post(gw.url + "/v1/chat/completions", json=CHAT)
        c.post(
            gw.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"x-mock-interval-ms": "5"},
        )
        c.post(gw.url + "/v1/messages", json={**MSG, "stream": True})
        a.set_behaviour(status=503)
        c.post(
            gw.url + "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": "failover"}]},
        )
    ends(first, 2)
    gw.stop()
    mock = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastproxy",
            "mock-llm",
            "--from-capture",
            str(first),
            "--port",
            "0",
            "--speed",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert mock.stdout is not None
        line = mock.stdout.readline()  # the first line is the listening URL (a contract)
        assert line.startswith("mock-llm listening on "), line
        url = line.split()[-1]
        replay_backend = {"api_url": url, "api_key": "sk-backend-replay-secret"}
        gw2, second = capturing(
            gateway_factory,
            tmp_path / "two",
            {
                "openai.1": {"type": "openai", **replay_backend, "models": ["gpt-4o"]},
                "openai.2": {"type": "openai", **replay_backend, "models": ["gpt-4o-mini"]},
                "anthropic.1": {
                    "type": "anthropic",
                    **replay_backend,
                    "models": ["claude-haiku-4-5"],
                },
            },
            failover_routes=routes,
        )
        rc, doc, err = cli(
            "capture",
            "replay",
            str(first),
            "--target",
            gw2.url,
            "--speed",
            "0",
            "--json",
            "--header",
            f"Authorization: Bearer {CLIENT_KEY}",
        )
        assert rc == 0, ([r["differences"] for r in doc["results"]], err)
        assert doc["requests"] == 4 and doc["matched"] == 4, doc
        ends(second, 2)
        wait_until(lambda: len(_backend_legs(second)) == 5, what="five backend answers")
        gw2.stop()
        # What the backends sent, head and body, is the same bytes as in the original.
        assert _backend_legs(second) == _backend_legs(first)
        # An unknown request gets a 404 naming it.
        r = httpx.post(url + "/embeddings", json={"model": "x", "input": "y"}, timeout=10)
        assert r.status_code == 404 and "not_in_capture" in r.text
    finally:
        mock.terminate()
        mock.wait(10)
        if mock.stdout is not None:
            mock.stdout.close()
    # A replay that differs says so and exits 1: the captured answers against a real mock.
    m = mock_factory()
    gw3, _ = capturing(gateway_factory, tmp_path / "three", {"openai.1": backend_for(m)})
    m.set_behaviour(status=500)
    rc, doc, _ = cli(
        "capture",
        "replay",
        str(first),
        "--target",
        gw3.url,
        "--speed",
        "0",
        "--json",
        "--header",
        f"Authorization: Bearer {CLIENT_KEY}",
    )
    assert rc == 1 and doc["differed"] >= 1
    assert any("status 200 then" in d for r in doc["results"] for d in r["differences"])
