"""The on-loop half of tracing, sans I/O: ``traceparent`` parsing (W3C Trace Context),
head sampling as the OpenTelemetry SDK decides it, and the header sent upstream."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from fastproxy.config import load_config
from fastproxy.dataplane.tracecontext import TraceStarter, attempt_outcome, parse_traceparent
from fastproxy.httpclient.backend import Backend

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_read() -> None:
    assert parse_traceparent(TP) == (
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        True,
    )
    assert parse_traceparent(TP[:-1] + b"0") is not None
    assert parse_traceparent(TP[:-1] + b"0")[2] is False  # type: ignore[index]
    # A later version may carry more after the flags.
    assert parse_traceparent(b"01" + TP[2:] + b"-extra") is not None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        b"ff" + TP[2:],  # version ff is forbidden
        TP + b"-extra",  # version 00 ends at the flags
        TP.upper(),  # lower-case hex only
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(value: bytes) -> None:
    assert parse_traceparent(value) is None
    trace = TraceStarter("parentbased_always_on").begin(value)
    assert trace.parent_id == 0 and trace.sampled


def test_parent_based_follows_the_flag_and_the_root_sampler_decides_roots() -> None:
    on = TraceStarter("parentbased_always_on")
    off = TraceStarter("parentbased_always_off")
    assert on.begin(TP).sampled and off.begin(TP).sampled
    unsampled = TP[:-1] + b"0"
    assert not on.begin(unsampled).sampled and not off.begin(unsampled).sampled
    assert on.begin(None).sampled and not off.begin(None).sampled
    # Not parent-based: the caller's flag does not count.
    assert not TraceStarter("always_off").begin(TP).sampled
    assert TraceStarter("always_on").begin(unsampled).sampled


def test_the_ratio_decides_as_the_sdk_does() -> None:
    starter = TraceStarter("traceidratio", 0.25)
    sdk = TraceIdRatioBased(0.25)
    decisions = []
    for _ in range(2000):
        trace = starter.begin(None)
        expected = sdk.should_sample(None, trace.trace_id, "x").decision.is_sampled()
        assert trace.sampled == expected
        decisions.append(trace.sampled)
    # Binomial(2000, 0.25): sd 19.4; +-100 is over 5 of them.
    assert 400 <= sum(decisions) <= 600


def test_each_attempt_gets_its_span_in_the_header_it_sends() -> None:
    config = load_config(
        env={},
        use_files=False,
        cli={"backends": {"o": {"type": "openai", "api_url": "http://h:81"}}},
    ).config
    backend = Backend("o", config.backends["o"])
    starter = TraceStarter("parentbased_always_on")
    trace = starter.begin(TP)
    first = starter.attempt(trace, backend, "gpt-4o", 1.0)
    attempt_outcome(trace, 503, None, 2.0)
    second = starter.attempt(trace, backend, "gpt-4o", 2.0)
    attempt_outcome(trace, 200, None, 3.0)
    attempt_outcome(trace, 0, "reset", 4.0)  # cut after its head: keeps the 200
    a, b = trace.attempts
    assert first == b"traceparent: 00-%032x-%016x-01\r\n" % (trace.trace_id, a.span_id)
    assert second == b"traceparent: 00-%032x-%016x-01\r\n" % (trace.trace_id, b.span_id)
    assert a.span_id != b.span_id != trace.span_id
    assert (a.status, a.error, a.ended_at) == (503, None, 2.0)
    assert (b.status, b.error, b.ended_at) == (200, "reset", 4.0)
    assert (b.host, b.port, b.kind, b.backend) == ("h", 81, "openai", "o")
