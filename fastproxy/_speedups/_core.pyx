# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled core of fastproxy._speedups (the twin of _pure.py, which is the reference).

Rules for this file:
* a leaf: no fastproxy or asyncio imports, no callbacks into Python inside loops;
* inputs are read through one C pointer (bytes directly, anything else through the
  buffer protocol), never copied into Python objects per byte or per line;
* every observable behaviour matches _pure.py; tests/speedups runs both.
"""

cimport cython
from cpython.buffer cimport PyBUF_FULL_RO, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.buffer cimport PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.long cimport PyLong_CheckExact
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

# Bound once at import: attribute lookups on builtins cost more than a module global.
cdef object _memoryview = memoryview
cdef object _index = __import__("operator").index

SSE_EVENT = 0
SSE_COMMENT = 1
SSE_ERROR = 2

cdef enum:
    _EVENT = 0
    _COMMENT = 1
    _ERROR = 2
    _LF = 10
    _CR = 13
    _SP = 32
    _COLON = 58
    _F_OTHER = 0
    _F_DATA = 1
    _F_EVENT = 2
    _F_ID = 3
    # Buffers above this capacity are shrunk once they are mostly empty, so one huge
    # event does not pin a large allocation for the life of a long stream.
    _SHRINK_ABOVE = 65536

cdef bytes _EMPTY = b""
cdef bytes _ERROR_TEXT = b"event exceeds max_event_size"


cdef int _get_buffer(object obj, Py_buffer* view) except -1:
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    except BufferError:
        # A non-contiguous memoryview: one copy, the same bytes the pure twin sees.
        PyObject_GetBuffer(_memoryview(obj).tobytes(), view, PyBUF_SIMPLE)
    return 0


# ------------------------------------------------------------------------------ SSE


# Items are created and dropped at stream rate: a freelist skips the allocator, and as
# every field is bytes, int or None no reference cycle is possible, so the GC need not
# track them (no_gc saves the tracking on each allocation and the gen-0 scans).
@cython.freelist(256)
@cython.no_gc
cdef class SSEEvent:
    """One item produced by SSEScanner (immutable)."""

    def __init__(self, kind, bytes event not None, bytes data not None, id, bytes raw not None):
        if id is not None and type(id) is not bytes:
            raise TypeError("id must be bytes or None")
        self.kind = _index(kind)
        self.event = event
        self.data = data
        self.id = id
        self.raw = raw

    def __repr__(self):
        return (
            f"SSEEvent(kind={self.kind!r}, event={self.event!r}, data={self.data!r}, "
            f"id={self.id!r}, raw={self.raw!r})"
        )

    def __eq__(self, other):
        # By field, also against the pure twin's SSEEvent (tests compare the two).
        if not isinstance(other, SSEEvent) and type(other).__name__ != "SSEEvent":
            return NotImplemented
        return (
            self.kind == other.kind
            and self.data == other.data
            and self.event == other.event
            and self.id == other.id
            and self.raw == other.raw
        )

    def __hash__(self):
        return hash((self.kind, self.event, self.data, self.id, self.raw))


cdef inline SSEEvent _new_event(int kind, bytes event, bytes data, object id_, bytes raw):
    # __new__ skips __init__ and its argument checks: values here are known good.
    cdef SSEEvent ev = SSEEvent.__new__(SSEEvent)
    ev.kind = kind
    ev.event = event
    ev.data = data
    ev.id = id_
    ev.raw = raw
    return ev


cdef inline bytes _slice(const unsigned char* buf, Py_ssize_t s, Py_ssize_t e):
    return PyBytes_FromStringAndSize(<const char*>buf + s, e - s)


cdef inline int _field_name(const unsigned char* buf, Py_ssize_t off, Py_ssize_t le,
                            Py_ssize_t* vs) noexcept nogil:
    """Classify the field line buf[off:le]; store where its value starts in vs."""
    cdef const unsigned char* colon = <const unsigned char*>memchr(buf + off, _COLON, le - off)
    cdef Py_ssize_t name_end, v
    if colon == NULL:
        name_end = le
        v = le
    else:
        name_end = colon - buf
        v = name_end + 1
        if v < le and buf[v] == _SP:
            v += 1
    vs[0] = v
    name_end -= off
    if name_end == 4 and memcmp(buf + off, b"data", 4) == 0:
        return _F_DATA
    if name_end == 5 and memcmp(buf + off, b"event", 5) == 0:
        return _F_EVENT
    if name_end == 2 and buf[off] == b'i' and buf[off + 1] == b'd':
        return _F_ID
    return _F_OTHER


cdef class SSEScanner:
    """Sans-I/O splitter of a Server-Sent-Events byte stream into items.

    The pending bytes (everything since the last item) live in one C buffer. Lines are
    found with memchr starting where the previous search stopped, so the cost is linear
    however the stream is chunked. Field values stay spans of the buffer until their
    block dispatches: no per-line Python objects, and at most about max_event_size plus
    one chunk held.
    """

    def __cinit__(self):
        self._buf = NULL
        self._wb = NULL
        self._len = 0
        self._cap = 0
        self._events_seen = 0
        self._reset()

    def __init__(self, max_event_size=1048576):
        cdef Py_ssize_t size = _index(max_event_size)
        if size <= 0:
            raise ValueError("max_event_size must be positive")
        self._max = size

    def __dealloc__(self):
        free(self._buf)
        self._buf = NULL

    cdef void _reset(self) noexcept:
        self._len = 0
        self._start = 0
        self._line_start = 0
        self._skip_lf = False
        self._discarding = False
        self._disc_midline = False
        self._bom_check = True
        self._reset_block()

    cdef void _reset_block(self) noexcept:
        self._has_fields = False
        self._blk = -1
        self._carried = 0
        self._ndata = 0
        self._data_len = 0
        self._d0s = self._d0e = -1
        self._ev_s = self._ev_e = -1
        self._id_s = self._id_e = -1
        if self._carry_ndata:
            self._carry_data = None
            self._carry_ndata = 0
        # Checked first: storing None costs two refcount updates per event otherwise.
        if self._carry_event is not None:
            self._carry_event = None
        if self._carry_id is not None:
            self._carry_id = None

    @property
    def buffered(self):
        return self._len - self._start

    @property
    def events_seen(self):
        return self._events_seen

    def finish(self):
        cdef bytes tail = _slice(self._buf, self._start, self._len)
        self._events_seen = 0
        self._reset()
        if self._cap > _SHRINK_ABOVE:
            free(self._buf)
            self._buf = self._wb = NULL
            self._cap = 0
        return tail

    def feed(self, chunk):
        cdef Py_buffer view
        if PyBytes_CheckExact(chunk):
            return self.feed_buffer(<const unsigned char*>PyBytes_AS_STRING(chunk),
                                    PyBytes_GET_SIZE(chunk))
        _get_buffer(chunk, &view)
        try:
            return self.feed_buffer(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef list feed_buffer(self, const unsigned char* p, Py_ssize_t n):
        cdef list out = []
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t old
        if n <= 0:
            return out
        if self._skip_lf:
            self._skip_lf = False
            if p[0] == _LF:
                # The LF of a CRLF split across chunks: a byte of the stream (kept for
                # raw), not a line of its own.
                i = 1
                if not self._discarding:
                    self._append(p, 1)
                    self._line_start = self._len
        if self._discarding and i < n:
            i = self._discard(p, i, n)
        if i < n:
            if self._len == 0:
                # Nothing pending (the usual case at an event boundary): scan the
                # caller's bytes in place and copy only the leftover, in _compact.
                self._wb = p + i
                self._len = n - i
                try:
                    self._scan(0, out)
                except BaseException:
                    # Never keep a pointer into the caller's buffer past this call.
                    self._wb = self._buf
                    self._reset()
                    raise
            else:
                old = self._len
                self._append(p + i, n - i)
                self._scan(old, out)
        if self._discarding:
            if self._len > self._line_start:
                self._disc_midline = True
            self._start = self._line_start = self._len
        elif (self._len > self._line_start
                and self._carried + (self._len - self._start) > self._max):
            self._error(out, True)
            self._disc_midline = True
            self._start = self._line_start = self._len
        self._compact()
        return out

    cdef int _append(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t need = self._len + n
        cdef Py_ssize_t cap
        cdef unsigned char* nb
        if need > self._cap:
            cap = self._cap * 2 if self._cap else 4096
            if cap < need:
                cap = need
            nb = <unsigned char*>realloc(self._buf, cap)
            if nb == NULL:
                raise MemoryError()
            self._buf = nb
            self._cap = cap
        self._wb = self._buf
        memcpy(self._buf + self._len, p, n)
        self._len = need
        return 0

    cdef Py_ssize_t _discard(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
        """Skip input up to and including the next blank line; return where to resume."""
        cdef bint midline = self._disc_midline
        cdef Py_ssize_t j
        cdef bint blank
        while i < n:
            j = i
            while j < n and p[j] != _LF and p[j] != _CR:
                j += 1
            if j == n:
                midline = True
                i = n
                break
            blank = j == i and not midline
            i = j + 1
            if p[j] == _CR:
                if i < n:
                    if p[i] == _LF:
                        i += 1
                else:
                    self._skip_lf = True
            midline = False
            if blank:
                self._discarding = False
                break
        self._disc_midline = midline
        return i

    cdef int _scan(self, Py_ssize_t pos, list out) except -1:
        cdef const unsigned char* buf = self._wb
        cdef Py_ssize_t end = self._len
        cdef Py_ssize_t nlf = -1
        cdef Py_ssize_t ncr = -1
        cdef Py_ssize_t j, te
        cdef const void* hit
        while True:
            # Each terminator kind is searched for once past the last hit: a stream
            # with only LFs costs a single (failed) memchr for CR per chunk.
            if nlf < pos:
                hit = memchr(buf + pos, _LF, end - pos)
                nlf = (<const unsigned char*>hit - buf) if hit != NULL else end
            if ncr < pos:
                hit = memchr(buf + pos, _CR, end - pos)
                ncr = (<const unsigned char*>hit - buf) if hit != NULL else end
            j = nlf if nlf < ncr else ncr
            if j >= end:
                return 0
            te = j + 1
            if buf[j] == _CR:
                if te < end:
                    if buf[te] == _LF:
                        te += 1
                else:
                    self._skip_lf = True
            self._line(self._line_start, j, te, out)
            self._line_start = te
            pos = te

    cdef int _line(self, Py_ssize_t ls, Py_ssize_t le, Py_ssize_t te, list out) except -1:
        cdef const unsigned char* buf = self._wb
        cdef Py_ssize_t off = ls
        if self._discarding:
            if le == ls and not self._disc_midline:
                self._discarding = False
            self._disc_midline = False
            self._start = te
            return 0
        if self._bom_check:
            # WHATWG: one BOM at the very start of the stream is not part of the line.
            self._bom_check = False
            if le - ls >= 3 and buf[ls] == 0xEF and buf[ls + 1] == 0xBB and buf[ls + 2] == 0xBF:
                off = ls + 3
        if off == le:
            if self._has_fields:
                return self._dispatch(ls, te, out)
            if self._carried + (le - self._start) > self._max:
                self._error(out, False)
                self._start = te
            return 0
        if self._carried + (le - self._start) > self._max:
            self._error(out, True)
            self._start = te
            return 0
        if buf[off] == _COLON:
            return self._comment(ls, off, le, te, out)
        self._field(off, le)
        return 0

    cdef void _field(self, Py_ssize_t off, Py_ssize_t le) noexcept:
        cdef Py_ssize_t vs
        cdef int kind
        cdef const unsigned char* b = self._wb + off
        if le - off >= 5 and b[4] == _COLON and b[0] == b'd' and b[1] == b'a' and b[2] == b't' and b[3] == b'a':
            # Nearly every line of an LLM stream is "data: ...": skip the generic parse.
            kind = _F_DATA
            vs = off + 5
            if vs < le and b[5] == _SP:
                vs += 1
        else:
            kind = _field_name(self._wb, off, le, &vs)
        self._has_fields = True
        if self._blk < 0:
            self._blk = off
        if kind == _F_DATA:
            self._ndata += 1
            if self._ndata == 1:
                self._d0s = vs
                self._d0e = le
            self._data_len += le - vs
        elif kind == _F_EVENT:
            self._ev_s = vs
            self._ev_e = le
        elif kind == _F_ID:
            # WHATWG: an id containing NUL is ignored.
            if memchr(self._wb + vs, 0, le - vs) == NULL:
                self._id_s = vs
                self._id_e = le

    cdef int _comment(self, Py_ssize_t ls, Py_ssize_t off, Py_ssize_t le, Py_ssize_t te,
                      list out) except -1:
        cdef Py_ssize_t vs = off + 1
        if vs < le and self._wb[vs] == _SP:
            vs += 1
        cdef bytes value = _slice(self._wb, vs, le)
        if self._has_fields:
            # A comment inside a block: its raw must take the block's earlier lines to
            # keep raw in stream order, so their fields move into the carry objects.
            self._materialise(ls)
            self._carried += ls - self._start
        cdef bytes raw = _slice(self._wb, self._start, te)
        self._start = te
        out.append(_new_event(_COMMENT, _EMPTY, value, None, raw))
        return 0

    cdef int _dispatch(self, Py_ssize_t ls, Py_ssize_t te, list out) except -1:
        cdef bytes raw = _slice(self._wb, self._start, te)
        cdef bytes data = self._build_data(ls)
        cdef bytes event
        cdef object id_
        if self._ev_s >= 0:
            event = _slice(self._wb, self._ev_s, self._ev_e)
        elif self._carry_event is not None:
            event = self._carry_event
        else:
            event = _EMPTY
        if self._id_s >= 0:
            id_ = _slice(self._wb, self._id_s, self._id_e)
        else:
            id_ = self._carry_id
        self._reset_block()
        self._start = te
        self._events_seen += 1
        out.append(_new_event(_EVENT, event, data, id_, raw))
        return 0

    cdef int _error(self, list out, bint discard) except -1:
        out.append(_new_event(_ERROR, _EMPTY, _ERROR_TEXT, None, _EMPTY))
        self._reset_block()
        self._bom_check = False
        self._discarding = discard
        self._disc_midline = False
        return 0

    cdef bytes _build_data(self, Py_ssize_t end):
        """Join the carried data values and those of the block lines in _buf[_blk:end]."""
        cdef Py_ssize_t total = self._carry_ndata + self._ndata
        cdef Py_ssize_t clen, size, w, p, q, vs
        cdef bint first
        cdef bytes result
        cdef char* dst
        cdef const unsigned char* buf = self._wb
        if total == 0:
            return _EMPTY
        if self._ndata == 0:
            return self._carry_data
        if self._carry_ndata == 0 and self._ndata == 1:
            return _slice(buf, self._d0s, self._d0e)
        clen = PyBytes_GET_SIZE(self._carry_data) if self._carry_ndata else 0
        # One LF between values; the carried bytes already hold their own.
        size = clen + self._data_len + self._ndata - (0 if self._carry_ndata else 1)
        result = PyBytes_FromStringAndSize(NULL, size)
        dst = PyBytes_AS_STRING(result)
        w = 0
        first = self._carry_ndata == 0
        if not first:
            memcpy(dst, PyBytes_AS_STRING(self._carry_data), clen)
            w = clen
        # Rare path (several data lines): walk the block's lines again rather than keep
        # a span per line, which would cost memory proportional to the line count.
        p = self._blk
        while p < end:
            q = p
            while q < end and buf[q] != _LF and buf[q] != _CR:
                q += 1
            if _field_name(buf, p, q, &vs) == _F_DATA:
                if not first:
                    dst[w] = b'\n'
                    w += 1
                first = False
                memcpy(dst + w, buf + vs, q - vs)
                w += q - vs
            if q < end and buf[q] == _CR:
                q += 1
            if q < end and buf[q] == _LF:
                q += 1
            p = q
        return result

    cdef int _materialise(self, Py_ssize_t end) except -1:
        if self._ndata:
            self._carry_data = self._build_data(end)
            self._carry_ndata += self._ndata
        if self._ev_s >= 0:
            self._carry_event = _slice(self._wb, self._ev_s, self._ev_e)
        if self._id_s >= 0:
            self._carry_id = _slice(self._wb, self._id_s, self._id_e)
        self._blk = -1
        self._ndata = 0
        self._data_len = 0
        self._d0s = self._d0e = -1
        self._ev_s = self._ev_e = -1
        self._id_s = self._id_e = -1
        return 0

    cdef int _compact(self) except -1:
        cdef Py_ssize_t s = self._start
        cdef Py_ssize_t cap
        cdef unsigned char* nb
        cdef const unsigned char* chunk = self._wb
        if chunk != self._buf:
            # Scanned in place: the leftover moves into our own buffer (which was empty).
            self._len -= s
            self._wb = self._buf
            if self._len:
                cap = self._len
                self._len = 0
                self._append(chunk + s, cap)
        elif s == 0:
            return 0
        else:
            # Only bytes that arrived after the last item emitted in this feed remain, so
            # this move is bounded by the chunk size: feeding stays linear.
            self._len -= s
            if self._len:
                memmove(self._buf, self._buf + s, self._len)
        self._line_start -= s
        self._start = 0
        if self._blk >= 0:
            self._blk -= s
        if self._d0s >= 0:
            self._d0s -= s
            self._d0e -= s
        if self._ev_s >= 0:
            self._ev_s -= s
            self._ev_e -= s
        if self._id_s >= 0:
            self._id_s -= s
            self._id_e -= s
        if self._cap > _SHRINK_ABOVE and self._len < self._cap // 4:
            cap = self._len * 2 if self._len > 2048 else 4096
            nb = <unsigned char*>realloc(self._buf, cap)
            if nb != NULL:
                self._buf = self._wb = nb
                self._cap = cap
        return 0


# ------------------------------------------------------------------------- counters

cdef extern from *:
    # GCC/Clang builtins: relaxed atomics are enough for counters (no ordering with
    # other memory is promised), and they stay correct when the block lives in shared
    # memory updated by several processes.
    int __ATOMIC_RELAXED
    uint64_t __atomic_fetch_add(uint64_t* ptr, uint64_t val, int order) nogil
    uint64_t __atomic_load_n(uint64_t* ptr, int order) nogil
    void __atomic_store_n(uint64_t* ptr, uint64_t val, int order) nogil


def count_bytes(data):
    """Number of bytes in data (a memoryview counts its nbytes, not its items)."""
    cdef Py_buffer view
    cdef Py_ssize_t n
    if PyBytes_CheckExact(data):
        return PyBytes_GET_SIZE(data)
    # PyBUF_FULL_RO accepts any layout; view.len is the byte count either way.
    PyObject_GetBuffer(data, &view, PyBUF_FULL_RO)
    n = view.len
    PyBuffer_Release(&view)
    return n


cdef class CounterBlock:
    """size unsigned 64-bit counters in one flat buffer (see docs/speedups.md)."""

    def __cinit__(self):
        self._counters = NULL
        self._size = 0
        self._own = False
        self._has_view = False

    def __init__(self, size, buffer=None):
        cdef Py_ssize_t n = _index(size)
        if n < 0:
            raise ValueError("size must be >= 0")
        if self._counters != NULL:
            raise RuntimeError("CounterBlock is already initialised")
        if buffer is None:
            self._counters = <uint64_t*>calloc(n if n else 1, 8)
            if self._counters == NULL:
                raise MemoryError()
            self._own = True
            self._size = n
            return
        try:
            PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        except BufferError:
            raise TypeError("buffer must be writable and C-contiguous") from None
        # Held until dealloc: while exported, a bytearray cannot be resized under us.
        self._has_view = True
        if self._view.len < 8 * n:
            raise ValueError(f"buffer holds {self._view.len} bytes, {8 * n} needed")
        if self._view.len and (<size_t>self._view.buf) % 8:
            raise ValueError("buffer must be 8-byte aligned")
        self._counters = <uint64_t*>self._view.buf
        self._size = n

    def __dealloc__(self):
        if self._own:
            free(self._counters)
        if self._has_view:
            PyBuffer_Release(&self._view)
        self._counters = NULL

    @property
    def size(self):
        return self._size

    @property
    def nbytes(self):
        return 8 * self._size

    cdef int inc(self, Py_ssize_t index, uint64_t value) except -1 nogil:
        if <size_t>index >= <size_t>self._size:
            with gil:
                raise IndexError("counter index out of range")
        __atomic_fetch_add(self._counters + index, value, __ATOMIC_RELAXED)
        return 0

    def add(self, Py_ssize_t index, value):
        # An int converts to C without allocating, and the add allocates nothing. The
        # exact-int check keeps floats out (a C conversion would truncate them).
        cdef long long v
        if <size_t>index >= <size_t>self._size:
            raise IndexError("counter index out of range")
        if not PyLong_CheckExact(value):
            value = _index(value)
        v = value
        if v < 0:
            raise ValueError("value must be >= 0")
        __atomic_fetch_add(self._counters + index, <uint64_t>v, __ATOMIC_RELAXED)

    def get(self, Py_ssize_t index):
        if <size_t>index >= <size_t>self._size:
            raise IndexError("counter index out of range")
        return __atomic_load_n(self._counters + index, __ATOMIC_RELAXED)

    def set(self, Py_ssize_t index, value):
        cdef uint64_t v
        if <size_t>index >= <size_t>self._size:
            raise IndexError("counter index out of range")
        value = _index(value)
        if value < 0:
            raise ValueError("value must be >= 0")
        v = value
        __atomic_store_n(self._counters + index, v, __ATOMIC_RELAXED)

    def snapshot(self):
        cdef Py_ssize_t i
        return [__atomic_load_n(self._counters + i, __ATOMIC_RELAXED) for i in range(self._size)]

    def reset(self):
        cdef Py_ssize_t i
        for i in range(self._size):
            __atomic_store_n(self._counters + i, 0, __ATOMIC_RELAXED)


# --------------------------------------------------------------------------- tokens
# The cost model and its constants are documented in _pure.py, which is the reference;
# the values below must stay equal to it (tests compare every result exactly).

cdef enum:
    _UNIT = 1000
    _WORD_FREE_LETTERS = 6
    _W_WORD = 920
    _W_LONG = 194
    _W_DIGITS = 1156
    _W_PUNCT_RUN = 1013
    _W_PUNCT_EXTRA = 44
    _W_PUNCT_GLUE = 369
    _W_SPACE_ALONE = 1000
    _W_SPACE_RUN = 294
    _W_NEWLINE = 1226
    _W_NEWLINE_AFTER_PUNCT = 570
    _W_LATIN_EXT = 407
    _W_LETTER2 = 59
    _W_LETTER3 = 1000
    _W_HAN = 559
    _W_KANA = 556
    _W_HANGUL = 687
    _W_SYMBOL = 1746
    _W_EMOJI = 1338
    _W_EMOJI_MOD = 1000
    _W_FLAG = 2000
    _W_BAD = 1000

    _R_NONE = 0
    _R_WORD = 1
    _R_CJK = 2
    _R_DIGIT = 3
    _R_PUNCT = 4
    _R_SPACE = 5
    _R_NL = 6
    _R_END = 7

    # ASCII byte classes: run class in the low 3 bits, letter case above.
    _LOWER = 8
    _UPPER = 16

# Filled at import from the same rules as _pure._ascii_table.
cdef unsigned char _ACLS[128]


cdef void _init_ascii_table() noexcept:
    cdef int b
    for b in range(128):
        if 97 <= b <= 122:
            _ACLS[b] = _R_WORD | _LOWER
        elif 65 <= b <= 90:
            _ACLS[b] = _R_WORD | _UPPER
        elif 48 <= b <= 57:
            _ACLS[b] = _R_DIGIT
        elif b == 32 or b == 9:
            _ACLS[b] = _R_SPACE
        elif b == 10 or b == 13:
            _ACLS[b] = _R_NL
        else:
            _ACLS[b] = _R_PUNCT


_init_ascii_table()


cdef inline long long _close_cost(int run, Py_ssize_t n, int prev, int nxt) noexcept nogil:
    if run == _R_WORD:
        if n > _WORD_FREE_LETTERS:
            return _W_WORD + (n - _WORD_FREE_LETTERS) * <long long>_W_LONG
        return _W_WORD
    if run == _R_SPACE:
        if n > 1:
            return _W_SPACE_RUN
        return _W_SPACE_ALONE if (nxt == _R_DIGIT or nxt == _R_END) else 0
    if run == _R_PUNCT:
        if n == 1 and nxt == _R_WORD and prev != _R_SPACE:
            return _W_PUNCT_GLUE
        return _W_PUNCT_RUN + (n - 1) * <long long>_W_PUNCT_EXTRA
    if run == _R_DIGIT:
        return (n + 2) // 3 * <long long>_W_DIGITS
    if run == _R_NL:
        return _W_NEWLINE_AFTER_PUNCT if prev == _R_PUNCT else _W_NEWLINE
    return 0


cdef inline void _classify(unsigned int cp, int* run, int* cost, bint* lower) noexcept nogil:
    lower[0] = False
    if cp < 0x800:
        if 0xC0 <= cp <= 0x24F and cp != 0xD7 and cp != 0xF7:
            run[0] = _R_WORD; cost[0] = _W_LATIN_EXT; lower[0] = True
        elif cp >= 0x370:
            run[0] = _R_WORD; cost[0] = _W_LETTER2
        else:
            run[0] = _R_PUNCT; cost[0] = _W_SYMBOL
    elif cp < 0x10000:
        if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF:
            run[0] = _R_CJK; cost[0] = _W_HAN
        elif 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF:
            run[0] = _R_CJK; cost[0] = _W_KANA
        elif 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
            run[0] = _R_CJK; cost[0] = _W_HANGUL
        elif cp == 0x200D or 0xFE00 <= cp <= 0xFE0F:
            run[0] = _R_PUNCT; cost[0] = _W_EMOJI_MOD
        elif (0x2000 <= cp <= 0x2BFF or 0x3000 <= cp <= 0x303F or 0xFE10 <= cp <= 0xFE6F
                or 0xFF00 <= cp <= 0xFFEF or 0xE000 <= cp <= 0xF8FF):
            run[0] = _R_PUNCT; cost[0] = _W_SYMBOL
        elif 0x1E00 <= cp <= 0x1FFF:
            run[0] = _R_WORD; cost[0] = _W_LATIN_EXT; lower[0] = True
        else:
            run[0] = _R_WORD; cost[0] = _W_LETTER3
    elif 0x1F1E6 <= cp <= 0x1F1FF:
        run[0] = _R_PUNCT; cost[0] = _W_FLAG
    elif 0x1F3FB <= cp <= 0x1F3FF:
        run[0] = _R_PUNCT; cost[0] = _W_EMOJI_MOD
    elif 0x20000 <= cp <= 0x3FFFF:
        run[0] = _R_CJK; cost[0] = _W_HAN
    else:
        run[0] = _R_PUNCT; cost[0] = _W_EMOJI


cdef inline void _tok_char(_TokState* s, int r, int cost, bint lower) noexcept nogil:
    """One non-ASCII (or invalid) character: the slow path, a few per multibyte char."""
    if r == s.run:
        s.n += 1
    else:
        if s.run:
            s.units += _close_cost(s.run, s.n, s.prev, r)
            s.prev = s.run
        s.run = r
        s.n = 1
    if r == _R_WORD:
        s.last_lower = lower
    s.units += cost


cdef void _tok_feed(_TokState* st, const unsigned char* p, Py_ssize_t length) noexcept nogil:
    # The hot fields live in plain locals so the compiler keeps them in registers; the
    # struct is synchronised only around the slow (non-ASCII) paths and at the end.
    cdef long long units = st.units
    cdef Py_ssize_t n = st.n
    cdef int run = st.run
    cdef int prev = st.prev
    cdef bint last_lower = st.last_lower
    cdef int need = st.need
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j
    cdef unsigned char b, c
    cdef int r, cost, k
    cdef bint lower
    while i < length:
        b = p[i]
        if b < 0x80 and not need:
            c = _ACLS[b]
            r = c & 7
            i += 1
            if r == run and not ((c & _UPPER) and last_lower):
                n += 1
            else:
                if run:
                    units += _close_cost(run, n, prev, r)
                    prev = run
                run = r
                n = 1
            if r == _R_SPACE and n == 1 and i < length and <unsigned char>(p[i] - 97) < 26:
                # " word": the lone space joins the word (costs nothing) and the word
                # starts here; same result as two trips round the loop, fewer branches.
                prev = _R_SPACE
                run = _R_WORD
                n = 1
                i += 1
                c = _R_WORD | _LOWER
                r = _R_WORD
            if r == _R_WORD:
                last_lower = (c & _LOWER) != 0
                while last_lower:
                    # The rest of a lowercase word in one tight loop: most of prose.
                    j = i
                    while j < length and <unsigned char>(p[j] - 97) < 26:
                        j += 1
                    n += j - i
                    i = j
                    if i + 1 >= length or p[i] != 32 or <unsigned char>(p[i + 1] - 97) >= 26:
                        break
                    # "word word": close this word, the lone space before the next one
                    # is free; exactly what the general path would add, in one step.
                    units += _close_cost(_R_WORD, n, prev, _R_SPACE)
                    prev = _R_SPACE
                    n = 1
                    i += 2
            continue
        st.units = units
        st.n = n
        st.run = run
        st.prev = prev
        st.last_lower = last_lower
        if st.need:
            if 0x80 <= b <= 0xBF:
                st.cp = (st.cp << 6) | (b & 0x3F)
                st.need -= 1
                st.seq += 1
                i += 1
                if st.need == 0:
                    _classify(st.cp, &r, &cost, &lower)
                    _tok_char(st, r, cost, lower)
            else:
                # Cut short: its bytes are invalid; b is read again as a fresh byte.
                for k in range(st.seq):
                    _tok_char(st, _R_PUNCT, _W_BAD, False)
                st.need = 0
        else:
            i += 1
            if 0xC2 <= b <= 0xDF:
                st.need = 1
                st.cp = b & 0x1F
                st.seq = 1
            elif 0xE0 <= b <= 0xEF:
                st.need = 2
                st.cp = b & 0x0F
                st.seq = 1
            elif 0xF0 <= b <= 0xF4:
                st.need = 3
                st.cp = b & 0x07
                st.seq = 1
            else:
                _tok_char(st, _R_PUNCT, _W_BAD, False)
        units = st.units
        n = st.n
        run = st.run
        prev = st.prev
        last_lower = st.last_lower
        need = st.need
    st.units = units
    st.n = n
    st.run = run
    st.prev = prev
    st.last_lower = last_lower


cdef inline long long _tok_tokens(const _TokState* st) noexcept nogil:
    cdef _TokState s = st[0]
    cdef int k
    if s.need:
        # A sequence cut short by the end counts as stray bytes (on a copy).
        for k in range(s.seq):
            _tok_char(&s, _R_PUNCT, _W_BAD, False)
    return (s.units + _close_cost(s.run, s.n, s.prev, _R_END) + _UNIT // 2) // _UNIT


cdef class TokenEstimator:
    """Streaming token estimate of UTF-8 text; split anywhere, same result."""

    def __cinit__(self):
        self.reset()

    def reset(self):
        memset(&self._s, 0, sizeof(_TokState))
        self._bytes = 0

    @property
    def bytes_fed(self):
        return self._bytes

    @property
    def tokens(self):
        return _tok_tokens(&self._s)

    def feed(self, data):
        cdef Py_buffer view
        if PyBytes_CheckExact(data):
            self.feed_buffer(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            return
        _get_buffer(data, &view)
        try:
            self.feed_buffer(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef void feed_buffer(self, const unsigned char* p, Py_ssize_t n) noexcept nogil:
        self._bytes += n
        _tok_feed(&self._s, p, n)

    cdef long long count(self) noexcept nogil:
        return _tok_tokens(&self._s)


def estimate_tokens(text):
    """Estimated o200k token count of UTF-8 text (see TokenEstimator)."""
    cdef _TokState s
    cdef Py_buffer view
    memset(&s, 0, sizeof(_TokState))
    if isinstance(text, str):
        text = PyUnicode_AsUTF8String(text)
    if PyBytes_CheckExact(text):
        _tok_feed(&s, <const unsigned char*>PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    else:
        _get_buffer(text, &view)
        try:
            _tok_feed(&s, <const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    return _tok_tokens(&s)


# --------------------------------------------------------------------------- deltas
# Rules in _pure.py (DeltaScanner): text keys' string values are decoded and fed to the
# estimator once their closing quote is seen; usage/name/error keys with a non-null
# value set flags; anything that is not one well-formed JSON text returns 0.

DELTA_USAGE = 1
DELTA_NAME = 2
DELTA_ERROR = 4

cdef enum:
    _D_USAGE = 1
    _D_NAME = 2
    _D_ERROR = 4
    _MAX_DEPTH = 256
    _K_NONE = 0
    _K_TEXT = 1
    _K_DELTA = 2
    _S_VALUE = 0
    _S_FIRST_VALUE = 1
    _S_KEY = 2
    _S_FIRST_KEY = 3
    _S_COLON = 4
    _S_AFTER = 5


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 10 or c == 13 or c == 9


cdef inline bint _is_scalar(unsigned char c) noexcept nogil:
    return (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
            or c == b'+' or c == b'-' or c == b'.')


cdef inline int _hex4(const unsigned char* p) noexcept nogil:
    """Value of 4 hex digits, or -1."""
    cdef int v = 0
    cdef int k, d
    cdef unsigned char c
    for k in range(4):
        c = p[k]
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return -1
        v = (v << 4) | d
    return v


cdef inline Py_ssize_t _string_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                   bint* escaped) noexcept nogil:
    """Index of the closing quote of the string whose body starts at i; -1 if the
    string is unterminated or holds an escape JSON does not allow."""
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c == b'"':
            return i
        if c == b'\\':
            escaped[0] = True
            if i + 1 >= n:
                return -1
            c = p[i + 1]
            if c == b'u':
                if i + 6 > n or _hex4(p + i + 2) < 0:
                    return -1
                i += 6
            elif (c == b'"' or c == b'\\' or c == b'/' or c == b'b' or c == b'f'
                    or c == b'n' or c == b'r' or c == b't'):
                i += 2
            else:
                return -1
        else:
            i += 1
    return -1


cdef inline int _utf8(unsigned int cp, unsigned char* out) noexcept nogil:
    if cp < 0x80:
        out[0] = cp
        return 1
    if cp < 0x800:
        out[0] = 0xC0 | (cp >> 6)
        out[1] = 0x80 | (cp & 0x3F)
        return 2
    if cp < 0x10000:
        out[0] = 0xE0 | (cp >> 12)
        out[1] = 0x80 | ((cp >> 6) & 0x3F)
        out[2] = 0x80 | (cp & 0x3F)
        return 3
    out[0] = 0xF0 | (cp >> 18)
    out[1] = 0x80 | ((cp >> 12) & 0x3F)
    out[2] = 0x80 | ((cp >> 6) & 0x3F)
    out[3] = 0x80 | (cp & 0x3F)
    return 4


cdef class DeltaScanner:
    """Token estimate of the text streamed in SSE event JSON, without a JSON parse."""

    def __cinit__(self):
        self.reset()

    def reset(self):
        memset(&self._tok, 0, sizeof(_TokState))
        self._text_bytes = 0
        self._events = 0

    @property
    def tokens(self):
        return _tok_tokens(&self._tok)

    @property
    def text_bytes(self):
        return self._text_bytes

    @property
    def events(self):
        return self._events

    def feed_event(self, data):
        cdef Py_buffer view
        cdef int flags
        if PyBytes_CheckExact(data):
            flags = self.feed_buffer(<const unsigned char*>PyBytes_AS_STRING(data),
                                     PyBytes_GET_SIZE(data))
        else:
            _get_buffer(data, &view)
            try:
                flags = self.feed_buffer(<const unsigned char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        return flags

    cdef int feed_buffer(self, const unsigned char* p, Py_ssize_t n) noexcept nogil:
        cdef int flags
        self._events += 1
        flags = self._walk(p, n)
        return flags if flags > 0 else 0

    cdef void _feed_text(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t end,
                         bint escaped) noexcept nogil:
        """Decode the (validated) string body p[i:end] into the estimator."""
        cdef Py_ssize_t run_start
        cdef unsigned char buf[4]
        cdef unsigned char c
        cdef int u, lo, k
        if not escaped:
            self._text_bytes += end - i
            _tok_feed(&self._tok, p + i, end - i)
            return
        run_start = i
        while i < end:
            if p[i] != b'\\':
                i += 1
                continue
            # Plain bytes go straight from the input: the estimator is split-invariant.
            if i > run_start:
                self._text_bytes += i - run_start
                _tok_feed(&self._tok, p + run_start, i - run_start)
            c = p[i + 1]
            if c == b'u':
                u = _hex4(p + i + 2)
                i += 6
                if 0xD800 <= u <= 0xDBFF and i + 6 <= end and p[i] == b'\\' and p[i + 1] == b'u':
                    lo = _hex4(p + i + 2)
                    if 0xDC00 <= lo <= 0xDFFF:
                        u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                        i += 6
                if 0xD800 <= u <= 0xDFFF:
                    u = 0xFFFD  # a lone surrogate, as a lenient decoder would
                k = _utf8(u, buf)
            else:
                if c == b'b':
                    buf[0] = 8
                elif c == b'f':
                    buf[0] = 12
                elif c == b'n':
                    buf[0] = 10
                elif c == b'r':
                    buf[0] = 13
                elif c == b't':
                    buf[0] = 9
                else:
                    buf[0] = c  # " \ /
                k = 1
                i += 2
            self._text_bytes += k
            _tok_feed(&self._tok, buf, k)
            run_start = i
        if end > run_start:
            self._text_bytes += end - run_start
            _tok_feed(&self._tok, p + run_start, end - run_start)

    cdef int _walk(self, const unsigned char* p, Py_ssize_t n) noexcept nogil:
        """Flags of a well-formed JSON text, or -1 when it is not one."""
        cdef unsigned char stack[_MAX_DEPTH]  # 1: object, 0: array
        cdef int depth = 0
        cdef int flags = 0
        cdef int state = _S_VALUE
        cdef int key_kind = _K_NONE
        cdef int key_flag = 0
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t end, j
        cdef bint escaped
        cdef unsigned char c
        while True:
            while i < n and _is_ws(p[i]):
                i += 1
            if i >= n:
                return -1
            c = p[i]
            if state == _S_VALUE or state == _S_FIRST_VALUE:
                if c == b'"':
                    escaped = False
                    end = _string_end(p, i + 1, n, &escaped)
                    if end < 0:
                        return -1
                    if key_kind:
                        self._feed_text(p, i + 1, end, escaped)
                    flags |= key_flag
                    i = end + 1
                elif _is_scalar(c):
                    j = i
                    while j < n and _is_scalar(p[j]):
                        j += 1
                    if not (j - i == 4 and memcmp(p + i, b"null", 4) == 0):
                        flags |= key_flag
                    i = j
                elif c == b'{' or c == b'[':
                    if depth >= _MAX_DEPTH:
                        return -1
                    flags |= key_flag
                    stack[depth] = c == b'{'
                    depth += 1
                    state = _S_FIRST_KEY if c == b'{' else _S_FIRST_VALUE
                    key_kind = _K_NONE
                    key_flag = 0
                    i += 1
                    continue
                elif c == b']' and state == _S_FIRST_VALUE:
                    depth -= 1
                    i += 1
                else:
                    return -1
            elif state == _S_KEY or state == _S_FIRST_KEY:
                if c == b'"':
                    escaped = False
                    end = _string_end(p, i + 1, n, &escaped)
                    if end < 0:
                        return -1
                    key_kind = _key_kind(p + i + 1, end - i - 1, &key_flag)
                    i = end + 1
                    state = _S_COLON
                    continue
                if c != b'}' or state != _S_FIRST_KEY:
                    return -1
                depth -= 1
                i += 1
            elif state == _S_COLON:
                if c != b':':
                    return -1
                state = _S_VALUE
                i += 1
                continue
            elif c == b',' and depth:
                state = _S_KEY if stack[depth - 1] else _S_VALUE
                i += 1
                continue
            elif depth and c == (<unsigned char>125 if stack[depth - 1] else <unsigned char>93):  # } ]
                depth -= 1
                i += 1
            else:
                return -1
            # A value just ended.
            state = _S_AFTER
            key_kind = _K_NONE
            key_flag = 0
            if depth == 0:
                while i < n and _is_ws(p[i]):
                    i += 1
                return flags if i == n else -1


cdef inline int _key_kind(const unsigned char* k, Py_ssize_t n, int* flag) noexcept nogil:
    """How the value of key k[:n] (raw, undecoded) is treated; its flag in *flag."""
    flag[0] = 0
    if n == 4:
        if memcmp(k, b"text", 4) == 0:
            return _K_TEXT
        if memcmp(k, b"name", 4) == 0:
            flag[0] = _D_NAME
    elif n == 5:
        if memcmp(k, b"delta", 5) == 0:
            return _K_DELTA
        if memcmp(k, b"usage", 5) == 0:
            flag[0] = _D_USAGE
        elif memcmp(k, b"error", 5) == 0:
            flag[0] = _D_ERROR
    elif n == 7:
        if memcmp(k, b"content", 7) == 0 or memcmp(k, b"refusal", 7) == 0:
            return _K_TEXT
    elif n == 8:
        if memcmp(k, b"thinking", 8) == 0:
            return _K_TEXT
    elif n == 9:
        if memcmp(k, b"arguments", 9) == 0:
            return _K_TEXT
    elif n == 12:
        if memcmp(k, b"partial_json", 12) == 0:
            return _K_TEXT
    elif n == 17:
        if memcmp(k, b"reasoning_content", 17) == 0:
            return _K_TEXT
    return _K_NONE
