"""OpenTelemetry traces end to end: the official OpenAI and Anthropic SDKs → a real
gateway process with tracing on → real mock LLM servers on 127.0.0.1, the spans read
where a collector would read them (a real OTLP/HTTP receiver decoding with
opentelemetry-proto), the propagated ``traceparent`` read where the backend received it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai

from fastproxy.mockllm import MockLLMServer
from tests.conftest import backend_for
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

from .e2e import received_traceparents, split, start
from .receiver import CLIENT, SERVER, STATUS_ERROR, OtlpReceiver, Span

MSGS = [{"role": "user", "content": "Name a prime number."}]
TOKEN = "otlp-token-3f9a7c1e"
# The caller's own span, as an instrumented client would send it (sampled).
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def traced_tree(good: MockLLMServer, bad: MockLLMServer) -> dict[str, Any]:
    """gpt-4o and claude-sonnet-4-5 served by ``good``; gpt-4o-mini tried on ``bad``
    (which answers 503) before ``good``; claude-haiku-4-5 tried on a closed port first."""
    return {
        "backends": {
            "openai.bad": backend_for(bad, "openai", models=["gpt-4o-mini"]),
            "anthropic.down": {
                "type": "anthropic",
                "api_url": "http://127.0.0.1:9",
                "api_key": "sk-down",
                "models": ["claude-haiku-4-5"],
                "connect_timeout_s": 2,
            },
            "openai.1": backend_for(good, "openai", models=["gpt-4o", "gpt-4o-mini"]),
            "anthropic.1": backend_for(
                good, "anthropic", models=["claude-sonnet-4-5", "claude-haiku-4-5"]
            ),
        },
        "default_backend": "openai.1",
        "tracing": {"enabled": True},
    }


def spans_of(receiver: OtlpReceiver, trace_id: str, count: int) -> list[Span]:
    return wait_until(
        lambda: (lambda s: s if len(s) >= count else None)(receiver.trace(trace_id)),
        timeout=15,
        what=f"{count} spans of trace {trace_id}",
    )


def request_span(spans: list[Span]) -> Span:
    (server,) = [s for s in spans if s.kind == SERVER]
    return server


def attempt_spans(spans: list[Span]) -> list[Span]:
    return sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_ns)


def last_trace(mock: MockLLMServer) -> tuple[str, str, str]:
    tp = received_traceparents(mock)[-1]
    assert tp is not None, "the backend received no traceparent"
    return split(tp)


def test_spans_of_both_dialects_json_stream_failover_and_a_caller_parent(
    tmp_path: Path,
    mock_factory: Callable[..., MockLLMServer],
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    good, bad = mock_factory(), mock_factory()
    bad.set_behaviour(status=503)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-collector-token={TOKEN}",
    }
    gw = start(tmp_path, traced_tree(good, bad), env)
    gateways.append(gw)
    base = f"http://127.0.0.1:{gw.port}"
    with (
        openai.OpenAI(base_url=base + "/v1", api_key="sk-client", max_retries=0) as oai,
        anthropic.Anthropic(base_url=base, api_key="sk-client", max_retries=0) as ant,
    ):
        check_spans(oai, ant, good, bad, receiver)
    assert gw.stop() == 0


def check_spans(
    oai: openai.OpenAI,
    ant: anthropic.Anthropic,
    good: MockLLMServer,
    bad: MockLLMServer,
    receiver: OtlpReceiver,
) -> None:

    # 1. OpenAI JSON, under the caller's span.
    caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    reply = oai.chat.completions.create(
        model="gpt-4o", messages=MSGS, max_tokens=5, extra_headers={"traceparent": caller}
    )
    assert reply.usage is not None
    trace_id, parent, flags = last_trace(good)
    assert (trace_id, flags) == (CALLER_TRACE, "01")  # the caller's trace, continued
    spans = spans_of(receiver, CALLER_TRACE, 2)
    req = request_span(spans)
    (att,) = attempt_spans(spans)
    assert req.parent_id == CALLER_SPAN
    assert att.parent_id == req.span_id
    assert parent == att.span_id  # the backend's spans hang under the attempt
    assert req.name == "chat gpt-4o" and att.name == "chat gpt-4o"
    a = req.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o"
    assert a["gen_ai.response.model"] == "gpt-4o"
    assert a["gen_ai.request.stream"] is False
    assert a["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert a["http.response.status_code"] == 200
    assert a["fastproxy.backend"] == "openai.1" and a["fastproxy.attempts"] == 1
    assert req.status != STATUS_ERROR
    assert att.attributes["server.address"] == "127.0.0.1"
    assert att.attributes["server.port"] == good.port
    assert att.attributes["http.response.status_code"] == 200
    assert att.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens
    assert req.start_ns <= att.start_ns <= att.end_ns <= req.end_ns
    assert req.resource["service.name"] == "gateway-under-test"
    # The collector's token went as an export header, and into no span.
    assert receiver.headers[0].get("x-collector-token") == TOKEN
    for span in spans:
        for value in span.attributes.values():
            assert "sk-" not in str(value) and TOKEN not in str(value)
            assert "prime" not in str(value)  # no prompt text

    # 2. OpenAI stream: TTFT as an attribute and an event.
    usage = None
    for chunk in oai.chat.completions.create(
        model="gpt-4o",
        messages=MSGS,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    ):
        usage = chunk.usage or usage
    assert usage is not None
    trace_id, parent, flags = last_trace(good)
    assert flags == "01" and trace_id != CALLER_TRACE  # a new root trace
    spans = spans_of(receiver, trace_id, 2)
    req = request_span(spans)
    assert req.parent_id == ""
    assert attempt_spans(spans)[0].span_id == parent
    a = req.attributes
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert 0 < a["fastproxy.ttft_ms"] < (req.end_ns - req.start_ns) / 1e6
    ((_, at),) = [e for e in req.events if e[0] == "gen_ai.first_token"]
    assert req.start_ns < at <= req.end_ns

    # 3. Anthropic JSON.
    message = ant.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=MSGS)
    trace_id, parent, _ = last_trace(good)
    spans = spans_of(receiver, trace_id, 2)
    req = request_span(spans)
    a = req.attributes
    assert req.name == "chat claude-sonnet-4-5"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.usage.input_tokens"] == message.usage.input_tokens
    assert a["gen_ai.usage.output_tokens"] == message.usage.output_tokens
    assert attempt_spans(spans)[0].span_id == parent

    # 4. Anthropic stream.
    with ant.messages.stream(model="claude-sonnet-4-5", max_tokens=5, messages=MSGS) as stream:
        final = stream.get_final_message()
    trace_id, _, _ = last_trace(good)
    req = request_span(spans_of(receiver, trace_id, 2))
    assert req.attributes["gen_ai.request.stream"] is True
    assert req.attributes["gen_ai.usage.output_tokens"] == final.usage.output_tokens
    assert "fastproxy.ttft_ms" in req.attributes

    # 5. Failover on a 503: one request span, two attempt spans, the first failed.
    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=5)
    first_trace, first_parent, _ = last_trace(bad)
    trace_id, second_parent, _ = last_trace(good)
    assert first_trace == trace_id
    spans = spans_of(receiver, trace_id, 3)
    req = request_span(spans)
    failed, served = attempt_spans(spans)
    assert (failed.span_id, served.span_id) == (first_parent, second_parent)
    assert failed.parent_id == served.parent_id == req.span_id
    assert failed.attributes["fastproxy.backend"] == "openai.bad"
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.attributes["error.type"] == "503" and failed.status == STATUS_ERROR
    assert failed.attributes["server.port"] == bad.port
    assert served.attributes["fastproxy.backend"] == "openai.1"
    assert served.status != STATUS_ERROR and "error.type" not in served.attributes
    assert failed.end_ns <= served.start_ns
    assert req.attributes["fastproxy.attempts"] == 2
    assert req.attributes["fastproxy.backend"] == "openai.1"
    assert req.status != STATUS_ERROR
    assert reply.usage is not None
    assert req.attributes["gen_ai.usage.output_tokens"] == reply.usage.completion_tokens

    # 6. Failover from a backend that is down (connection refused), Anthropic dialect.
    ant.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MSGS)
    trace_id, parent, _ = last_trace(good)
    spans = spans_of(receiver, trace_id, 3)
    failed, served = attempt_spans(spans)
    assert failed.attributes["fastproxy.backend"] == "anthropic.down"
    assert failed.attributes["error.type"] == "connect"
    assert "http.response.status_code" not in failed.attributes
    assert served.span_id == parent

    # 7. A request every backend fails: the request span is an error too.
    bad.set_behaviour(status=500)
    try:
        oai.chat.completions.create(model="openai.bad:gpt-4o-mini", messages=MSGS, max_tokens=5)
    except openai.InternalServerError:
        pass
    trace_id, _, _ = last_trace(bad)
    req = request_span(spans_of(receiver, trace_id, 2))
    assert req.status == STATUS_ERROR
    assert req.attributes["http.response.status_code"] == 500
    assert req.attributes["error.type"] == "500"
