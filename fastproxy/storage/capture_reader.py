"""Reading wire-capture files back (the format is in docs/capture.md).

A file is one CBOR header map and then one map per event. Files are read whole into typed
events; damage (a file cut in the middle of an event by a crash or a copy of a file being
written, bytes that are not CBOR, an event that is not an event map, data that does not
decompress) ends the reading of that file where it is found and is reported as a
`CaptureDamage` with the byte offset and what was wrong, never as an exception, so a
tool can show everything before it.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

MAGIC = "LLMPROXY-CAPTURE-V2"
DIRECTIONS = ("client-in", "client-out", "backend-out", "backend-in")
DIRECTION_TITLES = (
    "client -> proxy",
    "proxy -> client",
    "proxy -> backend",
    "backend -> proxy",
)


class CaptureError(Exception):
    """A file that cannot be read at all: missing, unreadable, or not a capture."""


@dataclass(frozen=True, slots=True)
class CaptureEvent:
    ts: float
    dir: int
    seq: int
    data: bytes
    meta: dict[str, Any]
    file: str  # the file it came from
    offset: int  # where its item starts in that file
    writer: str  # the header's session_id: request ids are unique per writer only

    @property
    def rid(self) -> Any:
        return self.meta.get("rid")

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.dir]


@dataclass(frozen=True, slots=True)
class CaptureDamage:
    file: str
    offset: int  # byte offset of the first item not read
    file_size: int
    message: str

    def describe(self) -> str:
        return (
            f"{self.file}: {self.message} at byte {self.offset} of {self.file_size}; "
            "the events before it were read"
        )


@dataclass(slots=True)
class CaptureFile:
    path: str
    header: dict[str, Any]
    events: list[CaptureEvent] = field(default_factory=list)
    damage: CaptureDamage | None = None


def _check_header(path: str, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or item.get("magic") != MAGIC:
        raise CaptureError(f"{path}: not a wire capture (no {MAGIC} header)")
    if item.get("version") != 2:
        raise CaptureError(f"{path}: capture version {item.get('version')!r} is not supported")
    return item


def _event(path: str, offset: int, writer: str, item: Any) -> CaptureEvent | str:
    """The event, or what is wrong with the item."""
    if not isinstance(item, dict):
        return f"an item of type {type(item).__name__} where an event map was expected"
    ts, direction, seq, data = item.get("ts"), item.get("dir"), item.get("seq"), item.get("data")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "an event without a numeric ts"
    if direction not in (0, 1, 2, 3) or isinstance(direction, bool):
        return f"an event with dir {direction!r} (expected 0..3)"
    if not isinstance(seq, int):
        return "an event without an integer seq"
    if not isinstance(data, bytes):
        return "an event whose data is not a byte string"
    enc = item.get("enc")
    if enc == "zlib":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            return f"event seq {seq}: its zlib data does not decompress ({exc})"
    elif enc is not None:
        return f"event seq {seq}: unknown encoding {enc!r}"
    meta = item.get("meta") or {}
    if not isinstance(meta, dict):
        return f"event seq {seq}: meta is not a map"
    return CaptureEvent(float(ts), direction, seq, data, meta, path, offset, writer)


def read_file(path: str | os.PathLike[str]) -> CaptureFile:
    """Every event of one file up to the first damage. Raises `CaptureError` only when
    nothing can be read: the file cannot be opened or does not start with a header."""
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise CaptureError(f"{name}: cannot read: {exc.strerror or exc}") from None
    stream = io.BytesIO(raw)
    decoder = cbor2.CBORDecoder(stream)
    try:
        header = _check_header(name, decoder.decode())
    except (cbor2.CBORDecodeError, EOFError, ValueError) as exc:
        raise CaptureError(f"{name}: not a wire capture ({exc})") from None
    out = CaptureFile(name, header)
    writer = str(header.get("session_id", name))
    size = len(raw)
    while (offset := stream.tell()) < size:
        try:
            item = decoder.decode()
        except (cbor2.CBORDecodeEOF, EOFError):
            out.damage = CaptureDamage(
                name,
                offset,
                size,
                f"truncated: the file ends inside an event ({size - offset} bytes)",
            )
            break
        except (cbor2.CBORDecodeError, ValueError, RecursionError) as exc:
            out.damage = CaptureDamage(name, offset, size, f"corrupt: {exc}")
            break
        ev = _event(name, offset, writer, item)
        if isinstance(ev, str):
            out.damage = CaptureDamage(name, offset, size, f"corrupt: {ev}")
            break
        out.events.append(ev)
    return out


def capture_paths(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files named, and the capture files of directories named, in writing order.

    Rotated files of one writer are named by their start time and a counter that only
    grows, so the name order is the writing order."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(path.glob("capture-*.cbor"))
            if not found:
                raise CaptureError(f"{path}: no capture-*.cbor files in this directory")
            out.extend(os.fspath(f) for f in found)
        elif path.exists():
            out.append(os.fspath(path))
        else:
            raise CaptureError(f"{path}: no such file or directory")
    return out


@dataclass(slots=True)
class Capture:
    files: list[CaptureFile]
    events: list[CaptureEvent]  # every file's events, in time order

    @property
    def damage(self) -> list[CaptureDamage]:
        return [f.damage for f in self.files if f.damage is not None]


def read_capture(paths: Iterable[str | os.PathLike[str]]) -> Capture:
    """Files and directories together. Events of several writers (workers, runs) are
    merged by time; within one writer the order is its own (seq), which ts follows."""
    files = [read_file(p) for p in capture_paths(paths)]
    events = [e for f in files for e in f.events]
    # A stable sort: events of one writer with the same ts keep their written order.
    events.sort(key=lambda e: e.ts)
    return Capture(files, events)


def iter_events(paths: Iterable[str | os.PathLike[str]]) -> Iterator[CaptureEvent]:
    yield from read_capture(paths).events


# --- exchanges: one API request's events, grouped --------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """A request or response head: first line and headers (names lower-cased)."""

    line: str
    headers: list[tuple[str, str]]

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return default

    @property
    def status(self) -> int | None:
        parts = self.line.split(" ", 2)
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return None


def split_message(data: bytes) -> tuple[Head | None, bytes]:
    """(head, the bytes after it) of a message starting with a head, else (None, data)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None, data
    lines = data[:end].decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    return Head(lines[0], headers), data[end + 4 :]


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The payload of chunked-framed bytes, and whether the last (zero) chunk was seen.
    Stops quietly at a framing it cannot read (a cut capture)."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), False
        if size == 0:
            return bytes(out), True
        out += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


@dataclass(slots=True)
class Attempt:
    """One request the gateway sent to a backend, and what that backend answered."""

    request: CaptureEvent  # dir 2
    backend: str | None
    model: str | None
    head_event: CaptureEvent | None = None  # the dir-3 event holding the head
    body: list[CaptureEvent] = field(default_factory=list)  # dir-3 events after it

    @property
    def head(self) -> Head | None:
        return split_message(self.head_event.data)[0] if self.head_event else None

    @property
    def status(self) -> int | None:
        if self.head_event is None:
            return None
        sc = self.head_event.meta.get("sc")
        return sc if isinstance(sc, int) else (self.head.status if self.head else None)

    @property
    def body_bytes(self) -> bytes:
        # The head event may carry body bytes after the head; none in practice, but the
        # format does not forbid it.
        first = split_message(self.head_event.data)[1] if self.head_event else b""
        return first + b"".join(e.data for e in self.body)

    @property
    def is_stream(self) -> bool:
        head = self.head
        return bool(head and "text/event-stream" in (head.get("content-type") or ""))


@dataclass(slots=True)
class Exchange:
    writer: str
    rid: Any
    events: list[CaptureEvent] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, Any]:
        return (self.writer, self.rid)

    @property
    def start(self) -> float:
        return self.events[0].ts

    @property
    def session(self) -> str | None:
        for e in self.events:
            if "sid" in e.meta:
                return str(e.meta["sid"])
        return None

    @property
    def request_bytes(self) -> bytes:
        return b"".join(e.data for e in self.events if e.dir == 0)

    @property
    def request(self) -> tuple[Head | None, bytes]:
        return split_message(self.request_bytes)

    @property
    def method_path(self) -> tuple[str, str]:
        head = self.request[0]
        if head is None:
            return "", ""
        parts = head.line.split(" ")
        return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")

    @property
    def response_bytes(self) -> bytes:
        """What the client was sent, as written (head, then body, chunked framing kept)."""
        return b"".join(e.data for e in self.events if e.dir == 1)

    @property
    def client_status(self) -> int | None:
        head = split_message(self.response_bytes)[0]
        return head.status if head else None

    @property
    def stream_start(self) -> CaptureEvent | None:
        return next((e for e in self.events if e.dir == 1 and e.meta.get("ss")), None)

    @property
    def stream_end(self) -> CaptureEvent | None:
        return next((e for e in self.events if e.dir == 1 and e.meta.get("se")), None)

    @property
    def outcome(self) -> str | None:
        end = self.stream_end
        return str(end.meta.get("oc")) if end is not None and "oc" in end.meta else None

    @property
    def backends(self) -> list[str]:
        return [a.backend for a in self.attempts if a.backend]


def group_exchanges(events: Iterable[CaptureEvent]) -> list[Exchange]:
    """Exchanges in the order they started. Backend answers (dir 3) belong to the latest
    attempt of their exchange: the gateway sends one attempt at a time."""
    by_key: dict[tuple[str, Any], Exchange] = {}
    for e in events:
        key = (e.writer, e.rid)
        ex = by_key.get(key)
        if ex is None:
            ex = by_key[key] = Exchange(e.writer, e.rid)
        ex.events.append(e)
        if e.dir == 2:
            be, mod = e.meta.get("be"), e.meta.get("mod")
            ex.attempts.append(Attempt(e, str(be) if be else None, str(mod) if mod else None))
        elif e.dir == 3 and ex.attempts:
            attempt = ex.attempts[-1]
            if attempt.head_event is None:
                attempt.head_event = e
            else:
                attempt.body.append(e)
    return list(by_key.values())


def api_of(path: str) -> str:
    """openai, anthropic or responses: which stream grammar a path speaks."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/responses"):
        return "responses"
    return "openai"


TERMINAL = {
    "openai": (b"data: [DONE]",),
    "anthropic": (b"message_stop",),
    "responses": (b"response.completed", b"response.incomplete", b"response.failed"),
}
TERMINAL_NAME = {
    "openai": "data: [DONE]",
    "anthropic": "message_stop",
    "responses": "response.completed",
}
