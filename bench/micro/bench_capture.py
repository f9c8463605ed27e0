"""Micro-benchmarks of wire capture's per-event work on the loop, in process, no sockets.

Run:  .venv/bin/pytest bench/micro/bench_capture.py --benchmark-only -p no:cacheprovider \\
          -o testpaths=bench

- capture-event-*: `CaptureBuffer.event` (bound, stamp, redaction test, frame) on the
  pieces of a JSON exchange (a 175-byte client request, an 860-byte client answer) and
  on a 48 KB SSE read (the canned benchmark stream), compiled and pure;
- capture-redact: the same with a backend key in the head, so the header rule runs;
- capture-items: the writer's side, the CBOR items of a JSON exchange's five frames.

With capture off the gateway does none of this: the request cycle tests ``_tap is not
None`` at five points per request (docs/capture.md, "What it costs"); the load harness's
``fastproxy+capture`` variant gives the end-to-end figure.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import orjson
import pytest

from fastproxy.monitor.capture import Redactor
from fastproxy.storage.capture_writer import COMPRESS_MIN, event_item

from .impls import IMPLS, impl_module

HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\n"
    b"host: 127.0.0.1:18080\r\ncontent-length: 62\r\n\r\n"
    b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
)
KEYED = HEAD.replace(b"host:", b"authorization: Bearer sk-bench0123456789abcdefghij\r\nhost:")
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 615\r\n"
    b"x-usage-prompt-tokens: 7\r\nx-usage-completion-tokens: 16\r\n\r\n"
    + json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 400}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 16, "total_tokens": 23},
        }
    ).encode()
)
CHUNK = b"".join(
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":'
    b'{"content":"token %d "},"logprobs":null,"finish_reason":null}]}\n\n' % i
    for i in range(200)
)
META = b'{"rid":12345}'


def _buffer(mod: ModuleType) -> Any:
    redact = Redactor([], [])
    return mod.CaptureBuffer(
        redact.secrets, redact.extras, redact.apply, lambda full: None, 1 << 30, 1 << 62, 0.0, 0.0
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("piece", "data"), [("head", HEAD), ("answer", ANSWER), ("sse", CHUNK)])
def test_event(benchmark: Any, impl: str, piece: str, data: bytes) -> None:
    mod = impl_module(impl)
    buf = _buffer(mod)
    benchmark.group = f"capture-event-{piece}"
    benchmark.extra_info["bytes"] = len(data)

    def one() -> None:
        buf.event(1, META, data)
        if len(buf) > 1 << 24:
            buf.clear()

    benchmark(one)


@pytest.mark.parametrize("impl", IMPLS)
def test_redact(benchmark: Any, impl: str) -> None:
    mod = impl_module(impl)
    buf = _buffer(mod)
    benchmark.group = "capture-redact"

    def one() -> None:
        buf.clear()
        buf.event(0, META, KEYED)

    benchmark(one)
    assert b"sk-bench" not in bytes(buf.take())  # the key is gone from what was framed


@pytest.mark.parametrize("impl", IMPLS)
def test_items(benchmark: Any, impl: str) -> None:
    mod = impl_module(impl)
    frames = bytearray()
    for d, data in ((0, HEAD), (2, HEAD), (3, ANSWER[:120]), (3, ANSWER[120:]), (1, ANSWER)):
        mod.append_capture_frame(frames, 1733370000.25, 7, d, META, data)

    def slow(ts: float, seq: int, direction: int, meta: bytes, data: bytes) -> bytes:
        return event_item(ts, seq, direction, orjson.loads(meta) if meta else None, data)

    benchmark.group = "capture-items"
    items, used = benchmark(mod.capture_items, frames, COMPRESS_MIN, slow)
    assert used == len(frames) and len(items) == 5
