"""``fastproxy mock-llm --from-capture FILE``: answer with what backends answered in a capture.

Every captured backend attempt (a dir-2 request and the dir-3 head and body that
answered it) becomes one canned answer. An incoming request takes the first unused
answer whose request had the same method, path, model and messages; else the first
unused one with the same method and path (capture order); else, when every match was
used already, the last one that matched exactly (so a replay can run twice). The head
is written as captured (with a reason phrase, which the capture does not keep), the body
as the same bytes: a stream's reads one chunk each, paced as captured (scaled by
``speed``; 0 = no pauses), and a stream the capture saw cut is cut again (the connection
closes without the last chunk). A request nothing matches gets a 404 JSON error.
"""

from __future__ import annotations

import asyncio
import http
import logging
from dataclasses import dataclass

import orjson

from ..storage.capture_reader import (
    TERMINAL,
    Attempt,
    api_of,
    group_exchanges,
    read_capture,
    split_message,
)

log = logging.getLogger("fastproxy.mockllm")
MAX_HEAD = 64 * 1024


@dataclass(slots=True)
class Canned:
    method: str
    path: str
    key: tuple[str, str, str, bytes]  # method, path, model, messages (canonical JSON)
    head: bytes  # as captured: status line without a reason, headers, blank line
    chunks: list[tuple[float, bytes]]  # (seconds after the head, bytes)
    chunked: bool
    complete: bool  # a stream the backend finished (else it is cut again)
    used: bool = False


def _request_key(method: str, path: str, body: bytes) -> tuple[str, str, str, bytes]:
    model, messages = "", b""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        model = str(doc.get("model", ""))
        # Messages (chat, Anthropic) or input (Responses): what the model was asked.
        asked = doc.get("messages", doc.get("input"))
        messages = orjson.dumps(asked, option=orjson.OPT_SORT_KEYS)
    return (method, path.split("?", 1)[0], model, messages)


def _canned(a: Attempt) -> Canned | None:
    if a.head_event is None:
        return None
    head, first = split_message(a.head_event.data)
    req_head, req_body = split_message(a.request.data)
    if head is None or req_head is None:
        return None
    status = head.status or 200
    parts = req_head.line.split(" ")
    method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    line, _, rest = a.head_event.data.partition(b"\r\n")
    head_bytes = line + b" " + reason.encode() + b"\r\n" + rest
    head_bytes = head_bytes[: len(head_bytes) - len(first)]
    t0 = a.head_event.ts
    chunks = [(0.0, first)] if first else []
    chunks.extend((e.ts - t0, e.data) for e in a.body)
    chunked = (head.get("transfer-encoding") or "").lower() == "chunked"
    body = b"".join(c for _, c in chunks)
    if a.is_stream:
        complete = any(t in body for t in TERMINAL[api_of(path)])
    else:
        length = head.get("content-length")
        complete = length is None or (length.isdigit() and int(length) == len(body))
    return Canned(
        method, path, _request_key(method, path, req_body), head_bytes, chunks, chunked, complete
    )


def load_answers(paths: list[str]) -> list[Canned]:
    capture = read_capture(paths)
    for damage in capture.damage:
        log.warning("mock-llm --from-capture: %s", damage.describe())
    out = []
    for ex in group_exchanges(capture.events):
        for a in ex.attempts:
            canned = _canned(a)
            if canned is not None:
                out.append(canned)
    return out


class CaptureReplayServer:
    """The listener. Same lifecycle as `MockLLMServer`: start(), url, close()."""

    def __init__(
        self, answers: list[Canned], host: str = "127.0.0.1", port: int = 0, speed: float = 1.0
    ) -> None:
        self.answers = answers
        self.host = host
        self.port = port
        self.speed = speed
        self.url = ""
        self.served = 0
        self.unmatched = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/v1"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def match(self, method: str, path: str, body: bytes) -> Canned | None:
        key = _request_key(method, path, body)
        exact = [c for c in self.answers if c.key == key]
        for c in exact:
            if not c.used:
                return c
        for c in self.answers:
            if not c.used and c.method == method and c.path == key[1]:
                return c
        return exact[-1] if exact else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                method, path, body = request
                canned = self.match(method, path, body)
                if canned is None:
                    self.unmatched += 1
                    writer.write(_not_found(method, path))
                    await writer.drain()
                    continue
                canned.used = True
                self.served += 1
                if not await self._answer(canned, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, canned: Canned, writer: asyncio.StreamWriter) -> bool:
        """Write one canned answer; False when the connection must close (a cut stream)."""
        writer.write(canned.head)
        await writer.drain()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for offset, data in canned.chunks:
            if self.speed > 0:
                delay = start + offset / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the captured pacing, not a wait for state
            if canned.chunked:
                writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
            else:
                writer.write(data)
            await writer.drain()
        if not canned.complete:
            # The backend cut this one in the capture: cut it again.
            writer.transport.abort()
            return False
        if canned.chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return True


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    if len(raw) > MAX_HEAD:
        return None
    head, _ = split_message(raw)
    if head is None:
        return None
    parts = head.line.split(" ")
    if len(parts) < 2:
        return None
    body = b""
    if (head.get("transfer-encoding") or "").lower() == "chunked":
        pieces = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            pieces += await reader.readexactly(size + 2)
            del pieces[-2:]
        body = bytes(pieces)
    elif (length := head.get("content-length")) and length.isdigit():
        body = await reader.readexactly(int(length))
    return parts[0], parts[1], body


def _not_found(method: str, path: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": f"no captured backend answer matches {method} {path}",
                "type": "not_found_error",
                "code": "not_in_capture",
            }
        }
    )
    return (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
