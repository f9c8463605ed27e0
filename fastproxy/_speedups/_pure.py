"""Pure-Python twin of ``_core.pyx``: same names, signatures, results and edge cases.

This module is the reference and the typing contract (``__init__`` imports its names
under ``TYPE_CHECKING``). It is used when the extension is not built or when
``FASTPROXY_NO_EXTENSIONS=1``. Every behaviour here is mirrored by ``_core.pyx`` and the
tests in ``tests/speedups`` run on both; when the two disagree, that is a bug in one of
them, never a licence to document a difference.

Speed still matters here (a gateway without a compiler runs on this): the hot paths use
``bytes.splitlines``/``find``/``partition``, which run in C, instead of per-byte loops.
"""

from __future__ import annotations

import operator
import re

__all__ = [
    "DELTA_ERROR",
    "DELTA_NAME",
    "DELTA_USAGE",
    "SSE_COMMENT",
    "SSE_ERROR",
    "SSE_EVENT",
    "CounterBlock",
    "DeltaScanner",
    "SSEEvent",
    "SSEScanner",
    "TokenEstimator",
    "count_bytes",
    "estimate_tokens",
]

SSE_EVENT = 0
SSE_COMMENT = 1
SSE_ERROR = 2

_ERROR_TEXT = b"event exceeds max_event_size"
_BOM = b"\xef\xbb\xbf"
_LF = 10
_CR = 13
_COLON = 58


# --------------------------------------------------------------------------- SSE


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
        lines.append(line)
        raw = b"".join(lines)
        self._lines = []
        self._pending = 0
        return _make_event(SSE_COMMENT, b"", value, None, raw)


# --------------------------------------------------------------------------- counters

_U64_MASK = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1


def count_bytes(data: bytes | bytearray | memoryview) -> int:
    """Number of bytes in ``data`` (a memoryview counts its nbytes, not its items)."""
    if type(data) is bytes:
        return len(data)
    return memoryview(data).nbytes


def _address(view: memoryview) -> int:
    # ctypes is the only pure-Python way to see where a buffer lives; only needed once,
    # at construction, to refuse memory the compiled twin could not update atomically.
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class CounterBlock:
    """``size`` unsigned 64-bit counters in one flat buffer (see docs/speedups.md).

    Counter ``i`` is the native-endian uint64 at byte offset ``8 * i`` of the buffer,
    which must be writable, C-contiguous, 8-byte aligned and at least ``8 * size``
    bytes. Updates here are plain read-modify-write through a memoryview (the compiled
    twin uses atomic adds); values wrap modulo 2**64 in both.
    """

    __slots__ = ("_size", "_view")

    def __init__(self, size: int, buffer: object | None = None) -> None:
        size = operator.index(size)
        if size < 0:
            raise ValueError("size must be >= 0")
        if buffer is None:
            buffer = bytearray(8 * size)
        view = memoryview(buffer)  # type: ignore[arg-type]
        if view.readonly or not view.c_contiguous:
            view.release()
            raise TypeError("buffer must be writable and C-contiguous")
        view = view.cast("B")
        if view.nbytes < 8 * size:
            raise ValueError(f"buffer holds {view.nbytes} bytes, {8 * size} needed")
        if view.nbytes and _address(view) % 8:
            raise ValueError("buffer must be 8-byte aligned")
        self._size = size
        self._view = view[: 8 * size].cast("Q")

    @property
    def size(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        return 8 * self._size

    def add(self, index: int, value: int) -> None:
        if not 0 <= index < self._size:
            raise IndexError("counter index out of range")
        if value < 0:
            raise ValueError("value must be >= 0")
        if value > _I64_MAX:
            raise OverflowError("value too large")
        view = self._view
        view[index] = (view[index] + value) & _U64_MASK

    def get(self, index: int) -> int:
        if index < 0:
            raise IndexError("counter index out of range")
        return self._view[index]

    def set(self, index: int, value: int) -> None:
        if not 0 <= index < self._size:
            raise IndexError("counter index out of range")
        value = operator.index(value)
        if value < 0:
            raise ValueError("value must be >= 0")
        if value > _U64_MASK:
            raise OverflowError("value too large")
        self._view[index] = value

    def snapshot(self) -> list[int]:
        return self._view.tolist()

    def reset(self) -> None:
        self._view[:] = memoryview(bytes(8 * self._size)).cast("Q")


# --------------------------------------------------------------------------- tokens
#
# A fixed-point cost model over character runs, tuned to o200k_base (docs/speedups.md
# has the derivation and the accuracy figures). Costs are in milli-tokens so that both
# implementations do exact integer arithmetic: split invariance and parity are exact.
#
# Runs follow the o200k pre-tokenizer loosely: letters (any alphabetic script, split at
# a lower->upper camelCase step), CJK/kana/hangul, digits, punctuation and symbols
# (emoji included, as in the tokenizer's regex), spaces, newlines. A run costs when it
# closes, and what follows it decides some costs (a single space before a word is free).

_UNIT = 1000
_WORD_FREE_LETTERS = 6  # letters beyond this in one word cost _W_LONG each
_W_WORD = 920
_W_LONG = 194
_W_DIGITS = 1156  # per group of up to 3 digits
_W_PUNCT_RUN = 1013
_W_PUNCT_EXTRA = 44  # per char beyond the first in a punctuation run
_W_PUNCT_GLUE = 369  # one punctuation char glued to the next word ("(self", ".get")
_W_SPACE_ALONE = 1000  # a single space before a digit or at the end
_W_SPACE_RUN = 294
_W_NEWLINE = 1226
_W_NEWLINE_AFTER_PUNCT = 570  # o200k keeps "});\n" together

# Per-character costs of non-ASCII classes (added as each character completes).
_W_LATIN_EXT = 407
_W_LETTER2 = 59  # Greek, Cyrillic, Hebrew, Arabic...
_W_LETTER3 = 1000
_W_HAN = 559
_W_KANA = 556
_W_HANGUL = 687
_W_SYMBOL = 1746
_W_EMOJI = 1338
_W_EMOJI_MOD = 1000  # ZWJ, variation selector, skin tone
_W_FLAG = 2000  # per regional indicator (a flag is two)
_W_BAD = 1000  # per byte of invalid UTF-8

# Run classes.
_R_NONE = 0
_R_WORD = 1
_R_CJK = 2
_R_DIGIT = 3
_R_PUNCT = 4
_R_SPACE = 5
_R_NL = 6
_R_END = 7

# Character classes of non-ASCII code points: (run class, per-char cost, is-lowercase).
_C_LAT = (_R_WORD, _W_LATIN_EXT, True)
_C_OTH2 = (_R_WORD, _W_LETTER2, False)
_C_OTH3 = (_R_WORD, _W_LETTER3, False)
_C_HAN = (_R_CJK, _W_HAN, False)
_C_KANA = (_R_CJK, _W_KANA, False)
_C_HANGUL = (_R_CJK, _W_HANGUL, False)
_C_SYM = (_R_PUNCT, _W_SYMBOL, False)
_C_EMOJI = (_R_PUNCT, _W_EMOJI, False)
_C_EMOD = (_R_PUNCT, _W_EMOJI_MOD, False)
_C_FLAG = (_R_PUNCT, _W_FLAG, False)
_C_BAD = (_R_PUNCT, _W_BAD, False)


def _classify(cp: int) -> tuple[int, int, bool]:
    """Class of a non-ASCII code point (mirrored by _classify in _core.pyx)."""
    if cp < 0x800:
        if 0xC0 <= cp <= 0x24F and cp != 0xD7 and cp != 0xF7:
            return _C_LAT
        if cp >= 0x370:
            return _C_OTH2
        return _C_SYM
    if cp < 0x10000:
        if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF:
            return _C_HAN
        if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF:
            return _C_KANA
        if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
            return _C_HANGUL
        if cp == 0x200D or 0xFE00 <= cp <= 0xFE0F:
            return _C_EMOD
        if (
            0x2000 <= cp <= 0x2BFF
            or 0x3000 <= cp <= 0x303F
            or 0xFE10 <= cp <= 0xFE6F
            or 0xFF00 <= cp <= 0xFFEF
            or 0xE000 <= cp <= 0xF8FF
        ):
            return _C_SYM
        if 0x1E00 <= cp <= 0x1FFF:
            return _C_LAT
        return _C_OTH3
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return _C_FLAG
    if 0x1F3FB <= cp <= 0x1F3FF:
        return _C_EMOD
    if 0x20000 <= cp <= 0x3FFFF:
        return _C_HAN
    return _C_EMOJI


def _close_cost(run: int, n: int, prev: int, nxt: int) -> int:
    """Cost of a run of n characters that ends because a run of class nxt begins."""
    if run == _R_WORD:
        extra = n - _WORD_FREE_LETTERS
        return _W_WORD + extra * _W_LONG if extra > 0 else _W_WORD
    if run == _R_SPACE:
        if n > 1:
            return _W_SPACE_RUN
        # One space joins the token after it, unless that is a digit (or nothing).
        return _W_SPACE_ALONE if nxt in (_R_DIGIT, _R_END) else 0
    if run == _R_PUNCT:
        glued = n == 1 and nxt == _R_WORD and prev != _R_SPACE
        return (_W_PUNCT_GLUE if glued else _W_PUNCT_RUN) + (n - 1) * _W_PUNCT_EXTRA
    if run == _R_DIGIT:
        return (n + 2) // 3 * _W_DIGITS
    if run == _R_NL:
        return _W_NEWLINE_AFTER_PUNCT if prev == _R_PUNCT else _W_NEWLINE
    return 0


# ASCII byte -> (run class, 1 if lowercase letter, 2 if uppercase letter else 0)
def _ascii_table() -> list[tuple[int, int]]:
    table = []
    for b in range(128):
        c = chr(b)
        if "a" <= c <= "z":
            table.append((_R_WORD, 1))
        elif "A" <= c <= "Z":
            table.append((_R_WORD, 2))
        elif "0" <= c <= "9":
            table.append((_R_DIGIT, 0))
        elif c in " \t":
            table.append((_R_SPACE, 0))
        elif c in "\r\n":
            table.append((_R_NL, 0))
        else:
            table.append((_R_PUNCT, 0))
    return table


_ASCII = _ascii_table()
# Maximal runs of one ASCII byte class, or of non-ASCII bytes (decoded one by one).
_RUNS = re.compile(
    rb"[a-z]+|[A-Z]+|[0-9]+|[ \t]+|[\r\n]+|[\x80-\xff]+|[^a-zA-Z0-9 \t\r\n\x80-\xff]+"
)


class TokenEstimator:
    """Streaming token estimate of UTF-8 text; split anywhere, same result."""

    __slots__ = ("_bytes", "_cp", "_last_lower", "_n", "_need", "_prev", "_run", "_seq", "_units")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._units = 0  # committed cost, milli-tokens
        self._run = _R_NONE  # class of the open run
        self._n = 0  # characters in the open run
        self._prev = _R_NONE  # class of the run before it
        self._last_lower = False  # last letter was lowercase (camelCase split)
        self._need = 0  # UTF-8 continuation bytes still expected
        self._seq = 0  # bytes of the pending sequence so far
        self._cp = 0  # code point being assembled
        self._bytes = 0

    @property
    def bytes_fed(self) -> int:
        return self._bytes

    @property
    def tokens(self) -> int:
        units, run, n, prev = self._units, self._run, self._n, self._prev
        if self._need:
            # A sequence cut short by the end counts as stray bytes, exactly as one
            # cut short by another byte; the state itself stays as it is.
            units, run, n, prev, _ = self._bad(self._seq, units, run, n, prev, self._last_lower)
        units += _close_cost(run, n, prev, _R_END)
        return (units + _UNIT // 2) // _UNIT

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        if not data:
            return
        self._bytes += len(data)
        ascii_cls = _ASCII
        units = self._units
        run = self._run
        n = self._n
        prev = self._prev
        last_lower = self._last_lower
        pos = 0
        if self._need:
            # Finish the sequence split by the previous chunk, byte by byte.
            need, seq, cp = self._need, self._seq, self._cp
            while need and pos < len(data):
                b = data[pos]
                if 0x80 <= b <= 0xBF:
                    cp = (cp << 6) | (b & 0x3F)
                    need -= 1
                    seq += 1
                    pos += 1
                    if not need:
                        units, run, n, prev, last_lower = self._char(
                            _classify(cp), units, run, n, prev, last_lower
                        )
                else:
                    units, run, n, prev, last_lower = self._bad(
                        seq, units, run, n, prev, last_lower
                    )
                    need = 0
            self._need, self._seq, self._cp = need, seq, cp
        for m in _RUNS.finditer(data, pos):
            b = data[m.start()]
            k = m.end() - m.start()
            if b >= 0x80:
                units, run, n, prev, last_lower = self._high(
                    data, m.start(), m.end(), units, run, n, prev, last_lower
                )
                continue
            r, case = ascii_cls[b]
            if r == run and not (case == 2 and last_lower):
                n += k
            else:
                if run:
                    units += _close_cost(run, n, prev, r)
                    prev = run
                run = r
                n = k
            if r == _R_WORD:
                last_lower = case == 1
        self._units, self._run, self._n, self._prev = units, run, n, prev
        self._last_lower = last_lower

    def _char(
        self, cls: tuple[int, int, bool], units: int, run: int, n: int, prev: int, last_lower: bool
    ) -> tuple[int, int, int, int, bool]:
        r, cost, lower = cls
        if r == run:
            n += 1
        else:
            if run:
                units += _close_cost(run, n, prev, r)
                prev = run
            run = r
            n = 1
        if r == _R_WORD:
            last_lower = lower
        return units + cost, run, n, prev, last_lower

    def _bad(
        self, count: int, units: int, run: int, n: int, prev: int, last_lower: bool
    ) -> tuple[int, int, int, int, bool]:
        for _ in range(count):
            units, run, n, prev, last_lower = self._char(_C_BAD, units, run, n, prev, last_lower)
        return units, run, n, prev, last_lower

    def _high(
        self,
        data: bytes,
        i: int,
        end: int,
        units: int,
        run: int,
        n: int,
        prev: int,
        last_lower: bool,
    ) -> tuple[int, int, int, int, bool]:
        """Decode the non-ASCII bytes data[i:end] (a sequence may run past end)."""
        while i < end:
            b = data[i]
            if 0xC2 <= b <= 0xDF:
                need, cp = 1, b & 0x1F
            elif 0xE0 <= b <= 0xEF:
                need, cp = 2, b & 0x0F
            elif 0xF0 <= b <= 0xF4:
                need, cp = 3, b & 0x07
            else:
                units, run, n, prev, last_lower = self._char(
                    _C_BAD, units, run, n, prev, last_lower
                )
                i += 1
                continue
            seq = 1
            i += 1
            while need and i < end:
                c = data[i]
                if c > 0xBF:  # a lead byte: the sequence is cut short
                    break
                cp = (cp << 6) | (c & 0x3F)
                need -= 1
                seq += 1
                i += 1
            if not need:
                units, run, n, prev, last_lower = self._char(
                    _classify(cp), units, run, n, prev, last_lower
                )
            elif i < end or end < len(data):
                # Cut short by another lead byte or by ASCII: its bytes are invalid.
                units, run, n, prev, last_lower = self._bad(seq, units, run, n, prev, last_lower)
            else:
                # Cut by the end of this chunk: the next chunk may complete it.
                self._need, self._seq, self._cp = need, seq, cp
        return units, run, n, prev, last_lower


def estimate_tokens(text: bytes | str) -> int:
    """Estimated o200k token count of UTF-8 text (see TokenEstimator)."""
    est = TokenEstimator()
    est.feed(text.encode("utf-8") if isinstance(text, str) else text)
    return est.tokens


# --------------------------------------------------------------------------- deltas
#
# One pass over an event's JSON, never building objects: string values under the text
# keys are decoded and fed to a TokenEstimator, and the rare keys the caller must look
# at with a real parser are reported as flags. A key only counts with a non-null value:
# OpenAI sends "usage": null in every chunk once usage reporting is on, and flagging
# those would make the caller parse every event.

DELTA_USAGE = 1
DELTA_NAME = 2
DELTA_ERROR = 4

_MAX_DEPTH = 256
_TEXT_KEYS = frozenset(
    [
        b"content",
        b"text",
        b"partial_json",
        b"arguments",
        b"thinking",
        b"reasoning_content",
        b"refusal",
    ]
)
_FLAG_KEYS = {b"usage": DELTA_USAGE, b"name": DELTA_NAME, b"error": DELTA_ERROR}
_K_NONE = 0
_K_TEXT = 1  # feed a string value
_K_DELTA = 2  # "delta": feed it when it is a string, walk it otherwise
# Where the walk is in the grammar: what the next token may be.
_S_VALUE = 0  # a value
_S_FIRST_VALUE = 1  # a value or "]" (just after "[")
_S_KEY = 2  # a key (after "," in an object)
_S_FIRST_KEY = 3  # a key or "}" (just after "{")
_S_COLON = 4  # ":" after a key
_S_AFTER = 5  # "," or a closer after a value

# One JSON token after optional whitespace: a string (group 1: its body), a structural
# character (group 2) or a scalar: number, true, false, null (group 3).
_JSON_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([{}\[\],:])|([A-Za-z0-9+\-.]+))', re.S
)
_TRAILING_WS = re.compile(rb"[ \t\r\n]*")
_VALID_ESCAPES = re.compile(rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
_ESCAPE = re.compile(
    rb'\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\(["\\/bfnrt])'
)
_SIMPLE = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
}


def _unescape(m: re.Match[bytes]) -> bytes:
    if m.group(1):
        cp = 0x10000 + ((int(m.group(1), 16) - 0xD800) << 10) + (int(m.group(2), 16) - 0xDC00)
        return chr(cp).encode("utf-8")
    if m.group(3):
        cp = int(m.group(3), 16)
        if 0xD800 <= cp <= 0xDFFF:
            return b"\xef\xbf\xbd"  # a lone surrogate: U+FFFD, as a lenient decoder would
        return chr(cp).encode("utf-8")
    return _SIMPLE[m.group(4)]


class DeltaScanner:
    """Token estimate of the text streamed in SSE event JSON, without a JSON parse."""

    __slots__ = ("_estimator", "_events", "_text_bytes")

    def __init__(self) -> None:
        self._estimator = TokenEstimator()
        self._events = 0
        self._text_bytes = 0

    @property
    def tokens(self) -> int:
        return self._estimator.tokens

    @property
    def text_bytes(self) -> int:
        return self._text_bytes

    @property
    def events(self) -> int:
        return self._events

    def reset(self) -> None:
        self._estimator.reset()
        self._events = 0
        self._text_bytes = 0

    def feed_event(self, data: bytes | bytearray | memoryview) -> int:
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        self._events += 1
        flags = self._walk(data)
        return flags if flags > 0 else 0

    def _feed_text(self, body: bytes) -> None:
        text = _ESCAPE.sub(_unescape, body) if b"\\" in body else body
        self._text_bytes += len(text)
        self._estimator.feed(text)

    def _walk(self, data: bytes) -> int:
        """Flags of a well-formed JSON text, or -1 when it is not one."""
        flags = 0
        stack: list[bool] = []  # True: inside an object, False: inside an array
        state = _S_VALUE
        key_kind = _K_NONE
        key_flag = 0
        pos = 0
        match = _JSON_TOKEN.match
        while True:
            m = match(data, pos)
            if m is None:
                return -1
            pos = m.end()
            body, punct, scalar = m.group(1, 2, 3)
            if state in (_S_VALUE, _S_FIRST_VALUE):
                if body is not None:
                    if b"\\" in body and b"\\" in _VALID_ESCAPES.sub(b"", body):
                        return -1
                    if key_kind:
                        self._feed_text(body)
                    flags |= key_flag
                elif scalar is not None:
                    if scalar != b"null":
                        flags |= key_flag
                elif punct == b"{" or punct == b"[":
                    if len(stack) >= _MAX_DEPTH:
                        return -1
                    flags |= key_flag
                    stack.append(punct == b"{")
                    state = _S_FIRST_KEY if punct == b"{" else _S_FIRST_VALUE
                    key_kind = _K_NONE
                    key_flag = 0
                    continue
                elif punct == b"]" and state == _S_FIRST_VALUE:
                    stack.pop()
                else:
                    return -1
            elif state in (_S_KEY, _S_FIRST_KEY):
                if body is not None:
                    if b"\\" in body and b"\\" in _VALID_ESCAPES.sub(b"", body):
                        return -1
                    key_flag = _FLAG_KEYS.get(body, 0)
                    if body in _TEXT_KEYS:
                        key_kind = _K_TEXT
                    elif body == b"delta":
                        key_kind = _K_DELTA
                    state = _S_COLON
                    continue
                if punct != b"}" or state != _S_FIRST_KEY:
                    return -1
                stack.pop()
            elif state == _S_COLON:
                if punct != b":":
                    return -1
                state = _S_VALUE
                continue
            elif punct == b"," and stack:
                state = _S_KEY if stack[-1] else _S_VALUE
                continue
            elif stack and punct == (b"}" if stack[-1] else b"]"):
                stack.pop()
            else:
                return -1
            # A value just ended.
            state = _S_AFTER
            key_kind = _K_NONE
            key_flag = 0
            if not stack:
                rest = _TRAILING_WS.match(data, pos)
                return flags if rest is not None and rest.end() == len(data) else -1
