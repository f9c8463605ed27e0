"""A stream chunk is captured once: the client's copy (dir 1) travels to the writer as a
reference to the backend's event (dir 3), and the writer writes it whole.

The writer's side is tested on frames made by both builds' CaptureBuffer; the whole path
through a real gateway, a real mock backend and a raw client socket, whose bytes the
dir-1 events must equal exactly."""

from __future__ import annotations

import os
import random
import socket
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2
import httpx
import orjson
import pytest

from fastproxy.mockllm import MockLLMServer
from fastproxy.storage import capture_writer
from fastproxy.storage.capture_writer import (
    COMPRESS_MIN,
    ItemBuilder,
    adler32_combine,
    read_frames,
)
from tests.capture.support import data_of, stream_ended
from tests.conftest import RunningGateway, backend_for
from tests.speedups.helpers import IMPLS, impl_module
from tests.support.waiting import wait_until

CHUNK = b'data: {"choices":[{"delta":{"content":"hello there"}}]}\n\n' * 40
USAGE = b'data: {"choices":[],"usage":{"total_tokens":9}}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.fixture(params=IMPLS)
def speedups_impl(request: pytest.FixtureRequest) -> ModuleType:
    """Both builds' CaptureBuffer and capture_items (the compiled one skipped if unbuilt)."""
    return impl_module(request.param)


def test_adler32_combine_agrees_with_zlib() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = os.urandom(rng.randrange(0, 200))
        b = os.urandom(rng.randrange(0, 70_000))
        got = adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b))
        assert got == zlib.adler32(a + b)


def test_compress_min_reaches_every_referable_payload(speedups_impl: ModuleType) -> None:
    """The writer keeps the payload a reference may name only if every such payload
    reaches its Python side: the compiled writer hands over frames from COMPRESS_MIN."""
    assert speedups_impl.CAPTURE_REF_MIN >= COMPRESS_MIN


def _buffer(m: ModuleType) -> Any:
    return m.CaptureBuffer((), (), lambda d, f: d, lambda full: None, 1 << 26, 1 << 30, 1e9, 0.0)


def _chunked(payload: bytes) -> tuple[bytes, int]:
    framed = b"%x\r\n%b\r\n" % (len(payload), payload)
    return framed, len(framed) - len(payload) - 2


def _decoded(items: list[bytes]) -> list[tuple[int, bytes, dict[str, Any]]]:
    out = []
    for item in items:
        ev = cbor2.loads(item)
        data = zlib.decompress(ev["data"]) if ev.get("enc") == "zlib" else ev["data"]
        out.append((ev["dir"], data, ev))
    return out


@pytest.mark.parametrize("deflater", ["zlib-ng", "zlib"])
@pytest.mark.parametrize("writer", ["compiled", "pure"])
def test_writer_rebuilds_every_reference(
    speedups_impl: ModuleType, writer: str, deflater: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compressible chunks (the spliced stream), a chunk with the usage event cut, an
    incompressible chunk, a non-chunked client, and small events in between: every
    dir-1 item decodes to exactly the bytes written to the client, and no payload is
    compressed twice where the loop told the writer how to reuse it. With either
    compressor the writer may use (zlib-ng, or zlib where it is missing), decoded by the
    standard library's zlib, as any reader of the files would."""
    if deflater == "zlib":
        monkeypatch.setattr(capture_writer, "DEFLATE", zlib)
    else:
        zlib_ng = pytest.importorskip("zlib_ng.zlib_ng")
        assert capture_writer.DEFLATE is zlib_ng
    buf = _buffer(speedups_impl)
    noise = os.urandom(3000)
    expected: list[tuple[int, bytes]] = []

    def send(
        payload: bytes,
        framed: bytes,
        at: int,
        cuts: tuple[tuple[int, int], ...],
        split: bool = True,
    ) -> None:
        if cuts and split:
            buf.split(3, b'{"rid":5}', payload, tuple(p for cut in cuts for p in cut))
        else:
            buf.event(3, b'{"rid":5}', payload)
        buf.relayed(1, b'{"rid":5}', payload, framed, at, cuts)
        expected.extend([(3, payload), (1, framed)])

    send(CHUNK, *_chunked(CHUNK), ())
    buf.event(1, b'{"rid":6}', b"small, another exchange")
    expected.append((1, b"small, another exchange"))
    whole = CHUNK * 3 + USAGE + DONE
    start = len(CHUNK) * 3
    send(whole, *_chunked(CHUNK * 3 + DONE), ((start, start + len(USAGE)),))
    send(noise, *_chunked(noise), ())
    send(CHUNK * 2, CHUNK * 2, 0, ())  # an HTTP/1.0 client: no framing at all
    # A cut the backend's event was not split for: rebuilt and compressed on its own.
    send(whole, *_chunked(CHUNK * 3 + DONE), ((start, start + len(USAGE)),), split=False)
    assert buf.referred == 5
    raw = buf.take()
    build = ItemBuilder()
    compressed: list[int] = []
    real = capture_writer.deflate

    def counted(data: bytes, points: tuple[int, ...] = ()) -> Any:
        compressed.append(len(data))
        return real(data, points)

    monkeypatch.setattr(capture_writer, "deflate", counted)
    if writer == "compiled":
        items, used = speedups_impl.capture_items(raw, COMPRESS_MIN, build)
        assert used == len(raw)
    else:
        items = [build(*frame) for frame in read_frames(bytearray(raw))]
    got = _decoded(items)
    assert [(d, data) for d, data, _ in got] == expected
    # The first reference reused the backend event's deflate stream: compressed, and
    # about as small as the payload's own (the framing adds a few bytes).
    first_ref = got[1][2]
    assert first_ref["enc"] == "zlib"
    assert len(first_ref["data"]) < len(got[0][2]["data"]) + 32
    # The incompressible chunk's client copy is stored as it is.
    assert "enc" not in got[6][2] and got[6][1] == expected[6][1]
    # Each payload compressed once, the split one included; only the client's copy of
    # the last (cut, its backend event not split) a second time.
    framed_last = expected[-1][1]
    assert compressed == [
        len(CHUNK),
        len(whole),
        len(noise),
        len(CHUNK * 2),
        len(whole),
        len(framed_last),
    ]


def test_a_reference_to_nothing_is_refused(speedups_impl: ModuleType) -> None:
    """A reference whose frame before it the writer never saw is a broken stream."""
    buf = _buffer(speedups_impl)
    buf.event(3, b"{}", CHUNK)
    buf.relayed(1, b"{}", CHUNK, *_chunked(CHUNK), ())
    frames = read_frames(bytearray(buf.take()))
    with pytest.raises(ValueError, match="refers to a frame"):
        ItemBuilder()(*frames[1])


# -- end to end ---------------------------------------------------------------------------
Factory = Callable[..., RunningGateway]
CLIENT_KEY = "client-key-PLANTED-51ab3e"


def _raw_post(
    port: int, path: str, body: dict[str, Any], extra: str, version: str = "1.1"
) -> bytes:
    """The whole response as it came off the socket (chunked framing kept)."""
    data = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/{version}\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {CLIENT_KEY}\r\n{extra}connection: close\r\n"
        f"content-length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head + data)
        parts = []
        while chunk := s.recv(1 << 16):
            parts.append(chunk)
    return b"".join(parts)


def _assert_referred(gw: RunningGateway) -> None:
    """The chunks did travel by reference, and nothing was dropped."""
    health = httpx.get(
        gw.url + "/internal/health",
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    ).json()
    assert health["wire_capture"]["events_referred"] >= 1
    assert health["wire_capture"]["dropped"] == 0


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_stream_capture_equals_the_wire(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path, dialect: str
) -> None:
    """Events of ~3 KB (``x-mock-event-bytes``): each backend read is over the reference
    threshold. What the client read off its socket is exactly the dir-1 events joined;
    what the backend sent is the dir-3 events after the head; and the chunks did travel
    by reference (``events_referred``)."""
    out = tmp_path / "captures"
    gw = gateway_factory(
        {
            "backends": {f"{dialect}.1": backend_for(mock_llm, dialect)},
            "auth": {"api_keys": [CLIENT_KEY]},
            "wire_capture": {"enabled": True, "output_dir": str(out)},
        }
    )
    if dialect == "openai":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {
            "model": "gpt-4o",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    else:
        path = "/v1/messages"
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    wire = _raw_post(gw.port, path, body, "x-mock-tokens: 40\r\nx-mock-event-bytes: 3000\r\n")
    assert wire.startswith(b"HTTP/1.1 200")
    assert wire.endswith(b"0\r\n\r\n")
    events = wait_until(lambda: stream_ended(out), what="the stream's end marker")
    client = b"".join(data_of(e) for e in events if e["dir"] == 1)
    assert client == wire
    backend = [e for e in events if e["dir"] == 3]
    assert "sc" in backend[0].get("meta", {})  # the backend's head first
    sent = b"".join(data_of(e) for e in backend[1:])
    assert len(sent) > 40 * 3000
    final = b"data: [DONE]" if dialect == "openai" else b"event: message_stop"
    assert final in sent
    if dialect == "openai":
        # The gateway asked for usage and cut that event from the client's copy: the
        # backend's side has it, the client's does not.
        assert b'"usage"' in sent and b'"usage"' not in client
    _assert_referred(gw)


def test_http10_stream_capture_equals_the_wire(
    gateway_factory: Factory, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """An HTTP/1.0 client gets the stream without chunked framing (the connection's end
    ends it): the references then carry no framing at all, and still rebuild exactly
    what the client read, the usage event cut out included."""
    out = tmp_path / "captures"
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm, "openai")},
            "auth": {"api_keys": [CLIENT_KEY]},
            "wire_capture": {"enabled": True, "output_dir": str(out)},
        }
    )
    body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    extra = "x-mock-tokens: 40\r\nx-mock-event-bytes: 3000\r\n"
    wire = _raw_post(gw.port, "/v1/chat/completions", body, extra, version="1.0")
    assert wire.startswith(b"HTTP/1.1 200") and wire.rstrip().endswith(b"data: [DONE]")
    events = wait_until(lambda: stream_ended(out), what="the stream's end marker")
    client = b"".join(data_of(e) for e in events if e["dir"] == 1)
    assert client == wire
    assert b"transfer-encoding: chunked" not in client.lower()
    sent = b"".join(data_of(e) for e in events if e["dir"] == 3 and "sc" not in e.get("meta", {}))
    assert b'"usage"' in sent and b'"usage"' not in client
    _assert_referred(gw)
