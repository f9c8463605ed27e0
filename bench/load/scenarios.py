"""What is measured: the scenarios, as data.

Groups (``--scenarios a,b,c,d``):
- a: JSON chat completion, small body (16-token answer, ~600 bytes), concurrency 1
  (``a1``: added latency) and 64 (``a64``: throughput);
- b: SSE chat completion of 200 content events at concurrency 64, unpaced (``b``:
  events/s relayed) and paced at 2 ms per event (``bp``: the delay a relay adds between
  events when it is not saturated; unpaced streams arrive in batches, which hides it);
- c: 2,000 concurrent slow streams (4 events/s each) held open for the whole round
  (``c``: CPU, RSS per open stream, errors);
- d: a1, a64 and b again on fastproxy with each monitoring feature on, interleaved with
  the baseline so that the cost of each feature is a ratio measured at the same time;
- e: a64 with gateway policy configured (``e-a64``): 100 named keys, each with its own
  rate limits, a limit on the model, and the model served by a least_busy group of two
  backends, against the same gateway with none of it; every request carries one of the
  100 keys in turn (the baseline, which has no keys, ignores it).

Backends: nginx serving canned answers from memory (the default, bench/load/backend.py)
or the mock LLM (``--backend mock``). Scenarios that need pacing (bp, c) always use the
mock: nginx cannot space events in time. Streams are asked for with the header
``x-bench-stream: 1`` (the canned backend routes on it; the mock ignores it) as well as
``"stream": true`` in the body.

Targets: ``direct`` (client → backend), ``nginx``, ``fastproxy`` (usage tracking off), the
``fastproxy+<feature>`` variants, and the optional peers ``litellm`` and ``reference``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MODEL = "gpt-4o"
MESSAGES = [{"role": "user", "content": "hello world!"}]
JSON_BODY = json.dumps({"model": MODEL, "messages": MESSAGES}, separators=(",", ":"))
STREAM_HEADER = "x-bench-stream: 1"
SSE_BODY = json.dumps({"model": MODEL, "stream": True, "messages": MESSAGES}, separators=(",", ":"))

# Monitoring variants of scenario d: target name -> fastproxy_config() keyword flags.
FEATURES: dict[str, dict[str, bool]] = {
    "fastproxy+usage": {"usage": True},
    # Usage tracking into PostgreSQL (a cluster the harness starts, bench/load/pgcluster.py)
    # instead of the embedded SQLite file: the two stores' cost side by side.
    "fastproxy+usage-pg": {"usage": True, "usage_pg": True},
    "fastproxy+activity": {"activity": True},
    "fastproxy+capture": {"capture": True},
    "fastproxy+all": {"usage": True, "activity": True, "capture": True},
    "fastproxy+policy": {"policy": True},
    # OpenTelemetry spans of every request, exported over OTLP/HTTP to a sink the harness
    # starts on the helper core (bench/load/otlpsink.py).
    "fastproxy+tracing": {"tracing": True},
}
# The variants of d: the monitoring features (policy is group e's).
MONITORING = (
    "fastproxy+usage",
    "fastproxy+usage-pg",
    "fastproxy+activity",
    "fastproxy+capture",
    "fastproxy+all",
    "fastproxy+tracing",
)
# A service module that must exist for a feature to be more than an accepted config key
# (any one of the names: the layout was still settling while these benchmarks were written).
FEATURE_MODULES: dict[str, tuple[str, ...]] = {
    "usage": ("fastproxy.monitor.usage_service", "fastproxy.monitor.usage"),
    "usage_pg": ("fastproxy.storage.pg_store",),
    "activity": ("fastproxy.monitor.activity",),
    "capture": ("fastproxy.monitor.capture", "fastproxy.monitor.wire_capture", "fastproxy.capture"),
    "policy": ("fastproxy.core.keys",),
    "tracing": ("fastproxy.monitor.tracing",),
}
# Scenario e's named keys: how many, and the secret of each (bench_key); the gateway is
# configured with their SHA-256 (processes.fastproxy_config).
POLICY_KEYS = 100


def bench_key(i: int) -> str:
    return f"sk-bench-{i:03d}-0123456789abcdef"


BASE_TARGETS = ("direct", "nginx", "fastproxy")
GROUPS = {
    "a": ("a1", "a64"),
    "b": ("b", "bp"),
    "c": ("c",),
    "d": ("d-a1", "d-a64", "d-b"),
    "e": ("e-a64",),
}


@dataclass(frozen=True)
class Workload:
    kind: str  # "json" | "sse"
    connections: int
    body: str
    headers: tuple[str, ...] = ()
    path: str = "/v1/chat/completions"
    ramp_s: float = 0.0
    requests_per_conn: int = 0  # 0: closed loop until the round ends
    drain_s: float = 0.0
    # Send ``Authorization: Bearer bench_key(i)`` for i = 0, 1, ... keys-1 in turn.
    keys: int = 0


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    workload: Workload
    targets: tuple[str, ...]
    rounds: int
    duration_s: float
    warmup_s: float
    # c: one long round, RSS sampled while every stream is open, no warm-up load.
    slow_streams: bool = False
    stream_s: float = 0.0
    # Events spaced in time: only the mock can do it, whatever --backend says.
    paced: bool = False


def build(
    groups: list[str], rounds: int, duration_s: float, quick: bool, peers: tuple[str, ...] = ()
) -> list[Scenario]:
    """The scenarios to run, in order. ``quick`` shrinks every round to a smoke test."""
    warmup = 0.5 if quick else 2.0
    base = (*BASE_TARGETS, *peers)
    sse = ("x-mock-tokens: 200", STREAM_HEADER)
    json_a = Workload("json", 1, JSON_BODY)
    a64 = Workload("json", 64, JSON_BODY)
    b = Workload("sse", 64, SSE_BODY, sse)
    bp = Workload("sse", 64, SSE_BODY, (*sse, "x-mock-interval-ms: 2"))
    # c: 4 events per second for the whole round. One request per connection: the stream
    # is as long as the round, so all streams are open at once in the middle of it.
    c_streams, c_seconds = (400, 6.0) if quick else (2000, 30.0)
    interval_ms = 250
    tokens = int(c_seconds * 1000 / interval_ms)
    c = Workload(
        "sse",
        c_streams,
        SSE_BODY,
        (f"x-mock-tokens: {tokens}", f"x-mock-interval-ms: {interval_ms}", STREAM_HEADER),
        ramp_s=2.0 if quick else 4.0,
        requests_per_conn=1,
    )
    # nginx runs in d too, so "fastproxy with usage tracking / nginx" is measured at once.
    variants = ("nginx", "fastproxy", *MONITORING)
    a64_keys = Workload("json", 64, JSON_BODY, keys=POLICY_KEYS)
    table = {
        "a1": Scenario(
            "a1",
            "JSON chat completion, concurrency 1 (added latency)",
            json_a,
            base,
            rounds,
            duration_s,
            warmup,
        ),
        "a64": Scenario(
            "a64",
            "JSON chat completion, concurrency 64 (throughput)",
            a64,
            base,
            rounds,
            duration_s,
            warmup,
        ),
        "b": Scenario(
            "b",
            "SSE chat completion, 200 events, concurrency 64, unpaced",
            b,
            base,
            rounds,
            duration_s,
            warmup,
        ),
        "bp": Scenario(
            "bp",
            "SSE chat completion, 200 events 2 ms apart, concurrency 64 (added inter-event delay)",
            bp,
            base,
            rounds,
            duration_s,
            warmup,
            paced=True,
        ),
        "c": Scenario(
            "c",
            f"{c_streams} concurrent slow streams (4 events/s) for {c_seconds:.0f} s",
            c,
            BASE_TARGETS,
            1,
            c_seconds + c.ramp_s + 20,
            0.0,
            slow_streams=True,
            stream_s=c_seconds,
            paced=True,
        ),
        "d-a1": Scenario(
            "d-a1", "a1 with monitoring features on", json_a, variants, rounds, duration_s, warmup
        ),
        "d-a64": Scenario(
            "d-a64", "a64 with monitoring features on", a64, variants, rounds, duration_s, warmup
        ),
        "d-b": Scenario(
            "d-b", "b with monitoring features on", b, variants, rounds, duration_s, warmup
        ),
        "e-a64": Scenario(
            "e-a64",
            f"a64 with gateway policy ({POLICY_KEYS} named keys with limits, a least_busy group)",
            a64_keys,
            ("nginx", "fastproxy", "fastproxy+policy"),
            rounds,
            duration_s,
            warmup,
        ),
    }
    keys: list[str] = []
    for g in groups:
        for k in GROUPS.get(g, (g,)):
            if k not in table:
                raise ValueError(
                    f"unknown scenario {g!r}; choose from a, b, c, d, e or " + ", ".join(table)
                )
            if k not in keys:
                keys.append(k)
    return [table[k] for k in keys]
