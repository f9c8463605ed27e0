"""SSE scanning: `SSEScanner` and `SSEEvent`. Pure-Python twin of ``_core.pyx`` (see ``__init__``)."""

from __future__ import annotations

import operator
import re

SSE_EVENT = 0
SSE_COMMENT = 1
SSE_ERROR = 2

_ERROR_TEXT = b"event exceeds max_event_size"
_BOM = b"\xef\xbb\xbf"
_LF = 10
_CR = 13
_COLON = 58


class SSEEvent:
    """One item produced by :class:`SSEScanner` (immutable)."""

    __slots__ = ("_data", "_event", "_id", "_kind", "_raw")

    def __init__(self, kind: int, event: bytes, data: bytes, id: bytes | None, raw: bytes) -> None:
        # Validation only on the public constructor: the scanner builds items through
        # _make_event, which skips it (the values are known to be right there).
        kind = operator.index(kind)
        if type(event) is not bytes or type(data) is not bytes or type(raw) is not bytes:
            raise TypeError("event, data and raw must be bytes")
        if id is not None and type(id) is not bytes:
            raise TypeError("id must be bytes or None")
        self._kind = kind
        self._event = event
        self._data = data
        self._id = id
        self._raw = raw

    @property
    def kind(self) -> int:
        return self._kind

    @property
    def event(self) -> bytes:
        return self._event

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def id(self) -> bytes | None:
        return self._id

    @property
    def raw(self) -> bytes:
        return self._raw

    def __repr__(self) -> str:
        return (
            f"SSEEvent(kind={self._kind!r}, event={self._event!r}, data={self._data!r}, "
            f"id={self._id!r}, raw={self._raw!r})"
        )

    def __eq__(self, other: object) -> bool:
        # Compares by field with the other implementation's SSEEvent too, so the
        # tests can put both scanners' output side by side.
        if not isinstance(other, SSEEvent) and type(other).__name__ != "SSEEvent":
            return NotImplemented
        return (
            self._kind == other.kind  # type: ignore[attr-defined]
            and self._data == other.data  # type: ignore[attr-defined]
            and self._event == other.event  # type: ignore[attr-defined]
            and self._id == other.id  # type: ignore[attr-defined]
            and self._raw == other.raw  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((self._kind, self._event, self._data, self._id, self._raw))


def _make_event(
    kind: int, event: bytes, data: bytes, id_: bytes | None, raw: bytes, _new=object.__new__
) -> SSEEvent:
    ev = _new(SSEEvent)
    ev._kind = kind
    ev._event = event
    ev._data = data
    ev._id = id_
    ev._raw = raw
    return ev


def _term_len(line: bytes) -> int:
    """Length of the terminator that ends a complete line (1 or 2)."""
    return 2 if len(line) > 1 and line[-1] == _LF and line[-2] == _CR else 1


class SSEScanner:
    """Sans-I/O splitter of a Server-Sent-Events byte stream into items.

    Bytes are held as complete lines (``_lines``, with their terminators) plus the
    incomplete last line (``_partial``). Field lines are only classified when they
    complete and parsed when their block dispatches, so each byte is looked at a
    bounded number of times whatever the chunking: a chunk without a line terminator
    is appended without scanning what came before it.
    """

    __slots__ = (
        "_block_first",
        "_bom",
        "_bom_check",
        "_carried",
        "_carry_data",
        "_carry_event",
        "_carry_id",
        "_disc_midline",
        "_discarding",
        "_events_seen",
        "_has_fields",
        "_lines",
        "_max",
        "_partial",
        "_pending",
        "_skip_lf",
    )

    def __init__(self, max_event_size: int = 1048576) -> None:
        max_event_size = operator.index(max_event_size)
        if max_event_size <= 0:
            raise ValueError("max_event_size must be positive")
        self._max = max_event_size
        self._events_seen = 0
        self._reset()

    def _reset(self) -> None:
        # Complete lines since the last item, and their total length.
        self._lines: list[bytes] = []
        self._pending = 0
        self._partial = bytearray()
        # The last byte seen was a CR that ended a line: an LF next completes a CRLF.
        self._skip_lf = False
        # After an oversize error: drop lines until a blank one.
        self._discarding = False
        self._disc_midline = False
        # Only the stream's first line may start with a BOM (WHATWG).
        self._bom_check = True
        self._bom = False
        self._reset_block()

    def _reset_block(self) -> None:
        self._has_fields = False
        self._block_first = 0
        # Fields of the current block whose lines already went out in a comment's raw.
        self._carried = 0
        self._carry_data: list[bytes] = []
        self._carry_event: bytes | None = None
        self._carry_id: bytes | None = None

    @property
    def buffered(self) -> int:
        return self._pending + len(self._partial)

    @property
    def events_seen(self) -> int:
        return self._events_seen

    def finish(self) -> bytes:
        tail = b"".join(self._lines) + bytes(self._partial)
        self._events_seen = 0
        self._reset()
        return tail

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[SSEEvent]:
        if type(chunk) is not bytes:
            chunk = memoryview(chunk).tobytes()
        out: list[SSEEvent] = []
        if not chunk:
            return out
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                if not self._discarding:
                    self._stray_lf()
                chunk = chunk[1:]
                if not chunk:
                    return out
        if self._discarding:
            chunk = self._discard(chunk)
            if not chunk:
                return out
        if b"\n" not in chunk and b"\r" not in chunk:
            # Still inside one line: append, never rescan.
            self._partial += chunk
            self._check_tail(out)
            return out
        if self._partial:
            self._partial += chunk
            chunk = bytes(self._partial)
            self._partial = bytearray()
        lines = chunk.splitlines(True)
        last = lines[-1][-1]
        if last == _CR:
            self._skip_lf = True
        elif last != _LF:
            self._partial = bytearray(lines.pop())
        self._process(lines, out)
        if self._discarding:
            if self._partial:
                self._disc_midline = True
                self._partial = bytearray()
        else:
            self._check_tail(out)
        return out

    def _process(self, lines: list[bytes], out: list[SSEEvent]) -> None:
        max_size = self._max
        pending_lines = self._lines
        for line in lines:
            if self._discarding:
                if not self._disc_midline and (line == b"\n" or line == b"\r\n" or line == b"\r"):
                    self._discarding = False
                self._disc_midline = False
                continue
            off = 0
            if self._bom_check:
                self._bom_check = False
                if line.startswith(_BOM):
                    off = 3
            c = line[off]
            if c in (10, 13):  # LF, CR: a blank line (literal tuple: folded to a constant)
                if self._has_fields:
                    pending_lines.append(line)
                    out.append(self._dispatch())
                    pending_lines = self._lines
                elif self._carried + self._pending + off > max_size:
                    self._error(out, discard=False)
                    pending_lines = self._lines
                else:
                    pending_lines.append(line)
                    self._pending += len(line)
                continue
            if self._carried + self._pending + len(line) - _term_len(line) > max_size:
                self._error(out, discard=True)
                pending_lines = self._lines
                continue
            if c == _COLON:
                out.append(self._comment(line, off))
                pending_lines = self._lines
                continue
            if not self._has_fields:
                self._has_fields = True
                self._block_first = len(pending_lines)
                self._bom = off != 0
            pending_lines.append(line)
            self._pending += len(line)

    def _stray_lf(self) -> None:
        # The LF of a CRLF split across chunks: it belongs to the line the CR ended if
        # that line is still held, otherwise it leads the next item's raw.
        if self._lines:
            self._lines[-1] += b"\n"
        else:
            self._lines.append(b"\n")
            # Not a byte of the next event: it must not count toward that event's size
            # (unsplit, this LF was part of the line before, so the size would depend on
            # where the chunks were cut).
            self._carried -= 1
        self._pending += 1

    def _discard(self, chunk: bytes) -> bytes:
        """Drop bytes up to and including the next blank line; return the rest."""
        midline = self._disc_midline
        pos = 0
        for line in chunk.splitlines(True):
            pos += len(line)
            last = line[-1]
            if last != _LF and last != _CR:
                self._disc_midline = True
                return b""
            if not midline and (line == b"\n" or line == b"\r\n" or line == b"\r"):
                self._discarding = False
                self._disc_midline = False
                if last == _CR and pos == len(chunk):
                    self._skip_lf = True
                return chunk[pos:]
            midline = False
        if chunk[-1] == _CR:
            self._skip_lf = True
        self._disc_midline = False
        return b""

    def _check_tail(self, out: list[SSEEvent]) -> None:
        partial = self._partial
        if partial and self._carried + self._pending + len(partial) > self._max:
            self._error(out, discard=True)
            self._disc_midline = True
            self._partial = bytearray()

    def _error(self, out: list[SSEEvent], discard: bool) -> None:
        out.append(_make_event(SSE_ERROR, b"", _ERROR_TEXT, None, b""))
        self._lines = []
        self._pending = 0
        self._bom_check = False
        self._bom = False
        self._discarding = discard
        self._disc_midline = False
        self._reset_block()

    def _parse_block(self, lines: list[bytes]) -> None:
        """Fold field lines into the carry state (data values, last event, last id)."""
        data = self._carry_data
        event = self._carry_event
        id_ = self._carry_id
        if self._bom and lines:
            self._bom = False
            lines = [lines[0][3:], *lines[1:]]
        for line in lines:
            name, _, value = line.rstrip(b"\r\n").partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
            elif name == b"id" and b"\x00" not in value:
                # WHATWG: an id containing NUL is ignored.
                id_ = value
        self._carry_event = event
        self._carry_id = id_

    def _dispatch(self) -> SSEEvent:
        lines = self._lines
        self._parse_block(lines[self._block_first : -1])
        ev = _make_event(
            SSE_EVENT,
            self._carry_event or b"",
            b"\n".join(self._carry_data),
            self._carry_id,
            b"".join(lines),
        )
        self._events_seen += 1
        self._lines = []
        self._pending = 0
        self._reset_block()
        return ev

    def _comment(self, line: bytes, off: int) -> SSEEvent:
        value = line[off + 1 : len(line) - _term_len(line)]
        if value[:1] == b" ":
            value = value[1:]
        lines = self._lines
        if self._has_fields:
            # A comment inside a block: its raw must take the block's earlier lines to
            # keep raw in stream order, so their fields are parsed now and carried.
            self._parse_block(lines[self._block_first :])
            self._carried += self._pending
            self._block_first = 0
        else:
            self._carried = 0  # a leading stray LF (see _stray_lf) goes out with this raw
        lines.append(line)
        raw = b"".join(lines)
        self._lines = []
        self._pending = 0
        return _make_event(SSE_COMMENT, b"", value, None, raw)


# ------------------------------------------------------------------ pass-through

# Dialect codes of SSEPass: which events end a stream.
PASS_GENERIC = 0  # unknown dialect: every event is notable, the caller decides
PASS_OPENAI = 1  # Chat Completions `data: [DONE]`; Responses API completed/failed/incomplete
PASS_ANTHROPIC = 2  # Messages API `event: message_stop`

# Flags of one SSEPass.feed (SSEPass.flags).
PASS_CONTENT = 1  # streamed text (content, tool arguments, ...) arrived in this chunk
PASS_TERMINAL = 2  # the dialect's final event completed in this chunk
PASS_NOTABLE = 4  # take_notable() has events for the caller
PASS_OVERFLOW = 8  # an event grew past max_event_size: the scanner stopped

# Per notable event: why it is notable (the first three are the DELTA_* flags).
NOTE_USAGE = 1  # a non-null "usage" at any depth
NOTE_NAME = 2  # a non-null "name" (a tool call starting)
NOTE_ERROR = 4  # `event: error`, or a non-null "error" at any depth
NOTE_TERMINAL = 8  # the dialect's final event

_DONE = b"[DONE]"
_OPENAI_TERMINAL = (b"response.completed", b"response.failed", b"response.incomplete")
_TERM_RE = re.compile(rb"\r\n?|\n")


class SSEPass:
    """One call per upstream chunk: the bytes to forward, flags, and the rare events
    the caller must see (``take_notable``).

    The bytes up to the end of the last complete event (or comment, or blank line
    between events) are returned; only the incomplete tail is held. When nothing was
    held and the chunk ends on an event boundary, the chunk object itself is returned,
    so an upstream read reaches the client as it arrived. Each event's data runs through
    a `DeltaScanner` (token estimate of content and tool arguments, usage/name/error
    flags) as it completes; events with a flag, the dialect's error event and, for
    ``PASS_GENERIC``, every event, are kept for ``take_notable`` as ``(note, event,
    data, start, end)`` with ``out[start:end]`` the event's bytes in the returned
    output.
    """

    __slots__ = (
        "_bom_check",
        "_data",
        "_dead",
        "_delta",
        "_dialect",
        "_event",
        "_events",
        "_flags",
        "_has_fields",
        "_held",
        "_line_start",
        "_max",
        "_notable",
        "_skip_lf",
    )

    def __init__(self, max_event_size: int = 1048576, dialect: int = PASS_GENERIC) -> None:
        max_event_size = operator.index(max_event_size)
        dialect = operator.index(dialect)
        if max_event_size <= 0:
            raise ValueError("max_event_size must be positive")
        if dialect not in (PASS_GENERIC, PASS_OPENAI, PASS_ANTHROPIC):
            raise ValueError("unknown dialect code")
        from .delta import DeltaScanner

        self._max = max_event_size
        self._dialect = dialect
        self._delta = DeltaScanner()
        self._events = 0
        self._flags = 0
        self._notable: list[tuple[int, bytes, bytes, int, int]] | None = None
        self._dead = False
        self._bom_check = True
        self._reset()

    def _reset(self) -> None:
        # Bytes since the last boundary; _held[_line_start:] is the incomplete line.
        self._held = bytearray()
        self._line_start = 0
        # The last byte seen was a CR that ended a line: an LF next completes a CRLF.
        self._skip_lf = False
        self._reset_block()

    def _reset_block(self) -> None:
        self._has_fields = False
        self._data: list[bytes] = []
        self._event = b""

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def buffered(self) -> int:
        return len(self._held)

    @property
    def events(self) -> int:
        return self._events

    @property
    def tokens(self) -> int:
        return self._delta.tokens

    @property
    def text_bytes(self) -> int:
        return self._delta.text_bytes

    @property
    def overflowed(self) -> bool:
        return self._dead

    def take_notable(self) -> list[tuple[int, bytes, bytes, int, int]]:
        notable = self._notable
        self._notable = None
        return notable if notable is not None else []

    def finish(self) -> bytes:
        tail = bytes(self._held)
        self._reset()
        return tail

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        if type(chunk) is not bytes:
            chunk = memoryview(chunk).tobytes()
        self._flags = 0
        self._notable = None
        if self._dead or not chunk:
            return b""
        text0 = self._delta.text_bytes
        skip = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                skip = 1  # completes the CRLF of the line before: not a line of its own
        line_start = self._line_start = self._line_start + skip
        held = self._held
        window: bytes | bytearray
        if held:
            # The held bytes past line_start hold no terminator: search the new ones.
            search = max(line_start, len(held))
            held += chunk
            window = held
            boundary = 0
        else:
            window = chunk
            search = line_start
            boundary = skip  # the line that LF ends went out already
        boundary = self._scan(window, search, boundary)
        if not self._dead and len(window) - boundary > self._max:
            self._overflow()
        if self._delta.text_bytes != text0:
            self._flags |= PASS_CONTENT
        if held:
            out = bytes(window[:boundary])
            if boundary == len(held):
                self._held = bytearray()  # lets a grown buffer go
            else:
                del held[:boundary]
            self._line_start -= boundary
        else:
            out = chunk if boundary == len(chunk) else chunk[:boundary]
            if boundary < len(chunk):
                self._held = bytearray(chunk[boundary:])
                self._line_start -= boundary
            else:
                self._line_start = 0
        if self._dead:
            self._reset()
        return out

    def _overflow(self) -> None:
        self._dead = True
        self._flags |= PASS_OVERFLOW

    def _scan(self, window: bytes | bytearray, pos: int, boundary: int) -> int:
        """Process the lines of window completed from pos on; return the new boundary."""
        max_size = self._max
        end = len(window)
        for m in _TERM_RE.finditer(window, pos):
            le, te = m.span()
            if te == end and window[le] == _CR and te == le + 1:
                self._skip_lf = True
            ls = self._line_start
            self._line_start = te
            off = ls
            if self._bom_check:
                # WHATWG: one BOM at the very start of the stream is not part of the line.
                self._bom_check = False
                if window.startswith(_BOM, ls):
                    off = ls + 3
            if le - boundary > max_size:
                self._overflow()
                break
            if off == le:
                if self._has_fields:
                    self._dispatch(boundary, te)
                boundary = te
            elif window[off] == _COLON:
                if not self._has_fields:
                    boundary = te  # a comment between events goes out with them
            else:
                self._field(bytes(window[off:le]))
        return boundary

    def _field(self, line: bytes) -> None:
        self._has_fields = True
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value

    def _dispatch(self, start: int, end: int) -> None:
        data_lines = self._data
        data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
        event = self._event
        self._reset_block()
        self._events += 1
        note = self._delta.feed_event(data)
        if event == b"error":
            note |= NOTE_ERROR
        dialect = self._dialect
        if dialect == PASS_OPENAI:
            terminal = data == _DONE or event in _OPENAI_TERMINAL
        else:
            terminal = dialect == PASS_ANTHROPIC and event == b"message_stop"
        if terminal:
            self._flags |= PASS_TERMINAL
            note |= NOTE_TERMINAL
        if note & ~NOTE_TERMINAL or dialect == PASS_GENERIC:
            self._flags |= PASS_NOTABLE
            if self._notable is None:
                self._notable = []
            self._notable.append((note, event, data, start, end))
