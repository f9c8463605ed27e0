"""Micro-benchmarks of the data plane's hot-path pieces, in process, no sockets.

Run:  .venv/bin/pytest bench/micro --benchmark-only -p no:cacheprovider -o testpaths=bench

What one request and one stream chunk cost inside the gateway, without the event loop
and the kernel: the load benchmark (bench/load) gives the end-to-end figures, these say
which piece of them is ours.
- request-route: parse a request head + small JSON body with httptools (the same
  callbacks `ClientProtocol` keeps: lower-cased header list, URL pieces, body parts),
  decode the body with orjson, then `routing.plan`;
- route-only: `routing.plan` alone;
- sse-relay-*: `SSERelay` on one upstream chunk (one event, a 32 KiB read of ~140
  events as the mock writes unpaced streams, and a chunk ending in the usage-only event
  the gateway strips), with the compiled and the pure scanner;
- sse-stream-*: one whole 200-event OpenAI stream as the gateway relays it with usage
  tracking on (include_usage injected, so every chunk carries `"usage":null`, the
  usage-only chunk is stripped, accounting on, chunked framing): relay and accounting
  built, every chunk fed, the record's figures read. Cut three ways: one event per
  read (a token-paced backend), seeded random reads of 16-1024 bytes (a network
  cutting anywhere), 32 KiB reads (an unpaced backend). Per chunk = per stream /
  ``extra_info["chunks"]``. The file runs unchanged against the relay before the
  pass-through (SSEScanner per event), so ``git worktree add /tmp/sse-before <commit>``
  plus a copy of this file there gives the before figures in the same session (see
  docs/speedups.md);
- simple-response: `wire.simple_response` for a ~600-byte JSON answer.
"""

from __future__ import annotations

import random
from typing import Any

import httptools
import orjson
import pytest

from fastproxy._speedups import _pure
from fastproxy.config import BackendConfig
from fastproxy.dataplane import wire
from fastproxy.dataplane.accounting import StreamAccounting
from fastproxy.dataplane.dialects import openai
from fastproxy.dataplane.relay import MAX_EVENT_BYTES, SSERelay
from fastproxy.dataplane.routing import plan
from fastproxy.httpclient.backend import Backend

from .impls import IMPLS

# ------------------------------------------------------------------ request + route

BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world!"}]})
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8000\r\n"
    b"User-Agent: OpenAI/Python 1.54.0\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"Authorization: Bearer sk-bench-0000000000000000\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
)
BACKENDS = {
    name: Backend(
        name,
        BackendConfig(type="openai", api_url=f"http://127.0.0.1:900{i}/v1", models=models),
        env={},
    )
    for i, (name, models) in enumerate(
        [
            ("openai.1", ("gpt-4o", "gpt-4o-mini")),
            ("openai.2", ("gpt-4o",)),
            ("local", ("llama-3.1-8b",)),
        ]
    )
}
FAILOVER = {"gpt-4o": ("local:llama-3.1-8b",)}


class _Head:
    """The per-request work ClientProtocol's parser callbacks do, minus limits and timers."""

    __slots__ = ("body", "headers", "parser", "path", "url")

    def __init__(self) -> None:
        self.url: list[bytes] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.path = b""
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.parser.get_method()
        self.parser.should_keep_alive()
        self.path = b"".join(self.url).partition(b"?")[0]

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


@pytest.mark.benchmark(group="request-route")
def test_request_parse_and_route(benchmark) -> None:
    def run() -> int:
        head = _Head()
        head.parser.feed_data(REQUEST)
        body = orjson.loads(head.body[0] if len(head.body) == 1 else b"".join(head.body))
        return len(plan(body["model"], "openai", BACKENDS, None, FAILOVER, None))

    assert benchmark(run) == 3


@pytest.mark.benchmark(group="route-only")
def test_route_only(benchmark) -> None:
    assert benchmark(plan, "gpt-4o", "openai", BACKENDS, None, FAILOVER, None)[0][1] == "gpt-4o"


# ------------------------------------------------------------------ SSE relay

_PREFIX = (
    b'data: {"id":"chatcmpl-8fb97f0000000001","object":"chat.completion.chunk",'
    b'"created":1795418045,"model":"gpt-4o","system_fingerprint":"fp_mock",'
    b'"choices":[{"index":0,"delta":{"content":'
)
_SUFFIX = b'},"logprobs":null,"finish_reason":null}]}\n\n'


def _event(word: str) -> bytes:
    return _PREFIX + orjson.dumps(" " + word) + _SUFFIX


ONE_EVENT = _event("horizon")
BATCH = b"".join(_event(w) for w in ("narrow", "road", "stories", "glow") * 64)[: 32 * 1024]
BATCH = BATCH[: BATCH.rindex(b"\n\n") + 2]  # whole events only, as the mock writes them
USAGE_TAIL = (
    _event("done") + b'data: {"id":"chatcmpl-8fb97f0000000001","object":"chat.completion.chunk",'
    b'"created":1795418045,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":4,'
    b'"completion_tokens":200,"total_tokens":204}}\n\n'
)


class _NullTransport:
    """Swallows the relay's writes. Callable too, so it fits both relay signatures (a
    write callable, or a transport with write() and get_write_buffer_size())."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    __call__ = write

    def get_write_buffer_size(self) -> int:
        return 0


# Whether this checkout has the pass-through relay (SSEPass); the file also runs against
# the relay before it, for the before/after figures.
_PASS = hasattr(_pure, "SSEPass")


def _relay(impl: str, acct: StreamAccounting | None = None, chunked: bool = False) -> SSERelay:
    transport: Any = _NullTransport()
    if impl == "python" and _PASS:
        scanner = _pure.SSEPass(MAX_EVENT_BYTES, _pure.PASS_OPENAI)
        return SSERelay(transport, openai, True, acct, None, chunked, scanner=scanner)
    relay = SSERelay(transport, openai, True, acct, None, chunked)
    if impl == "python":
        relay._scanner = _pure.SSEScanner(MAX_EVENT_BYTES)  # type: ignore[assignment,attr-defined,unused-ignore]
        if acct is not None:
            acct.delta = _pure.DeltaScanner()
    return relay


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.benchmark(group="sse-relay-one-event")
def test_relay_one_event(benchmark, impl: str) -> None:
    relay = _relay(impl)
    benchmark(relay, ONE_EVENT)
    assert relay.events > 0 and not relay.overflow


@pytest.mark.benchmark(group="sse-relay-32k-chunk")
def test_relay_32k_chunk(benchmark, impl: str) -> None:
    relay = _relay(impl)
    benchmark(relay, BATCH)
    benchmark.extra_info["events_per_chunk"] = BATCH.count(b"\n\n")
    assert relay.events > 0


@pytest.mark.benchmark(group="sse-relay-usage-strip")
def test_relay_usage_strip(benchmark, impl: str) -> None:
    relay = _relay(impl)
    benchmark(relay, USAGE_TAIL)
    assert relay.usage is not None


# ------------------------------------------------------------------ whole streams

_HEAD = (
    b'data: {"id":"chatcmpl-8fb97f0000000001","object":"chat.completion.chunk",'
    b'"created":1795418045,"model":"gpt-4o","system_fingerprint":"fp_mock","choices":['
)
_WORDS = ("narrow", "road", "stories", "glow", "über", "river", "quiet", "morning.")


def _stream_events() -> list[bytes]:
    """200 events as OpenAI sends them with include_usage: role, 196 deltas, finish,
    the usage-only chunk, [DONE]; every chunk carries "usage":null."""
    tail = b'"logprobs":null,"finish_reason":%s}],"usage":null}\n\n'
    events = [_HEAD + b'{"index":0,"delta":{"role":"assistant","content":""},' + tail % b"null"]
    for i in range(196):
        word = orjson.dumps(" " + _WORDS[i % len(_WORDS)])
        events.append(_HEAD + b'{"index":0,"delta":{"content":%b},' % word + tail % b"null")
    events.append(_HEAD + b'{"index":0,"delta":{},' + tail % b'"stop"')
    events.append(
        _HEAD + b'],"usage":{"prompt_tokens":12,"completion_tokens":196,"total_tokens":208}}\n\n'
    )
    events.append(b"data: [DONE]\n\n")
    return events


STREAM_EVENTS = _stream_events()
STREAM = b"".join(STREAM_EVENTS)


def _random_reads(data: bytes, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(16, 1024)
        out.append(data[pos : pos + n])
        pos += n
    return out


CUTS = {
    "per-event": STREAM_EVENTS,
    "random-16-1024": _random_reads(STREAM),
    "32k-reads": [STREAM[i : i + 32768] for i in range(0, len(STREAM), 32768)],
}


def _relay_stream(impl: str, chunks: list[bytes]) -> tuple[int, int, int]:
    """What cycle.py does per stream: build, feed every chunk, read the figures."""
    acct = StreamAccounting()
    relay = _relay(impl, acct, chunked=True)
    for chunk in chunks:
        relay(chunk)
    relay.finish()
    assert relay.terminal and relay.usage is not None
    return relay.bytes_tx, acct.tokens, acct.delivered_tokens(relay.bytes_tx, aborted=False)


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.benchmark(group="sse-stream-200-events")
def test_relay_stream(benchmark, impl: str, cut: str) -> None:
    chunks = CUTS[cut]
    bytes_tx, tokens, delivered = benchmark(_relay_stream, impl, chunks)
    benchmark.extra_info["chunks"] = len(chunks)
    benchmark.extra_info["events"] = len(STREAM_EVENTS)
    # Everything but the stripped usage-only chunk went out, and the text was counted.
    assert bytes_tx == len(STREAM) - len(STREAM_EVENTS[-2])
    assert tokens == delivered > 150


# ------------------------------------------------------------------ response bytes

JSON_ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion",' + b'"x":"' + b"a" * 520 + b'"}'
DATE = b"date: Mon, 23 Nov 2026 07:14:05 GMT\r\n"


@pytest.mark.benchmark(group="simple-response")
def test_simple_response(benchmark) -> None:
    out = benchmark(wire.simple_response, 200, JSON_ANSWER, keep_alive=True, date=DATE)
    assert out.endswith(JSON_ANSWER)
