"""Tracing's switches and failure modes, each with a real gateway process: sampling off
exports nothing but still propagates; tracing off sends nothing and forwards the
caller's ``traceparent`` untouched; a collector that is down costs no request; workers
each export their own spans."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai

from fastproxy.mockllm import MockLLMServer
from tests.support.proc import GatewayProcess
from tests.support.waiting import wait_until

from .e2e import received_traceparents, split, start, two_backends
from .receiver import SERVER, OtlpReceiver

MSGS = [{"role": "user", "content": "hi"}]
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED_CALLER = "00-0af7651916cd43dd8448eb211c80319d-b7ad6b7169203332-00"


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="sk-client", max_retries=0
    )


def chat(c: openai.OpenAI, traceparent: str | None = None, stream: bool = False) -> None:
    headers = {"traceparent": traceparent} if traceparent else {}
    if stream:
        chunks = list(
            c.chat.completions.create(
                model="gpt-4o", messages=MSGS, max_tokens=3, stream=True, extra_headers=headers
            )
        )
        assert chunks
    else:
        reply = c.chat.completions.create(
            model="gpt-4o", messages=MSGS, max_tokens=3, extra_headers=headers
        )
        assert reply.choices[0].message.content


def test_always_off_exports_nothing_but_propagates(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_TRACES_SAMPLER": "always_off"}
    gw = start(tmp_path, {"backends": two_backends(mock_llm), "tracing": {"enabled": True}}, env)
    gateways.append(gw)
    with client(gw) as c:
        chat(c)
        chat(c, CALLER)  # not parent-based: the caller's sampled flag does not count
        chat(c, stream=True)
    root, caller, streamed = (split(tp) for tp in received_traceparents(mock_llm) if tp)
    assert root[2] == caller[2] == streamed[2] == "00"  # propagated, marked unsampled
    assert caller[0] == CALLER.split("-")[1]  # the caller's trace continues
    assert caller[1] != CALLER.split("-")[2]  # under the gateway's own span
    # A graceful stop exports whatever the gateway held: after it, nothing can come.
    assert gw.stop() == 0
    assert receiver.posts == 0


def test_parent_based_follows_the_callers_flag(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_TRACES_SAMPLER": "parentbased_always_off",
    }
    gw = start(tmp_path, {"backends": two_backends(mock_llm), "tracing": {"enabled": True}}, env)
    gateways.append(gw)
    with client(gw) as c:
        chat(c)  # a root: not sampled
        chat(c, UNSAMPLED_CALLER)  # the caller did not sample it
        chat(c, CALLER)  # the caller sampled it: so does the gateway
    root, unsampled, sampled = (split(tp) for tp in received_traceparents(mock_llm) if tp)
    assert (root[2], unsampled[2], sampled[2]) == ("00", "00", "01")
    wait_until(lambda: receiver.trace(sampled[0]), timeout=15, what="the sampled trace")
    # Spans leave in the order requests ended: the earlier ones would be here by now.
    assert {s.trace_id for s in receiver.snapshot()} == {sampled[0]}
    assert gw.stop() == 0


def test_tracing_off_sends_nothing_and_forwards_the_callers_traceparent(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    # The standard variables are set, but tracing.enabled is not: off.
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_TRACES_EXPORTER": "otlp"}
    gw = start(tmp_path, {"backends": two_backends(mock_llm)}, env)
    gateways.append(gw)
    with client(gw) as c:
        chat(c, CALLER)
        chat(c)
        chat(c, CALLER, stream=True)
    assert received_traceparents(mock_llm) == [CALLER, None, CALLER]
    assert gw.stop() == 0
    assert receiver.posts == 0


def test_sdk_disabled_wins_over_enabled(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SDK_DISABLED": "true"}
    tree = {"backends": two_backends(mock_llm), "tracing": {"enabled": True}}
    gw = start(tmp_path, tree, env)
    gateways.append(gw)
    with client(gw) as c:
        chat(c, CALLER)
    assert received_traceparents(mock_llm) == [CALLER]
    assert gw.stop() == 0
    assert receiver.posts == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_collector_that_is_down_costs_no_request(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{closed_port()}/v1/traces"}
    tree = {
        "backends": two_backends(mock_llm),
        "tracing": {"enabled": True, "max_queue": 16},
        "timeouts": {"drain_seconds": 1},
    }
    gw = start(tmp_path, tree, env)
    gateways.append(gw)
    t0 = time.monotonic()
    with client(gw) as c:
        for i in range(40):
            chat(c, stream=i % 2 == 1)
    assert time.monotonic() - t0 < 30
    assert len(received_traceparents(mock_llm)) == 40
    # 80 spans against a queue of 16 that the dead collector never drains: dropped, and
    # said so (counted, not queued).
    wait_until(lambda: "dropped so far" in gw.output(), timeout=10, what="the drop warning")
    # Still serving, and its stop is not held by the exporter's retries.
    with client(gw) as c:
        chat(c)
    t0 = time.monotonic()
    assert gw.stop() == 0
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in gw.output()


def test_each_worker_exports_its_own_spans(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    tree = {"backends": two_backends(mock_llm), "tracing": {"enabled": True}, "workers": 2}
    gw = start(tmp_path, tree, env)
    gateways.append(gw)
    for _ in range(12):
        with client(gw) as c:  # a new connection each: the kernel spreads them
            chat(c)
    traces = [split(tp)[0] for tp in received_traceparents(mock_llm) if tp]
    assert len(set(traces)) == 12
    wait_until(
        lambda: {s.trace_id for s in receiver.requests()} >= set(traces),
        timeout=20,
        what="every request's span",
    )
    requests = [s for s in receiver.snapshot() if s.kind == SERVER]
    assert len(requests) == 12  # each exported once
    instances = {s.resource.get("service.instance.id") for s in requests}
    assert instances <= {"worker-1", "worker-2"}
    assert gw.stop() == 0


def test_nothing_of_opentelemetry_is_imported_when_tracing_is_off() -> None:
    code = (
        "import sys, fastproxy.gateway, fastproxy.workers.worker, fastproxy.dataplane.cycle;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_shows_no_export_header(tmp_path: Path) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20tok-91c2",
        "XDG_CONFIG_HOME": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "fastproxy", "check-config"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "tracing.headers = ***" in out.stdout
    assert "tok-91c2" not in out.stdout + out.stderr


def test_bad_tracing_values_are_one_line_without_the_value(
    mock_factory: Callable[..., MockLLMServer],
) -> None:
    from fastproxy.config import ConfigError, load_config

    env = {"OTEL_EXPORTER_OTLP_HEADERS": "tok-secret-no-equals"}
    try:
        load_config(env=env, use_files=False)
    except ConfigError as err:
        assert "tracing.headers" in str(err) and "tok-secret" not in str(err)
    else:
        raise AssertionError("a header without = was accepted")


def exporter_pid(gw: GatewayProcess) -> int:
    # Started from a thread (off the loop): the child of whichever task forked it.
    tasks = Path(f"/proc/{gw.pid}/task").iterdir()
    for child in [c for t in tasks for c in (t / "children").read_text().split()]:
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"fastproxy.monitor.tracing" in cmdline:
            return int(child)
    raise AssertionError("no tracing exporter process")


def test_an_exporter_process_that_dies_costs_no_request(
    tmp_path: Path,
    mock_llm: MockLLMServer,
    receiver: OtlpReceiver,
    gateways: list[GatewayProcess],
) -> None:
    import os
    import signal

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    gw = start(tmp_path, {"backends": two_backends(mock_llm), "tracing": {"enabled": True}}, env)
    gateways.append(gw)
    pid = exporter_pid(gw)
    # The exporter's command line holds no secret: its configuration is in its environment.
    assert b"OTEL" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: "exporter process ended" in gw.output(), timeout=10, what="the log line")
    with client(gw) as c:
        for i in range(6):
            chat(c, stream=i % 2 == 1)
    assert len(received_traceparents(mock_llm)) == 6  # still traced upstream
    assert gw.stop() == 0
