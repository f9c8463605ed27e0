"""Wire capture: the loop's side (redaction, framing) behind the `WireTap` seam.

The request cycle opens one `ExchangeTap` per API request when capture is on and hands
it the bytes of every leg. Here, on the loop, each piece is redacted (credentials never
leave the loop, not even to the writer process), framed and appended to the link's
buffer; the link hands the buffer to the writer process once per loop iteration
(storage/capture_link.py), which encodes CBOR, compresses and writes files
(storage/capture_writer.py). docs/capture.md has the format and the rules.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .._speedups import (
    REDACT_HEADER,
    REDACT_JSON,
    REDACT_LITERAL,
    REDACT_QUERY,
    REDACT_SHAPE,
    CaptureBuffer,
    redact_flags,
)
from ..config import Config
from ..config.loader import resolve_state_path
from ..core.transports import WrappedTransport
from ..storage.capture_link import FLUSH_BYTES, CaptureLink

log = logging.getLogger("fastproxy.capture")

# Credentials a client or the gateway sends in a head (or a backend in Set-Cookie).
REDACT_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
)
REDACTED = b"[REDACTED]"
# JSON members whose string value is a credential, whatever the API.
_JSON_SECRET = re.compile(
    rb'(?i)("(?:[a-z0-9_-]*api[_-]?key|access[_-]?token|refresh[_-]?token|id[_-]?token'
    rb'|client[_-]?secret|secret[_-]?key|password|authorization)"\s*:\s*")'
    rb'(?:[^"\\]|\\.)*"'
)
# Strings shaped like provider keys (OpenAI and Anthropic sk-..., Google AIza...).
_KEY_SHAPE = re.compile(rb"sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}")
# A key in a query string (Google's ?key=).
_QUERY_KEY = re.compile(rb"(?i)([?&](?:key|api[_-]?key|access[_-]?token)=)[^&\s\"#]+")
# Configured secrets shorter than this are not searched for literally: they would
# blank ordinary words all over the payloads (the header rules still hold).
MIN_LITERAL = 8


class Redactor:
    """Everything captured passes here, on the loop, before it is appended anywhere.

    Most pieces hold nothing to redact, so the first step is `_speedups.redact_flags`:
    one compiled pass that names the rules whose trigger words occur (a rule cannot
    match without its trigger). Only those rules run, as regular expressions; a stream
    chunk or a head usually needs none of them."""

    def __init__(self, extra_headers: Iterable[str], secrets: Iterable[str]) -> None:
        names = sorted({*REDACT_HEADERS, *(h.strip().lower() for h in extra_headers if h.strip())})
        alternatives = b"|".join(re.escape(n.encode("latin-1")) for n in names)
        # Multiline: a head is several lines; a body line that looks like a credential
        # header is redacted too, which costs nothing but a few bytes of payload.
        self._header = re.compile(rb"(?im)^(" + alternatives + rb")([ \t]*:)[^\r\n]*")
        builtin = set(REDACT_HEADERS)
        self.extras = tuple(n.encode("latin-1") for n in names if n not in builtin)
        known = sorted({s for s in secrets if len(s) >= MIN_LITERAL}, key=len, reverse=True)
        self.secrets = tuple(s.encode("utf-8") for s in known)
        self._literal = (
            re.compile(b"|".join(re.escape(s.encode("utf-8")) for s in known)) if known else None
        )

    def flags(self, data: bytes | bytearray | memoryview) -> int:
        """Which rules ``data`` needs (0: none, the usual answer)."""
        return redact_flags(data, self.secrets, self.extras)

    def __call__(self, data: bytes) -> bytes:
        return self.apply(data, self.flags(data))

    def apply(self, data: bytes, flags: int) -> bytes:
        """Run the rules named by ``flags`` (from `flags` on the same data). Each rule
        works on the result of the one before."""
        if flags & REDACT_LITERAL and self._literal is not None:
            data = self._literal.sub(REDACTED, data)
        if flags & REDACT_HEADER:
            # Credential headers live in a head: when the data has one, only the head is
            # searched (the body can be large and its lines are not headers).
            end = data.find(b"\r\n\r\n")
            if end < 0:
                data = self._header.sub(rb"\1\2 [REDACTED]", data)
            else:
                data = self._header.sub(rb"\1\2 [REDACTED]", data[:end]) + data[end:]
        if flags & REDACT_JSON:
            data = _JSON_SECRET.sub(rb'\1[REDACTED]"', data)
        if flags & REDACT_SHAPE:
            data = _KEY_SHAPE.sub(REDACTED, data)
        if flags & REDACT_QUERY:
            data = _QUERY_KEY.sub(rb"\1[REDACTED]", data)
        return data


def known_secrets(config: Config, env: Mapping[str, str]) -> list[str]:
    """The keys the gateway itself holds: each backend's, the clients', the admins'. They
    are searched for literally in everything captured, so even a key a client pasted into
    a prompt, or a backend echoed, is not written."""
    out: list[str] = [*config.auth.api_keys, *config.admin.api_keys]
    for k in config.auth.keys:
        # A key known only by its hash cannot be searched for; the headers that carry
        # keys are redacted whatever they hold.
        if k.secret:
            out.append(k.secret)
        if k.secret_env and env.get(k.secret_env):
            out.append(env[k.secret_env])
    for b in config.backends.values():
        if b.api_key:
            out.append(b.api_key)
        if b.api_key_env and env.get(b.api_key_env):
            out.append(env[b.api_key_env])
    return out


class _TapTransport(WrappedTransport):
    """The client transport with every write also captured as a dir-1 event."""

    __slots__ = ("_buffer", "_meta")

    def __init__(self, inner: asyncio.Transport, buffer: CaptureBuffer, meta: bytes) -> None:
        super().__init__(inner)
        self._buffer = buffer
        self._meta = meta

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer.event(1, self._meta, data)
        self._inner.write(data)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)


class _Exchange:
    """One exchange's tap. Its meta (request id, session) is serialised once; an event
    with meta of its own adds only those members."""

    __slots__ = ("_buffer", "_inner", "_open", "_plain")

    def __init__(self, buffer: CaptureBuffer, rid: int, sid: str | None) -> None:
        self._buffer = buffer
        self._inner: asyncio.Transport | None = None
        head: dict[str, Any] = {"rid": rid}
        if sid is not None:
            head["sid"] = sid
        self._plain = orjson.dumps(head)
        self._open = self._plain[:-1] + b","

    def event(
        self, direction: int, data: bytes | bytearray | memoryview, meta: dict[str, Any] | None
    ) -> None:
        self._buffer.event(
            direction, self._open + orjson.dumps(meta)[1:] if meta else self._plain, data
        )

    def wrap(self, transport: asyncio.Transport) -> asyncio.Transport:
        self._inner = transport
        return _TapTransport(transport, self._buffer, self._plain)

    def stream_chunk(
        self, raw: bytes, framed: bytes | None, at: int, cuts: tuple[tuple[int, int], ...]
    ) -> None:
        buffer = self._buffer
        if cuts:
            # Where the client's copy leaves bytes out: the writer compresses the pieces
            # apart, so the reference below reuses them.
            points = sorted({p for cut in cuts for p in cut} - {0, len(raw)})
            buffer.split(3, self._plain, raw, tuple(points))
        else:
            buffer.event(3, self._plain, raw)
        if framed is not None:
            inner = self._inner
            assert inner is not None, "stream_chunk before wrap"
            buffer.relayed(1, self._plain, raw, framed, at, cuts)
            inner.write(framed)


class CaptureService:
    """The `WireTap` the gateway plugs into the data plane when wire_capture is on."""

    def __init__(
        self,
        config: Config,
        env: Mapping[str, str],
        *,
        prefix: str = "",
        share: int = 1,
        worker: int | None = None,
    ) -> None:
        wc = config.wire_capture
        self.dir = resolve_state_path(config, wc.output_dir)
        self.redact = Redactor(wc.redact_headers, known_secrets(config, env))
        meta: dict[str, Any] = {"gateway": "fastproxy", "pid": os.getpid()}
        if worker is not None:
            meta["worker"] = worker
        self.link = CaptureLink(
            Path(self.dir),
            prefix=prefix,
            max_file_bytes=wc.max_file_bytes,
            # Workers share the directory's cap: each keeps its own files within its share.
            max_total_bytes=max(wc.max_total_bytes // share, 1),
            meta=meta,
            on_disabled=self._disabled,
        )
        self.skipped = 0  # exchanges not captured: capture was disabled by then
        # Wall-clock stamps that never go backwards: one wall reading, then the monotonic
        # clock (a clock step while capturing would otherwise reorder events by ts).
        self.buffer = CaptureBuffer(
            self.redact.secrets,
            self.redact.extras,
            self.redact.apply,
            self.link.wake,
            self.link.limit,
            FLUSH_BYTES,
            time.time(),
            time.monotonic(),
        )
        self.link.attach(self.buffer)

    async def start(self) -> None:
        log.info("wire capture: %s", self.dir)
        await self.link.launch()

    async def stop(self) -> None:
        await self.link.close()

    def _disabled(self, reason: str) -> None:
        log.error("wire capture disabled: %s; traffic is not affected", reason)

    # -- WireTap -----------------------------------------------------------------------
    def open(self, request_id: int, session_id: str | None) -> _Exchange | None:
        if self.link.disabled is not None:
            self.skipped += 1
            return None
        return _Exchange(self.buffer, request_id, session_id)

    def status(self) -> dict[str, Any]:
        link, last = self.link, self.link.last
        return {
            "enabled": True,
            "state": "disabled" if link.disabled is not None else "on",
            "reason": link.disabled,
            "dir": os.fspath(self.dir),
            "events_captured": self.buffer.seq,
            "events_written": last.get("events_written", 0),
            "bytes_written": last.get("bytes_written", 0),
            "files_opened": last.get("files_opened", 0),
            "files_deleted": last.get("files_deleted", 0),
            "dropped": self.buffer.dropped,
            "events_referred": self.buffer.referred,
            "exchanges_skipped": self.skipped,
        }
