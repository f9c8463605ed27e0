# Included by _core.pyx (one extension module, uvloop-style includes): sse.
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
                    if self._len == self._start:
                        # It leads the next item: not a byte of that event's size
                        # (unsplit, it was part of the line before).
                        self._carried -= 1
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
        else:
            self._carried = 0  # a leading stray LF (see feed_buffer) goes out with this raw
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


# ------------------------------------------------------------------------ pass-through

PASS_GENERIC = 0
PASS_OPENAI = 1
PASS_ANTHROPIC = 2
PASS_CONTENT = 1
PASS_TERMINAL = 2
PASS_NOTABLE = 4
PASS_OVERFLOW = 8
NOTE_USAGE = 1
NOTE_NAME = 2
NOTE_ERROR = 4
NOTE_TERMINAL = 8

cdef enum:
    _PD_GENERIC = 0
    _PD_OPENAI = 1
    _PD_ANTHROPIC = 2
    _PF_CONTENT = 1
    _PF_TERMINAL = 2
    _PF_NOTABLE = 4
    _PF_OVERFLOW = 8
    _N_ERROR = 4
    _N_TERMINAL = 8
    # Held-tail buffers: the first allocation is small (a slow stream's torn event is
    # a few hundred bytes, and thousands of streams may each hold one); one above
    # _PASS_KEEP is freed as soon as it is empty.
    _PASS_MIN_CAP = 512
    _PASS_KEEP = 4096


cdef inline bint _span_is(const unsigned char* p, Py_ssize_t n, const char* s,
                          Py_ssize_t k) noexcept nogil:
    return n == k and memcmp(p, s, k) == 0


cdef class SSEPass:
    """One call per upstream chunk: the bytes to forward, flags, and the rare events the
    caller must see. Rules and API in _pure/sse.py (SSEPass), which this mirrors."""

    def __cinit__(self):
        self._buf = NULL
        self._wb = NULL
        self._len = 0
        self._cap = 0
        self._wlen = 0
        self._events = 0
        self._flags = 0
        self._dead = False
        self._bom_check = True
        self._notable = None
        self._reset()

    def __init__(self, max_event_size=1048576, dialect=PASS_GENERIC):
        cdef Py_ssize_t size = _index(max_event_size)
        cdef Py_ssize_t code = _index(dialect)
        if size <= 0:
            raise ValueError("max_event_size must be positive")
        if code != _PD_GENERIC and code != _PD_OPENAI and code != _PD_ANTHROPIC:
            raise ValueError("unknown dialect code")
        self._max = size
        self._dialect = <int>code
        self._delta = DeltaScanner()

    def __dealloc__(self):
        free(self._buf)
        self._buf = NULL

    cdef void _reset(self) noexcept:
        self._len = 0
        self._line_start = 0
        self._boundary = 0
        self._skip_lf = False
        self._reset_block()

    cdef void _reset_block(self) noexcept:
        self._has_fields = False
        self._blk = -1
        self._ndata = 0
        self._data_len = 0
        self._d0s = self._d0e = -1
        self._ev_s = self._ev_e = -1

    @property
    def flags(self):
        return self._flags

    @property
    def buffered(self):
        return self._len

    @property
    def events(self):
        return self._events

    @property
    def tokens(self):
        return _tok_tokens(&self._delta._tok)

    @property
    def text_bytes(self):
        return self._delta._text_bytes

    @property
    def overflowed(self):
        return self._dead

    def take_notable(self):
        cdef list notable = self._notable
        self._notable = None
        return notable if notable is not None else []

    def finish(self):
        cdef bytes tail = _slice(self._buf, 0, self._len)
        self._reset()
        if self._cap > _PASS_KEEP:
            free(self._buf)
            self._buf = NULL
            self._cap = 0
        return tail

    def feed(self, chunk):
        cdef Py_buffer view
        if PyBytes_CheckExact(chunk):
            return self.feed_buffer(chunk, <const unsigned char*>PyBytes_AS_STRING(chunk),
                                    PyBytes_GET_SIZE(chunk))
        _get_buffer(chunk, &view)
        try:
            return self.feed_buffer(None, <const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef object feed_buffer(self, object whole, const unsigned char* p, Py_ssize_t n):
        """Scan p[:n]; whole is the bytes object p points into (returned as it is when
        the chunk goes out whole) or None."""
        cdef Py_ssize_t skip = 0
        cdef Py_ssize_t text0, b, pos
        cdef object out
        cdef bint in_place
        self._flags = 0
        if self._notable is not None:
            self._notable = None
        if self._dead or n <= 0:
            return _EMPTY
        text0 = self._delta._text_bytes
        if self._skip_lf:
            self._skip_lf = False
            if p[0] == _LF:
                skip = 1  # completes the CRLF of the line before: not a line of its own
        self._line_start += skip
        pos = self._line_start
        in_place = self._len == 0
        if in_place:
            # Nothing held (the usual case at an event boundary): scan the caller's
            # bytes where they are; only a torn tail is copied, in _keep_tail.
            self._wb = p
            self._wlen = n
            self._boundary = skip  # the line that LF ends went out already
        else:
            # The held bytes past _line_start hold no terminator: search the new ones.
            if pos < self._len:
                pos = self._len
            _pass_append(self, p, n)
            self._wb = self._buf
            self._wlen = self._len
            self._boundary = 0
        try:
            self._scan(pos)
        except BaseException:
            # Never keep a pointer into the caller's buffer past this call.
            self._wb = self._buf
            self._dead = True
            self._reset()
            raise
        if not self._dead and self._wlen - self._boundary > self._max:
            self._dead = True
            self._flags |= _PF_OVERFLOW
        if self._delta._text_bytes != text0:
            self._flags |= _PF_CONTENT
        b = self._boundary
        if b == 0:
            out = _EMPTY
        elif in_place and whole is not None and b == n:
            out = whole
        else:
            out = PyBytes_FromStringAndSize(<const char*>self._wb, b)
        if self._dead:
            self._wb = self._buf
            self._reset()
            if self._cap > _PASS_KEEP:
                free(self._buf)
                self._buf = self._wb = NULL
                self._cap = 0
        else:
            self._keep_tail()
        return out

    cdef int _keep_tail(self) except -1:
        """Make _buf hold exactly the window past the boundary; spans follow it."""
        cdef Py_ssize_t s = self._boundary
        cdef Py_ssize_t rest = self._wlen - s
        cdef const unsigned char* w = self._wb
        cdef unsigned char* nb
        if w != self._buf:
            self._len = 0
            if rest:
                _pass_append(self, w + s, rest)
        else:
            if rest and s:
                memmove(self._buf, self._buf + s, rest)
            self._len = rest
        self._wb = self._buf
        self._wlen = self._len
        if self._len == 0 and self._cap > _PASS_KEEP:
            free(self._buf)
            self._buf = self._wb = NULL
            self._cap = 0
        elif self._cap > _PASS_KEEP and self._len < self._cap // 4:
            nb = <unsigned char*>realloc(self._buf, self._len * 2)
            if nb != NULL:
                self._buf = self._wb = nb
                self._cap = self._len * 2
        self._line_start -= s
        if self._blk >= 0:
            self._blk -= s
        if self._d0s >= 0:
            self._d0s -= s
            self._d0e -= s
        if self._ev_s >= 0:
            self._ev_s -= s
            self._ev_e -= s
        self._boundary = 0
        return 0

    cdef int _scan(self, Py_ssize_t pos) except -1:
        cdef const unsigned char* buf = self._wb
        cdef Py_ssize_t end = self._wlen
        cdef Py_ssize_t nlf = -1
        cdef Py_ssize_t ncr = -1
        cdef Py_ssize_t j, te, ls
        cdef const void* hit
        while not self._dead:
            # Each terminator kind is searched for once past its last hit: an LF-only
            # stream costs one failed memchr for CR per chunk.
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
            ls = self._line_start
            self._line_start = te
            self._line(ls, j, te)
            pos = te
        return 0

    cdef int _line(self, Py_ssize_t ls, Py_ssize_t le, Py_ssize_t te) except -1:
        cdef const unsigned char* buf = self._wb
        cdef Py_ssize_t off = ls
        if self._bom_check:
            # WHATWG: one BOM at the very start of the stream is not part of the line.
            self._bom_check = False
            if le - ls >= 3 and buf[ls] == 0xEF and buf[ls + 1] == 0xBB and buf[ls + 2] == 0xBF:
                off = ls + 3
        if le - self._boundary > self._max:
            self._dead = True
            self._flags |= _PF_OVERFLOW
            return 0
        if off == le:
            if self._has_fields:
                self._dispatch(ls, te)
            self._boundary = te
        elif buf[off] == _COLON:
            if not self._has_fields:
                self._boundary = te  # a comment between events goes out with them
        else:
            self._field(off, le)
        return 0

    cdef void _field(self, Py_ssize_t off, Py_ssize_t le) noexcept:
        cdef Py_ssize_t vs
        cdef int kind
        cdef const unsigned char* b = self._wb + off
        if le - off >= 5 and b[4] == _COLON and b[0] == b'd' and b[1] == b'a' and b[2] == b't' and b[3] == b'a':
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

    cdef bytes _join_data(self, Py_ssize_t end):
        """The data values of the block lines in _wb[_blk:end], joined with LF (rare:
        several data lines; walked again rather than keeping a span per line)."""
        cdef Py_ssize_t size = self._data_len + self._ndata - 1
        cdef Py_ssize_t w = 0
        cdef Py_ssize_t p = self._blk
        cdef Py_ssize_t q, vs
        cdef bint first = True
        cdef const unsigned char* buf = self._wb
        cdef bytes result = PyBytes_FromStringAndSize(NULL, size)
        cdef char* dst = PyBytes_AS_STRING(result)
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

    cdef int _dispatch(self, Py_ssize_t ls, Py_ssize_t te) except -1:
        cdef const unsigned char* buf = self._wb
        cdef const unsigned char* dp = buf
        cdef Py_ssize_t dn = 0
        cdef const unsigned char* ep = buf
        cdef Py_ssize_t en = 0
        cdef bytes joined = None
        cdef int note
        cdef bint terminal = False
        cdef int dialect = self._dialect
        if self._ndata == 1:
            dp = buf + self._d0s
            dn = self._d0e - self._d0s
        elif self._ndata > 1:
            joined = self._join_data(ls)
            dp = <const unsigned char*>PyBytes_AS_STRING(joined)
            dn = PyBytes_GET_SIZE(joined)
        if self._ev_s >= 0:
            ep = buf + self._ev_s
            en = self._ev_e - self._ev_s
        self._events += 1
        note = self._delta.feed_buffer(dp, dn)
        if _span_is(ep, en, b"error", 5):
            note |= _N_ERROR
        if dialect == _PD_OPENAI:
            terminal = (_span_is(dp, dn, b"[DONE]", 6)
                        or _span_is(ep, en, b"response.completed", 18)
                        or _span_is(ep, en, b"response.failed", 15)
                        or _span_is(ep, en, b"response.incomplete", 19))
        elif dialect == _PD_ANTHROPIC:
            terminal = _span_is(ep, en, b"message_stop", 12)
        if terminal:
            self._flags |= _PF_TERMINAL
            note |= _N_TERMINAL
        if (note & ~_N_TERMINAL) or dialect == _PD_GENERIC:
            self._flags |= _PF_NOTABLE
            if self._notable is None:
                self._notable = []
            self._notable.append((
                note,
                _slice(ep, 0, en),
                joined if joined is not None else _slice(dp, 0, dn),
                self._boundary,
                te,
            ))
        self._reset_block()
        return 0


cdef int _pass_append(SSEPass s, const unsigned char* p, Py_ssize_t n) except -1:
    cdef Py_ssize_t need = s._len + n
    cdef Py_ssize_t cap
    cdef unsigned char* nb
    if need > s._cap:
        cap = s._cap * 2 if s._cap else _PASS_MIN_CAP
        if cap < need:
            cap = need
        nb = <unsigned char*>realloc(s._buf, cap)
        if nb == NULL:
            raise MemoryError()
        s._buf = nb
        s._cap = cap
    memcpy(s._buf + s._len, p, n)
    s._len = need
    return 0
