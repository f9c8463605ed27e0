"""The wire-capture writer: a process of its own that turns event frames into CBOR files.

Started by the gateway's `CaptureLink` (capture_link.py) with one end of a Unix
socketpair: ``python -m fastproxy.storage.capture_writer --fd N --dir DIR ...``. The
gateway's loop only redacts and appends frames; encoding, compression and every file
operation happen here, so a slow or failing disk never reaches the loop.

Frames in (gateway → writer), each already redacted: ``FRAME`` (u32 length of the rest,
f64 wall-clock ts, u64 seq, u8 direction, u32 meta length), the meta as JSON, the data.
A frame whose direction has the ``CAPTURE_REF`` bit carries no payload: it is the frame
before it relayed again between a prefix and a suffix (an SSE chunk written to the
client in chunked framing). ``ItemBuilder`` writes it out whole, and when the payload
was compressed reuses that compressed stream instead of compressing it a second time.

Files out: ``capture-{prefix}{UTC time}-{n}.cbor``, concatenated CBOR items in the V2
layout (docs/capture.md): one header map, then one map per event. A file is closed and a
new one opened before an event would take it past ``max_file_bytes``; after each write
the oldest files (this prefix's) are deleted while the total is over ``max_total_bytes``.

Status out (writer → gateway): one JSON object per line, after a batch and at least every
half second: bytes written, files, events, deleted files, and ``disabled`` with its
reason. Any OSError on a file (disk full, a read-only or removed directory) disables the
writer for good: it keeps reading its socket so the gateway never backs up, and says so
once in its status; the gateway logs the one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cbor2
import orjson

try:
    # zlib-ng writes the same format (zlib and every reader of it decode the files) and
    # compresses ~3x faster at level 1 (a 48 KB SSE stream: 10 µs against 33 µs), with
    # SIMD checksums; the writer's compression is most of its CPU on a stream load.
    from zlib_ng import zlib_ng as _zlib_ng

    DEFLATE: Any = _zlib_ng
except ImportError:  # a platform with no zlib-ng wheel: the standard library's
    DEFLATE = zlib

from .._speedups import (
    CAPTURE_REF,
    CAPTURE_REF_MIN,
    CAPTURE_SPLIT,
    IMPLEMENTATION,
    capture_items,
)
from ..memory import tune_allocator

MAGIC = "LLMPROXY-CAPTURE-V2"
VERSION = 2
FRAME = struct.Struct("<IdQBI")  # length of the rest, ts, seq, dir, meta length
_REST = struct.Struct("<dQBI")
STATUS_EVERY_S = 0.5
# Below this an event is stored as it is. zlib starts every stream by setting up ~256
# KiB of state (about 1 µs with the allocator thresholds of fastproxy/memory.py, tens of
# µs without), and a few hundred bytes shrink by a quarter at best. Heads and short JSON
# answers are most events, and the writer shares its core with everything else; a
# kilobyte and up is where compressing pays. It must not exceed CAPTURE_REF_MIN: every
# payload a reference may name has to reach ItemBuilder, which keeps it.
COMPRESS_MIN = 1024
# The fastest level: on stream chunks zlib's compresses ~2.7x faster than its default (6)
# for files ~15 % larger (0.024 of the input against 0.021 on a capture of SSE chunks).
# The writer shares a core with everything else on a small machine, and at saturation
# its compression rate, not the disk, decides how much of the traffic is captured.
COMPRESS_LEVEL = 1


def pack_event(ts: float, seq: int, direction: int, meta: bytes, data: bytes) -> bytes:
    """One frame as the gateway sends it (the link uses the same layout)."""
    return (
        FRAME.pack(_REST.size + len(meta) + len(data), ts, seq, direction, len(meta)) + meta + data
    )


Buffer = bytes | memoryview
# A payload's compressed pieces: (start, end, deflate blocks) in order, each piece's
# blocks byte-aligned and free of references to other pieces (a full flush after each).
Pieces = list[tuple[int, int, bytes]]


def deflate(data: Buffer, points: Sequence[int] = ()) -> tuple[bytes, Pieces, int]:
    """``data`` zlib-compressed, as one stream that ``zlib.decompress`` reads, plus what a
    reference to it reuses: the deflate blocks of each piece between ``points`` (not
    final, byte-aligned, and after a full flush, so a piece refers only to itself) and
    the Adler-32 of the whole."""
    c = DEFLATE.compressobj(COMPRESS_LEVEL)
    if not points:
        whole = c.compress(data) + c.flush(DEFLATE.Z_FULL_FLUSH)
        tail = c.flush()
        return whole + tail, [(0, len(data), whole[2:])], int.from_bytes(tail[-4:], "big")
    view = memoryview(data)  # pieces without copies
    pieces: Pieces = []
    body: list[bytes] = []
    start = 0
    for end in (*points, len(data)):
        part = c.compress(view[start:end]) + c.flush(DEFLATE.Z_FULL_FLUSH)
        if not pieces:
            header, part = part[:2], part[2:]
            body.append(header)
        pieces.append((start, end, part))
        body.append(part)
        start = end
    tail = c.flush()  # the final empty block and the Adler-32
    body.append(tail)
    return b"".join(body), pieces, int.from_bytes(tail[-4:], "big")


def _stored(data: bytes, final: bool) -> bytes:
    """``data`` as deflate stored blocks (at a byte boundary), the last one final or not."""
    out = []
    for at in range(0, len(data), 0xFFFF):
        part = data[at : at + 0xFFFF]
        last = final and at + 0xFFFF >= len(data)
        out.append(struct.pack("<BHH", 1 if last else 0, len(part), len(part) ^ 0xFFFF) + part)
    if final and not data:
        out.append(b"\x01\x00\x00\xff\xff")
    return b"".join(out)


_ADLER_MOD = 65521
_REF_HEAD = struct.Struct("<II")  # a reference: prefix length, number of cuts
_CUT = struct.Struct("<II")  # a cut's start and end in the referred payload
_U32 = struct.Struct("<I")


def adler32_combine(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of two pieces joined, from each piece's (the second's length known).
    A = 1 + the byte sum and B = the sum of every prefix's A, both mod 65521: joining
    adds the second's sums, and each of its bytes' prefixes also holds the first's A - 1."""
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_MOD
    b = (b1 + b2 + second_len * (a1 - 1)) % _ADLER_MOD
    return (b << 16) | a


def adler32_head(whole: int, tail: int, tail_len: int) -> int:
    """The Adler-32 of a payload's head, from the whole's and the rest's: the inverse of
    ``adler32_combine`` (so the head, usually most of the payload, is not read again)."""
    aw, bw = whole & 0xFFFF, whole >> 16
    at, bt = tail & 0xFFFF, tail >> 16
    a = (aw - at + 1) % _ADLER_MOD
    b = (bw - bt - tail_len * (a - 1)) % _ADLER_MOD
    return (b << 16) | a


def event_item(
    ts: float, seq: int, direction: int, meta: dict[str, Any] | None, data: bytes
) -> bytes:
    packed = deflate(data)[0] if len(data) >= COMPRESS_MIN else None
    return _item(ts, seq, direction, meta, data, packed)


def _item(
    ts: float,
    seq: int,
    direction: int,
    meta: dict[str, Any] | None,
    data: Buffer,
    packed: bytes | None,
) -> bytes:
    event: dict[str, Any] = {"ts": ts, "dir": direction, "seq": seq}
    if packed is not None and len(packed) < len(data):
        event["data"] = packed
        event["enc"] = "zlib"
    else:
        event["data"] = data if type(data) is bytes else bytes(data)
    if meta:
        event["meta"] = meta
    return cbor2.dumps(event)


class ItemBuilder:
    """The CBOR items the compiled ``capture_items`` leaves to Python: data to compress,
    a meta that is not flat, split frames and references. It keeps the last payload it
    saw (every frame of ``CAPTURE_REF_MIN`` bytes and more comes here) with its
    compressed pieces, for the reference that may follow it."""

    __slots__ = ("_last", "_last_seq")

    def __init__(self) -> None:
        self._last_seq = -1
        # The last frame's payload, its compressed pieces (None: stored as it is) and
        # the payload's Adler-32.
        self._last: tuple[Buffer, Pieces | None, int] | None = None

    def __call__(self, ts: float, seq: int, direction: int, meta: bytes, data: Buffer) -> bytes:
        parsed = orjson.loads(meta) if meta else None
        if direction & CAPTURE_REF:
            item = self._ref(ts, seq, direction & ~CAPTURE_REF, parsed, bytes(data))
            self._last = None
        else:
            points: tuple[int, ...] = ()
            if direction & CAPTURE_SPLIT:
                direction &= ~CAPTURE_SPLIT
                (count,) = _U32.unpack_from(data)
                points = struct.unpack_from(f"<{count}I", data, 4)
                # A view: the payload is not copied again (compressed, or kept for the
                # reference; stored as it is only when compression does not pay).
                data = memoryview(data)[4 + 4 * count :]
            packed = None
            if len(data) >= COMPRESS_MIN:
                packed, pieces, adler = deflate(data, points)
                self._last = (data, pieces, adler)
            else:
                self._last = (data, None, 0) if len(data) >= CAPTURE_REF_MIN else None
            item = _item(ts, seq, direction, parsed, data, packed)
        self._last_seq = seq
        return item

    def _ref(
        self, ts: float, seq: int, direction: int, meta: dict[str, Any] | None, ref: bytes
    ) -> bytes:
        last = self._last
        if last is None or self._last_seq != seq - 1:
            # The gateway refers only to the frame just before, which is always one of
            # ours: anything else is a broken stream, and writing it would be a lie.
            raise ValueError(f"capture frame {seq} refers to a frame the writer does not hold")
        at, count = _REF_HEAD.unpack_from(ref)
        o = _REF_HEAD.size + 8 * count
        prefix, suffix = ref[o : o + at], ref[o + at :]
        cuts = list(_CUT.iter_unpack(ref[_REF_HEAD.size : o]))
        payload, pieces, adler = last
        kept, pos = [], 0
        for start, end in cuts:
            if start > pos:
                kept.append((pos, start))
            pos = end
        if pos < len(payload) or not cuts:
            kept.append((pos, len(payload)))
        # Views, not copies: the body the client got is joined only if it has to be
        # compressed again (its pieces do not line up with the payload's).
        view = memoryview(payload)
        size = len(prefix) + sum(b - a for a, b in kept) + len(suffix)
        blocks = _blocks_of(pieces, kept) if pieces is not None else None
        if blocks is None:
            framed = b"".join((prefix, *(view[a:b] for a, b in kept), suffix))
            packed = deflate(framed)[0] if size >= COMPRESS_MIN else None
            return _item(ts, seq, direction, meta, framed, packed)
        # The pieces the client got, between stored blocks of the prefix and the suffix:
        # a valid stream with no second compression (each piece's back-references reach
        # only within itself).
        adler32 = DEFLATE.adler32
        check = adler32(prefix)
        if cuts:
            # The head up to the first cut from the whole's checksum; the rest (a usage
            # event and what follows it, usually) is short and summed as it is.
            first = cuts[0][0]
            head = adler32_head(adler, adler32(view[first:]), len(payload) - first)
            check = adler32_combine(check, head, first)
            for a, b in kept:
                if b > first:
                    check = adler32(view[max(a, first) : b], check)
        else:
            check = adler32_combine(check, adler, len(payload))
        check = adler32(suffix, check)
        packed = (
            b"\x78\x01"
            + _stored(prefix, False)
            + blocks
            + _stored(suffix, True)
            + check.to_bytes(4, "big")
        )
        if len(packed) < size:
            event: dict[str, Any] = {"ts": ts, "dir": direction, "seq": seq, "data": packed}
            event["enc"] = "zlib"
            if meta:
                event["meta"] = meta
            return cbor2.dumps(event)
        return _item(
            ts,
            seq,
            direction,
            meta,
            b"".join((prefix, *(view[a:b] for a, b in kept), suffix)),
            None,
        )


def _blocks_of(pieces: Pieces, kept: list[tuple[int, int]]) -> bytes | None:
    """The compressed blocks of exactly the ``kept`` ranges, or None when a range does
    not start and end where pieces do."""
    first = {piece[0]: k for k, piece in enumerate(pieces)}
    out = []
    for start, end in kept:
        k = first.get(start)
        if k is None:
            return None
        while True:
            _, stop, blocks = pieces[k]
            out.append(blocks)
            if stop == end:
                break
            if stop > end or k + 1 == len(pieces):
                return None
            k += 1
    return b"".join(out)


class CaptureFiles:
    """The directory side: the open file, rotation, the total cap."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        max_file_bytes: int,
        max_total_bytes: int,
        meta: dict[str, Any],
    ) -> None:
        self.dir = directory
        self.prefix = prefix
        # A file larger than the total cap could never be kept whole.
        self.max_file = min(max_file_bytes, max_total_bytes)
        self.max_total = max_total_bytes
        self.meta = meta
        self.session_id = uuid.uuid4().hex
        self.fd = -1
        self.size = 0
        self.events_in_file = 0
        self.files: list[tuple[Path, int]] = []  # closed files of this prefix, oldest first
        self.closed_bytes = 0
        self.n = 0
        self.bytes_written = 0
        self.files_opened = 0
        self.files_deleted = 0
        self.events = 0

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.dir.glob(f"capture-{self.prefix}*.cbor")):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            self.files.append((path, size))
            self.closed_bytes += size
        self._new_file()

    def _new_file(self) -> None:
        self.n += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.dir / f"capture-{self.prefix}{stamp}-{os.getpid()}-{self.n:06d}.cbor"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self.path = path
        self.size = 0
        self.events_in_file = 0
        self.files_opened += 1
        header = cbor2.dumps(
            {
                "magic": MAGIC,
                "version": VERSION,
                "created_at": time.time(),
                "session_id": self.session_id,
                "metadata": {**self.meta, "file_index": self.n},
            }
        )
        self._write(header)
        self._cap()

    def add(self, items: list[bytes]) -> None:
        """Write a batch of encoded events, rotating between them as needed."""
        batch: list[bytes] = []
        size = self.size
        for item in items:
            if self.events_in_file and size + len(item) > self.max_file:
                if batch:
                    self._write(b"".join(batch))
                    batch = []
                self._rotate()
                size = self.size
            batch.append(item)
            size += len(item)
            self.events_in_file += 1
            self.events += 1
        if batch:
            self._write(b"".join(batch))
        # Writing into a file whose directory was removed succeeds on Linux and is lost:
        # a file without a name means the capture has nowhere to go.
        if os.fstat(self.fd).st_nlink == 0:
            raise FileNotFoundError(f"capture file {self.path} was removed")
        self._cap()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)
        self.bytes_written += len(data)

    def _rotate(self) -> None:
        os.close(self.fd)
        self.files.append((self.path, self.size))
        self.closed_bytes += self.size
        self.fd = -1
        self._new_file()

    def _cap(self) -> None:
        while self.files and self.closed_bytes + self.size > self.max_total:
            path, size = self.files.pop(0)
            self.closed_bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            self.files_deleted += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_frames(buf: bytearray) -> list[tuple[float, int, int, bytes, bytes]]:
    """The whole frames at the start of ``buf`` (removed from it)."""
    out = []
    pos = 0
    end = len(buf)
    head = FRAME.size
    unpack = FRAME.unpack_from
    # Slices of a view: one copy per piece (a bytearray slice would be a second).
    with memoryview(buf) as view:
        while end - pos >= head:
            length, ts, seq, direction, meta_len = unpack(view, pos)
            stop = pos + 4 + length
            if stop > end:
                break
            meta_at = pos + head
            data_at = meta_at + meta_len
            out.append(
                (ts, seq, direction, bytes(view[meta_at:data_at]), bytes(view[data_at:stop]))
            )
            pos = stop
    if pos:
        del buf[:pos]
    return out


class Writer:
    def __init__(self, sock: socket.socket, files: CaptureFiles) -> None:
        self.sock = sock
        self.files = files
        self.disabled: str | None = None
        self.build = ItemBuilder()
        self.received = 0
        self.discarded = 0
        self._last_status = 0.0

    def items(self, buf: bytearray) -> list[bytes]:
        """The CBOR items of the whole frames at the start of ``buf`` (removed from it).
        The compiled core writes the usual small event itself (~0.4 µs against ~3.5 µs
        through cbor2, which the writer's core shares with the gateway's peers); the
        pure twin's byte-level version is slower than cbor2, so without the core every
        event goes through cbor2."""
        if IMPLEMENTATION == "cython":
            items, used = capture_items(buf, COMPRESS_MIN, self.build)
            del buf[:used]
            return items
        return [self.build(*frame) for frame in read_frames(buf)]

    def status(self) -> None:
        f = self.files
        doc = {
            "bytes_written": f.bytes_written,
            "files_opened": f.files_opened,
            "files_deleted": f.files_deleted,
            "events_written": f.events,
            "events_received": self.received,
            "events_discarded": self.discarded,
            "disabled": self.disabled,
            "pid": os.getpid(),
        }
        self.sock.sendall(json.dumps(doc).encode() + b"\n")
        self._last_status = time.monotonic()

    def fail(self, exc: OSError) -> None:
        if exc.strerror and exc.filename:
            self.disabled = f"{exc.strerror}: {exc.filename}"
        else:
            self.disabled = exc.strerror or str(exc)
        try:
            self.files.close()
        except OSError:
            pass

    def run(self) -> None:
        try:
            self.files.open()
        except OSError as exc:
            self.fail(exc)
        self.status()  # the first status is the "ready" the gateway waits for
        self.sock.settimeout(STATUS_EVERY_S)
        buf = bytearray()
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                self.status()
                continue
            if not chunk:
                break
            buf += chunk
            items = self.items(buf)
            self.received += len(items)
            if self.disabled is None:
                try:
                    self.files.add(items)
                except OSError as exc:
                    self.fail(exc)
                    self.status()
            else:
                self.discarded += len(items)
            if time.monotonic() - self._last_status >= STATUS_EVERY_S / 5:
                self.status()
        self.files.close()
        try:
            self.status()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastproxy.storage.capture_writer")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--max-file-bytes", type=int, required=True)
    parser.add_argument("--max-total-bytes", type=int, required=True)
    parser.add_argument("--meta", default="{}")
    args = parser.parse_args(argv)
    tune_allocator()
    # The gateway decides when capture ends (it closes the socket): a ^C or SIGTERM to
    # the process group must not cut the events still queued in the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    files = CaptureFiles(
        Path(args.dir),
        args.prefix,
        args.max_file_bytes,
        args.max_total_bytes,
        json.loads(args.meta),
    )
    try:
        Writer(sock, files).run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway is gone: what it sent is written
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
