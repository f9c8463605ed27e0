"""Random model replacement end to end, one process: the official OpenAI and Anthropic
SDKs → a real gateway → two mock LLM servers on 127.0.0.1 (originals on one, targets on
the other), usage in real SQLite, metrics read as an operator reads them (curl's URL).

Which backend served a request is read where it arrived (the mock's own request log)
as well as from the response's headers, so a wrong header alone cannot pass a test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from fastproxy.config import load_config
from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

from .support import (
    ANTHROPIC_MODEL,
    ANTHROPIC_TO,
    MSGS,
    OPENAI_FROM,
    OPENAI_TO,
    check_shape,
    metrics,
    models_seen,
    records,
    tree,
)

Start = Callable[..., RunningGateway]


@pytest.fixture
def mocks(mock_factory: Callable[..., MockLLMServer]) -> tuple[MockLLMServer, MockLLMServer]:
    return mock_factory(), mock_factory()


@pytest.fixture
def start(
    gateway_factory: Callable[..., RunningGateway], mocks: tuple[MockLLMServer, MockLLMServer]
) -> Start:
    def make(**kw: Any) -> RunningGateway:
        return gateway_factory(tree(*mocks, **kw))

    return make


def oai(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)


def ant(gw: RunningGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0)


def openai_turn(client: openai.OpenAI, session: str, stream: bool, **headers: str) -> Any:
    """One chat turn; the response headers (a stream is read to its end)."""
    extra = {"x-session-id": session, "x-mock-tokens": "4", **headers}
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o", messages=MSGS, stream=True, extra_headers=extra
        ) as resp:
            chunks = list(resp.parse())
            assert chunks, "an empty stream"
            return resp.headers
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSGS, extra_headers=extra
    )
    assert raw.parse().choices[0].message.content
    return raw.headers


def anthropic_turn(client: anthropic.Anthropic, session: str, stream: bool) -> Any:
    # The session id in the body this time (the gateway removes it before forwarding).
    kw: dict[str, Any] = {
        "model": ANTHROPIC_MODEL,
        "max_tokens": 16,
        "messages": MSGS,
        "extra_body": {"session_id": session},
        "extra_headers": {"x-mock-tokens": "4"},
    }
    if stream:
        with client.messages.with_streaming_response.create(stream=True, **kw) as resp:
            events = [e.type for e in resp.parse()]
            assert events[-1] == "message_stop"
            return resp.headers
    raw = client.messages.with_raw_response.create(**kw)
    assert raw.parse().content
    return raw.headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_session_on_target_for_turn_count_turns(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer], stream: bool
) -> None:
    # Probability 1, turn_count 2: six turns of one session are three replacements of
    # two turns each (a return, then a new roll that succeeds again); every request
    # reaches the target with the target's model, and says where it was meant to go.
    orig, target = mocks
    gw = start(turn_count=2)
    with oai(gw) as client:
        for i in range(6):
            headers = openai_turn(client, "sess-oai", stream)
            assert headers["x-fastproxy-backend"] == "openai.2", i
            assert headers["x-fastproxy-replaced-from"] == OPENAI_FROM
    assert models_seen(target) == ["gpt-4o-mini"] * 6
    assert models_seen(orig) == []
    doc = metrics(gw.url)
    check_shape(doc)
    assert doc["activation_metrics"]["total_activations"] == 3
    assert doc["turn_count_metrics"]["total_turns_completed"] == 6
    assert doc["turn_count_metrics"]["turn_count_distribution"] == {"2": 3}
    assert doc["turn_count_metrics"]["average_turns_before_return"] == 2.0
    assert doc["activation_metrics"]["unique_sessions_activated"] == 1
    assert doc["probability_check_metrics"] == {
        "total_probability_checks": 3,
        "unique_sessions_checked": 1,
    }
    recs = records(gw.url, 6)
    assert [r["replacement"] for r in recs] == [{"from": OPENAI_FROM, "to": OPENAI_TO}] * 6
    assert {(r["backend"], r["model_used"], r["session_id"]) for r in recs} == {
        ("openai.2", "gpt-4o-mini", "sess-oai")
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_session_on_target_for_turn_count_turns(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer], stream: bool
) -> None:
    # The substring rule ("claude-sonnet") on the Messages API, session id in the body.
    orig, target = mocks
    gw = start(turn_count=3)
    with ant(gw) as client:
        for _ in range(3):
            headers = anthropic_turn(client, "sess-ant", stream)
            assert headers["x-fastproxy-backend"] == "anthropic.2"
            assert headers["x-fastproxy-replaced-from"] == f"anthropic.1:{ANTHROPIC_MODEL}"
    assert models_seen(target) == ["claude-haiku-4-5"] * 3
    assert models_seen(orig) == []
    doc = metrics(gw.url)
    assert doc["activation_metrics"]["total_activations"] == 1
    assert doc["turn_count_metrics"]["turn_count_distribution"] == {"3": 1}
    recs = records(gw.url, 3)
    assert {orjson_key(r["replacement"]) for r in recs} == {
        (f"anthropic.1:{ANTHROPIC_MODEL}", ANTHROPIC_TO)
    }
    assert {r["session_id"] for r in recs} == {"sess-ant"}


def orjson_key(replacement: dict[str, str] | None) -> tuple[str, str] | None:
    return None if replacement is None else (replacement["from"], replacement["to"])


def test_session_returns_to_the_original_after_turn_count(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer], tmp_path: Path
) -> None:
    # The return made visible: a replacement starts at probability 1, then a reload sets
    # the probability to 0 (same rules: the running policy keeps its sessions). The
    # session stays on the target for the rest of its turn_count turns, then goes back
    # to the original backend and is not replaced again.
    orig, target = mocks
    gw = start(turn_count=3)
    with oai(gw) as client:
        openai_turn(client, "sess-return", stream=False)  # activated: turn 1 of 3
        new = tree(orig, target, turn_count=3, probability=0.0)
        new.update(port=0, admin={"port": 0}, state_dir=gw.gateway.config.state_dir)
        path = tmp_path / "reloaded.yaml"
        path.write_text(yaml.safe_dump(new))
        plan = gw.lt.run(gw.gateway.reload(load_config(config_file=str(path), env={})))
        assert plan is not None and "replacement" not in plan.restart_keys
        served = [
            openai_turn(client, "sess-return", stream=True)["x-fastproxy-backend"] for _ in range(4)
        ]
    assert served == ["openai.2", "openai.2", "openai.1", "openai.1"]
    assert models_seen(target) == ["gpt-4o-mini"] * 3
    assert models_seen(orig) == ["gpt-4o"] * 2
    doc = metrics(gw.url)
    assert doc["turn_count_metrics"]["turn_count_distribution"] == {"3": 1}
    assert doc["activation_metrics"]["total_activations"] == 1
    # Two rolls after the return, both failed at probability 0.
    assert doc["probability_check_metrics"]["total_probability_checks"] == 3


def test_stream_turn_completes_at_its_end_not_its_start(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # While a replaced stream is still running, its turn is not completed: the session
    # is replaced and no turn is counted. Its end completes the turn (turn_count 1: the
    # session returns). Paced events (500 ms apart) keep the stream open while the
    # metrics are read; the end is awaited by reading the stream, not by sleeping.
    gw = start(turn_count=1)
    with oai(gw) as client:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=MSGS,
            stream=True,
            extra_headers={
                "x-session-id": "sess-long",
                "x-mock-tokens": "2",
                "x-mock-interval-ms": "500",
            },
        ) as resp:
            chunks = iter(resp.parse())
            next(chunks)  # the stream has started
            during = metrics(gw.url)
            rest = list(chunks)
        assert rest, "the stream ended before its content"
    assert during["activation_metrics"]["total_activations"] == 1
    assert during["turn_count_metrics"]["total_turns_completed"] == 0
    assert during["sessions_replaced"] == 1
    after = metrics(gw.url)
    assert after["turn_count_metrics"]["total_turns_completed"] == 1
    assert after["turn_count_metrics"]["turn_count_distribution"] == {"1": 1}
    assert after["sessions_replaced"] == 0


def test_backend_error_does_not_consume_a_turn(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # Bad input: the target answers the second turn with a 500 (x-mock-status). That
    # turn is not completed, so the third request is still the replacement's second
    # turn: one activation in all. Had the error consumed a turn, the session would
    # have returned and the third request would be a second activation.
    _, target = mocks
    gw = start(turn_count=2)
    with oai(gw) as client:
        openai_turn(client, "sess-err", stream=False)
        with pytest.raises(openai.InternalServerError) as info:
            openai_turn(client, "sess-err", stream=False, **{"x-mock-status": "500"})
        assert info.value.response.headers["x-fastproxy-backend"] == "openai.2"
        assert info.value.response.headers["x-fastproxy-replaced-from"] == OPENAI_FROM
        openai_turn(client, "sess-err", stream=True)
    assert models_seen(target) == ["gpt-4o-mini"] * 3
    doc = metrics(gw.url)
    assert doc["activation_metrics"]["total_activations"] == 1
    assert doc["turn_count_metrics"]["total_turns_completed"] == 2
    assert doc["turn_count_metrics"]["turn_count_distribution"] == {"2": 1}
    recs = records(gw.url, 3)
    assert [r["http_status_code"] for r in recs] == [200, 500, 200]
    assert all(r["replacement"] == {"from": OPENAI_FROM, "to": OPENAI_TO} for r in recs)
    # Effectiveness over the same records (now stored): one error in three replaced.
    (rule, _) = metrics(gw.url)["effectiveness"]
    assert rule["recorded_requests"] == 3 and rule["error_rate"] == pytest.approx(1 / 3)


def test_header_opt_out_serves_as_asked(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # X-Disable-Replacement: true on a session's request: served by the original, no
    # replacement header, no record mark, counted as a header opt-out. The same
    # session without the header is replaced (so the rule did match).
    orig, target = mocks
    gw = start(turn_count=1)
    with oai(gw) as client:
        opted = openai_turn(client, "sess-opt", stream=False, **{"X-Disable-Replacement": "true"})
        assert opted["x-fastproxy-backend"] == "openai.1"
        assert "x-fastproxy-replaced-from" not in opted
        replaced = openai_turn(client, "sess-opt", stream=False)
        assert replaced["x-fastproxy-backend"] == "openai.2"
    assert models_seen(orig) == ["gpt-4o"] and models_seen(target) == ["gpt-4o-mini"]
    # The opt-out header is the gateway's: it is not forwarded to the backend.
    assert all(
        name != "x-disable-replacement" for r in orig.stats.requests for name, _ in r.headers
    )
    doc = metrics(gw.url)
    assert doc["opt_out_metrics"]["header_opt_outs"] == 1
    assert doc["opt_out_metrics"]["total_opt_outs"] == 1
    assert doc["opt_out_metrics"]["opt_outs_last_60s"] == 1
    assert doc["opt_out_metrics"]["unique_sessions_opted_out"] == 1
    assert doc["opt_out_metrics"]["session_opt_outs"] == 0
    recs = records(gw.url, 2)
    assert [r["replacement"] for r in recs] == [None, {"from": OPENAI_FROM, "to": OPENAI_TO}]


def test_metrics_and_usage_records_agree(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # Mixed traffic at probability 0.5 over many sessions: whatever the rolls gave, the
    # replaced requests counted by the policy are exactly the records marked replaced,
    # and the originals the rule matched are the unmarked records of openai.1:gpt-4o.
    orig, target = mocks
    gw = start(turn_count=1, probability=0.5)
    with oai(gw) as client:
        for i in range(24):
            openai_turn(client, f"sess-{i}", stream=i % 2 == 1)
    recs = records(gw.url, 24)
    marked = [r for r in recs if r["replacement"] is not None]
    plain = [r for r in recs if r["replacement"] is None]
    doc = metrics(gw.url)
    rule = doc["effectiveness"][0]
    assert rule["replaced_requests"] == len(marked) == len(models_seen(target))
    assert rule["recorded_requests"] == len(marked)
    assert rule["activations"] == doc["activation_metrics"]["total_activations"] == len(marked)
    assert rule["original"]["requests"] == len(plain) == len(models_seen(orig))
    assert doc["probability_check_metrics"]["total_probability_checks"] == 24
    assert 0 < len(marked) < 24, "both sides need traffic (seeded by os.urandom: 2**-23)"
    assert all(r["backend"] == "openai.2" for r in marked)
    assert all(r["backend"] == "openai.1" for r in plain)
    # Averages over exactly these records.
    durations = [r["total_duration_ms"] for r in marked]
    assert rule["avg_duration_ms"] == pytest.approx(sum(durations) / len(durations))
    ttfts = [r["ttft_ms"] for r in marked if r["ttft_ms"] is not None]
    if ttfts:
        assert rule["avg_ttft_ms"] == pytest.approx(sum(ttfts) / len(ttfts))
    assert rule["error_rate"] == 0.0 and rule["original"]["error_rate"] == 0.0


def test_seed_curl_example_answers_the_contract_shape(
    start: Start, gateway_factory: Callable[..., RunningGateway]
) -> None:
    # The seed document's `curl "http://localhost:8000/v1/replacement/metrics"`: the
    # data port, and the admin listener, answer the same document.
    gw = start()
    with oai(gw) as client:
        openai_turn(client, "sess-curl", stream=False)
    doc = metrics(gw.url)
    check_shape(doc)
    assert doc["enabled"] is True
    assert [(e["from"], e["to"]) for e in doc["effectiveness"]] == [
        (OPENAI_FROM, OPENAI_TO),
        ("claude-sonnet", ANTHROPIC_TO),
    ]
    admin = metrics(f"http://127.0.0.1:{gw.gateway.admin_port}")
    check_shape(admin)
    assert admin["activation_metrics"] == doc["activation_metrics"]


def test_disabled_answers_enabled_false_with_zeroed_counters(
    gateway_factory: Callable[..., RunningGateway], mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # Replacement off (the default): the endpoint is there, in the contract's shape,
    # with nothing counted; requests are served as asked and carry no mark.
    cfg = tree(*mocks)
    del cfg["replacement"]
    gw = gateway_factory(cfg)
    with oai(gw) as client:
        headers = openai_turn(client, "sess-off", stream=False)
    assert headers["x-fastproxy-backend"] == "openai.1"
    assert "x-fastproxy-replaced-from" not in headers
    doc = metrics(gw.url)
    check_shape(doc)
    assert doc["enabled"] is False and doc["effectiveness"] == []
    assert doc["activation_metrics"]["total_activations"] == 0
    r = httpx.post(gw.url + "/v1/replacement/metrics/reset", timeout=10)
    assert r.status_code == 200 and r.json() == {"enabled": False, "reset": False}


def test_reset_on_loopback_zeroes_counters_and_keeps_sessions(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    gw = start(turn_count=2)
    with oai(gw) as client:
        openai_turn(client, "sess-reset", stream=False)  # activated, 1 of 2 turns
        before = metrics(gw.url)
        assert before["activation_metrics"]["total_activations"] == 1
        admin = f"http://127.0.0.1:{gw.gateway.admin_port}"
        r = httpx.post(admin + "/v1/replacement/metrics/reset", timeout=10)
        assert r.status_code == 200 and r.json()["reset"] is True
        after = metrics(gw.url)
        assert after["activation_metrics"]["total_activations"] == 0
        assert after["probability_check_metrics"]["total_probability_checks"] == 0
        assert after["effectiveness"][0]["recorded_requests"] == 0
        # The session is still replaced: its second turn goes to the target unrolled.
        assert openai_turn(client, "sess-reset", stream=False)["x-fastproxy-backend"] == (
            "openai.2"
        )
    final = metrics(gw.url)
    assert final["activation_metrics"]["total_activations"] == 0
    assert final["turn_count_metrics"]["turn_count_distribution"] == {"2": 1}
    # GET does not reset; the reset path answers POST only.
    r = httpx.get(gw.url + "/v1/replacement/metrics/reset", timeout=10)
    assert r.status_code == 405
    # A cross-origin browser page may not reset (CSRF against 127.0.0.1).
    r = httpx.post(
        gw.url + "/v1/replacement/metrics/reset",
        headers={"origin": "https://evil.example"},
        timeout=10,
    )
    assert r.status_code == 403


def test_reset_refused_to_a_remote_peer_that_may_read(
    start: Start, gateway_factory: Callable[..., RunningGateway], mocks: Any
) -> None:
    # Bad input: a POST from a non-loopback address of this machine, in
    # admin.allow_networks (so it may read the metrics): the reset is refused 403.
    from tests.admin.conftest import non_loopback_ipv4

    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    gw = gateway_factory(
        tree(*mocks, admin={"host": "0.0.0.0", "port": 0, "allow_networks": [f"{addr}/32"]})
    )
    url = f"http://{addr}:{gw.gateway.admin_port}"
    assert httpx.get(url + "/v1/replacement/metrics", timeout=10).status_code == 200
    r = httpx.post(url + "/v1/replacement/metrics/reset", timeout=10)
    assert r.status_code == 403
    assert r.json() == {"detail": "Diagnostic endpoint is restricted to local access only"}


def test_requests_without_a_matching_rule_are_not_counted(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # gpt-4o-mini asked for directly matches no rule: served as asked, nothing rolled.
    gw = start()
    with oai(gw) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MSGS, extra_headers={"x-session-id": "s"}
        )
    assert raw.headers["x-fastproxy-backend"] == "openai.2"
    assert "x-fastproxy-replaced-from" not in raw.headers
    doc = metrics(gw.url)
    assert doc["probability_check_metrics"]["total_probability_checks"] == 0
    wait_until(lambda: records(gw.url, 1), what="the record")


def test_session_opt_out_header_keeps_the_session_on_the_original(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # X-Disable-Replacement: session on one request opts the whole session out: that
    # request is a header opt-out, the session's later requests (no header) are
    # session opt-outs, all served as asked; another session is still replaced.
    orig, target = mocks
    gw = start(turn_count=1)
    with oai(gw) as client:
        first = openai_turn(
            client, "sess-out", stream=False, **{"X-Disable-Replacement": "session"}
        )
        later = [openai_turn(client, "sess-out", stream=True) for _ in range(2)]
        other = openai_turn(client, "sess-in", stream=False)
    assert [h["x-fastproxy-backend"] for h in (first, *later)] == ["openai.1"] * 3
    assert other["x-fastproxy-backend"] == "openai.2"
    assert models_seen(orig) == ["gpt-4o"] * 3 and models_seen(target) == ["gpt-4o-mini"]
    opt = metrics(gw.url)["opt_out_metrics"]
    assert (opt["header_opt_outs"], opt["session_opt_outs"], opt["total_opt_outs"]) == (1, 2, 3)
    assert opt["unique_sessions_opted_out"] == 1


def test_replaced_request_fails_over_along_the_targets_routes(
    gateway_factory: Callable[..., RunningGateway],
    mocks: tuple[MockLLMServer, MockLLMServer],
) -> None:
    # Bad input: the target backend answers 503 to everything. The replaced request
    # fails over along the target's route (gpt-4o-mini -> openai.3:gpt-4o-mini), never
    # the original's (gpt-4o -> openai.1:x: model "x" never reaches a backend), and is
    # still marked replaced; 503 then 200 is one completed turn.
    orig, target = mocks
    cfg = tree(orig, target, turn_count=1)
    cfg["backends"]["openai.3"] = {
        **cfg["backends"]["openai.1"],
        "models": ["gpt-4o-mini"],
    }
    cfg["failover_routes"] = {"gpt-4o-mini": ["openai.3:gpt-4o-mini"], "gpt-4o": ["openai.1:x"]}
    gw = gateway_factory(cfg)
    gw.lt.call(lambda: target.set_behaviour(status=503))
    with oai(gw) as client:
        headers = openai_turn(client, "sess-fo", stream=True)
    assert headers["x-fastproxy-backend"] == "openai.3"
    assert headers["x-fastproxy-replaced-from"] == OPENAI_FROM
    assert models_seen(target) == ["gpt-4o-mini"]  # the 503
    assert models_seen(orig) == ["gpt-4o-mini"]  # openai.3 is on the originals' mock
    (rec,) = records(gw.url, 1)
    assert rec["backend"] == "openai.3" and rec["attempts"] == 2
    assert rec["replacement"] == {"from": OPENAI_FROM, "to": OPENAI_TO}
    doc = metrics(gw.url)
    assert doc["turn_count_metrics"]["total_turns_completed"] == 1


def test_client_abort_does_not_consume_a_turn(
    start: Start, mocks: tuple[MockLLMServer, MockLLMServer]
) -> None:
    # Bad input: the client closes a replaced stream after its first event. No turn is
    # completed (turn_count 1: had the abort counted, the session would have returned
    # and its next request would be a second activation).
    _, target = mocks
    gw = start(turn_count=1)
    with oai(gw) as client:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=MSGS,
            stream=True,
            extra_headers={
                "x-session-id": "sess-abort",
                "x-mock-tokens": "20",
                "x-mock-interval-ms": "200",
            },
        ) as resp:
            next(iter(resp.parse()))
        # The gateway has finished with the aborted request once its record is stored.
        (aborted,) = records(gw.url, 1)
        assert aborted["outcome"] == "client_aborted"
        assert aborted["replacement"] == {"from": OPENAI_FROM, "to": OPENAI_TO}
        mid = metrics(gw.url)
        assert mid["turn_count_metrics"]["total_turns_completed"] == 0
        assert mid["sessions_replaced"] == 1
        assert openai_turn(client, "sess-abort", stream=False)["x-fastproxy-backend"] == (
            "openai.2"
        )
    doc = metrics(gw.url)
    assert doc["activation_metrics"]["total_activations"] == 1
    assert doc["turn_count_metrics"]["turn_count_distribution"] == {"1": 1}
    assert models_seen(target) == ["gpt-4o-mini"] * 2
