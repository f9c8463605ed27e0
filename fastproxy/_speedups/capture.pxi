# Wire capture on the event loop: the twin of _pure/capture.py, which documents the rules.
# Included by _core.pyx.
#
# redact_flags replaces a lower-cased copy and a dozen substring searches per captured
# piece (each search pays its own setup, ~0.2 µs on a short head) with one pass that
# looks only at bytes starting one of the trigger words. append_capture_frame writes a
# frame straight into the link's buffer: no header, meta or data copy on the way.

REDACT_HEADER = 1
REDACT_JSON = 2
REDACT_SHAPE = 4
REDACT_QUERY = 8
REDACT_LITERAL = 16
# A frame whose direction has this bit holds no payload of its own: its data is the
# previous frame's, between a prefix and a suffix it carries (CaptureBuffer.relayed).
CAPTURE_REF = 0x80
# A frame whose direction has this bit starts with split points (u32 count, u32 each)
# before its payload: where the client's copy will leave bytes out (CaptureBuffer.split).
CAPTURE_SPLIT = 0x40
# Only payloads this long are sent by reference; the writer hands every frame this long
# to its Python side, which keeps the last one for the reference that may follow.
CAPTURE_REF_MIN = 1024

cdef enum:
    _R_HEADER = 1
    _R_JSON = 2
    _R_SHAPE = 4
    _R_QUERY = 8
    _R_LITERAL = 16
    _R_WORDS = 15  # every flag the word scan can set
    _CAPTURE_FRAME_HEAD = 25  # u32 rest, f64 ts, u64 seq, u8 dir, u32 meta length
    _CAPTURE_REF = 0x80
    _CAPTURE_SPLIT = 0x40
    _CAPTURE_REF_MIN = 1024

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "string.h":
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen) nogil


cdef inline unsigned char _lc(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _ci_word(const unsigned char* p, Py_ssize_t avail,
                          const char* word, Py_ssize_t n) noexcept nogil:
    """``word`` (lower case) at ``p``, ASCII letters compared without case."""
    cdef Py_ssize_t j
    if avail < n:
        return False
    for j in range(n):
        if _lc(p[j]) != <unsigned char>word[j]:
            return False
    return True


cdef inline int _after(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The rule a trigger word sets by the byte that follows it: a quote closes a JSON
    member name, '=' starts a query value."""
    if i >= n:
        return 0
    if p[i] == 34:
        return _R_JSON
    if p[i] == 61:
        return _R_QUERY
    return 0


# Each trigger word is found from an anchor: a byte it holds at a known offset, chosen
# rare in payloads: 'k' (key, token, cookie, sk-), 'z' (authorization, aiza), 'w'
# (password); secret" from its last two bytes, t and the quote. SSE chunks are mostly
# JSON text full of the letters that start trigger words, so testing each such letter
# cost ~2 ns a byte; memchr finds the rare anchors at ~0.02 ns a byte, and the
# t-then-quote pairs are found eight bytes at a time (a quote alone is too common an
# anchor in JSON: every member name has two).

cdef inline int _at_k(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef int flags = 0
    if _ci_word(p + i, n - i, "key", 3):  # key, key", key=
        flags |= _R_HEADER | _after(p, i + 3, n)
    if i >= 2 and _ci_word(p + i - 2, n - i + 2, "token", 5):  # to-k-en", to-k-en=
        flags |= _after(p, i + 3, n)
    if i >= 3 and _ci_word(p + i - 3, n - i + 3, "cookie", 6):  # coo-k-ie
        flags |= _R_HEADER
    # sk- (case-sensitive: provider keys are lower case)
    if p[i] == 107 and i >= 1 and p[i - 1] == 115 and i + 1 < n and p[i + 1] == 45:
        flags |= _R_SHAPE
    return flags


cdef inline int _at_z(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef int flags = 0
    # authori-z-ation, and authorization" (the byte after it is at i + 6)
    if i >= 7 and _ci_word(p + i - 7, n - i + 7, "authorization", 13):
        flags |= _R_HEADER | (_after(p, i + 6, n) & _R_JSON)
    if i >= 2 and _ci_word(p + i - 2, n - i + 2, "aiza", 4):  # ai-z-a
        flags |= _R_SHAPE
    return flags


cdef inline int _at_w(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    if i >= 4 and _ci_word(p + i - 4, n - i + 4, "password\"", 9):  # pass-w-ord"
        return _R_JSON
    return 0


cdef inline int _at_quote(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    if i >= 6 and _ci_word(p + i - 6, n - i + 6, "secret\"", 7):  # secret-"
        return _R_JSON
    return 0


# Where the scan looks: the next byte, at or after i, where a trigger word can be:
# a k followed by e, i or - (key, token, cookie, sk-), a z followed by a (authorization,
# AIza), a w followed by o (password), in either case, or a quote after "et" (secret");
# n when none is left. Every check at a k, z or w (the _at_ functions) needs the byte
# after it, so one of those at the very end is never a candidate. One pass, sixteen bytes at a
# time with SSE2 (every x86-64 has it): six memchr passes (one per anchor byte) and an
# eight-byte word loop for the quotes took ~0.3 ns a byte, and stopped at every "chunk"
# and "content" of a stream. Other machines take the byte loop, which finds the same.
cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline int fp_scan_is_candidate(const unsigned char* p, Py_ssize_t i,
                                           Py_ssize_t n) {
        unsigned char c, d;
        if (p[i] == '"')
            return i >= 2 && (p[i - 1] | 0x20) == 't' && (p[i - 2] | 0x20) == 'e';
        if (i + 1 >= n) return 0;
        c = p[i] | 0x20;
        d = p[i + 1] | 0x20;
        if (c == 'k') return d == 'e' || d == 'i' || p[i + 1] == '-';
        if (c == 'z') return d == 'a';
        return c == 'w' && d == 'o';
    }
    static inline Py_ssize_t fp_scan_candidate(const unsigned char* p, Py_ssize_t i,
                                               Py_ssize_t n) {
    #if defined(__SSE2__)
        for (; i < 2 && i < n; i++) {  /* two bytes before each block from here on */
            if (fp_scan_is_candidate(p, i, n)) return i;
        }
        {
            const __m128i low = _mm_set1_epi8(0x20);
            const __m128i ck = _mm_set1_epi8('k'), cz = _mm_set1_epi8('z');
            const __m128i cw = _mm_set1_epi8('w'), cq = _mm_set1_epi8('"');
            const __m128i ct = _mm_set1_epi8('t'), ce = _mm_set1_epi8('e');
            const __m128i ci = _mm_set1_epi8('i'), cd = _mm_set1_epi8('-');
            const __m128i ca = _mm_set1_epi8('a'), co = _mm_set1_epi8('o');
            while (i + 17 <= n) {
                __m128i b = _mm_loadu_si128((const __m128i*)(p + i));
                __m128i next = _mm_loadu_si128((const __m128i*)(p + i + 1));
                __m128i lc = _mm_or_si128(b, low);
                __m128i nl = _mm_or_si128(next, low);
                __m128i k = _mm_and_si128(
                    _mm_cmpeq_epi8(lc, ck),
                    _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(nl, ce), _mm_cmpeq_epi8(nl, ci)),
                                 _mm_cmpeq_epi8(next, cd)));
                __m128i z = _mm_and_si128(_mm_cmpeq_epi8(lc, cz), _mm_cmpeq_epi8(nl, ca));
                __m128i w = _mm_and_si128(_mm_cmpeq_epi8(lc, cw), _mm_cmpeq_epi8(nl, co));
                __m128i m = _mm_or_si128(_mm_or_si128(k, z), w);
                int mask = _mm_movemask_epi8(_mm_cmpeq_epi8(b, cq));
                if (mask) {
                    /* quotes are common in JSON: the two bytes before only then */
                    __m128i p1 = _mm_or_si128(_mm_loadu_si128((const __m128i*)(p + i - 1)), low);
                    __m128i p2 = _mm_or_si128(_mm_loadu_si128((const __m128i*)(p + i - 2)), low);
                    m = _mm_or_si128(m, _mm_and_si128(
                        _mm_cmpeq_epi8(b, cq),
                        _mm_and_si128(_mm_cmpeq_epi8(p1, ct), _mm_cmpeq_epi8(p2, ce))));
                }
                mask = _mm_movemask_epi8(m);
                if (mask) return i + __builtin_ctz((unsigned)mask);
                i += 16;
            }
        }
    #endif
        for (; i < n; i++) {
            if (fp_scan_is_candidate(p, i, n)) return i;
        }
        return n;
    }
    """
    Py_ssize_t _scan_candidate "fp_scan_candidate"(
        const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil


cdef int _scan_words(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef int flags = 0
    cdef Py_ssize_t i = 0
    cdef unsigned char c
    while True:
        i = _scan_candidate(p, i, n)
        if i >= n:
            return flags
        c = p[i] | 0x20
        if c == 107:  # k
            flags |= _at_k(p, i, n)
        elif c == 122:  # z
            flags |= _at_z(p, i, n)
        elif c == 119:  # w
            flags |= _at_w(p, i, n)
        elif not flags & _R_JSON:  # a quote after a t: secret"
            flags |= _at_quote(p, i, n)
        i += 1


cdef bint _ci_find(const unsigned char* p, Py_ssize_t n, bytes word):
    cdef const char* w = PyBytes_AS_STRING(word)
    cdef Py_ssize_t k = PyBytes_GET_SIZE(word)
    cdef Py_ssize_t i
    if k == 0:
        return True
    for i in range(n - k + 1):
        if _lc(p[i]) == <unsigned char>w[0] and _ci_word(p + i, n - i, w, k):
            return True
    return False


cdef int _scan_all(const unsigned char* p, Py_ssize_t n, tuple secrets, tuple extras) except -1:
    cdef int flags = _scan_words(p, n)
    cdef object s
    if not flags & _R_HEADER:
        for s in extras:
            if _ci_find(p, n, <bytes?>s):
                flags |= _R_HEADER
                break
    for s in secrets:
        if PyBytes_GET_SIZE(<bytes?>s) == 0 or memmem(
            p, n, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s)
        ) != NULL:
            flags |= _R_LITERAL
            break
    return flags


def redact_flags(data, tuple secrets not None=(), tuple extras not None=()):
    cdef Py_buffer view
    _get_buffer(data, &view)
    try:
        return _scan_all(<const unsigned char*>view.buf, view.len, secrets, extras)
    finally:
        PyBuffer_Release(&view)


cdef int _frame_into(bytearray out, double ts, uint64_t seq, int direction, bytes meta,
                     const char* data, Py_ssize_t n) except -1:
    cdef Py_ssize_t start, m
    cdef char* w
    cdef uint32_t u32
    if not 0 <= direction <= 255:
        raise ValueError("direction must be 0..255")
    m = PyBytes_GET_SIZE(meta)
    if _CAPTURE_FRAME_HEAD - 4 + m + n > 0xFFFFFFFF:
        raise ValueError("capture event too large for one frame")
    start = PyByteArray_GET_SIZE(out)
    PyByteArray_Resize(out, start + _CAPTURE_FRAME_HEAD + m + n)
    w = PyByteArray_AS_STRING(out) + start
    u32 = <uint32_t>(_CAPTURE_FRAME_HEAD - 4 + m + n)
    memcpy(w, &u32, 4)
    memcpy(w + 4, &ts, 8)
    memcpy(w + 12, &seq, 8)
    w[20] = <char><uint8_t>direction
    u32 = <uint32_t>m
    memcpy(w + 21, &u32, 4)
    memcpy(w + 25, PyBytes_AS_STRING(meta), m)
    memcpy(w + 25 + m, data, n)
    return 0


cdef int _frame_split_into(bytearray out, double ts, uint64_t seq, int direction,
                           bytes meta, tuple points, const char* data,
                           Py_ssize_t n) except -1:
    """A frame whose data is the split points (u32 count, then each u32) and the
    payload; the points are checked by the caller."""
    cdef Py_ssize_t k = len(points), start, i
    cdef char* w
    cdef uint32_t u32
    start = PyByteArray_GET_SIZE(out)
    _frame_into(out, ts, seq, direction, meta, data, 0)
    PyByteArray_Resize(out, PyByteArray_GET_SIZE(out) + 4 + 4 * k + n)
    w = PyByteArray_AS_STRING(out) + start
    memcpy(&u32, w, 4)
    u32 += <uint32_t>(4 + 4 * k + n)
    memcpy(w, &u32, 4)
    w = PyByteArray_AS_STRING(out) + PyByteArray_GET_SIZE(out) - (4 + 4 * k + n)
    u32 = <uint32_t>k
    memcpy(w, &u32, 4)
    for i in range(k):
        u32 = <uint32_t>points[i]
        memcpy(w + 4 + 4 * i, &u32, 4)
    memcpy(w + 4 + 4 * k, data, n)
    return 0


def append_capture_frame(bytearray out not None, double ts, seq, int direction,
                         bytes meta not None, data):
    cdef Py_buffer view
    cdef uint64_t u64 = seq
    _get_buffer(data, &view)
    try:
        _frame_into(out, ts, u64, direction, meta, <const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


cdef class CaptureBuffer:
    """Captured events waiting for their hand-off to the writer: the loop's whole part of
    wire capture per event, in one call (see _pure/capture.py)."""

    cdef bytearray _out
    cdef public Py_ssize_t backlog
    cdef public bint disabled
    cdef readonly uint64_t seq
    cdef readonly uint64_t dropped
    cdef readonly uint64_t referred
    cdef Py_ssize_t _limit
    cdef Py_ssize_t _full
    cdef tuple _secrets
    cdef tuple _extras
    cdef object _redact
    cdef object _wake
    cdef double _wall0
    cdef double _mono0
    # The payload of the frame numbered _last_seq, when it went out unredacted and is
    # immutable (bytes), so a later ``relayed`` of the same object can refer to it.
    cdef object _last
    cdef uint64_t _last_seq

    def __init__(self, tuple secrets not None, tuple extras not None, redact, wake,
                 Py_ssize_t limit, Py_ssize_t full, double wall0, double mono0):
        self._out = bytearray()
        self.backlog = 0
        self.disabled = False
        self.seq = 0
        self.dropped = 0
        self.referred = 0
        self._limit = limit
        self._full = full
        self._secrets = secrets
        self._extras = extras
        self._redact = redact
        self._wake = wake
        self._wall0 = wall0
        self._mono0 = mono0
        self._last = None
        self._last_seq = 0

    def __len__(self):
        return PyByteArray_GET_SIZE(self._out)

    def take(self):
        cdef bytearray out = self._out
        self._out = bytearray()
        return out

    def clear(self):
        # Frames dropped here never reach the writer: nothing may refer to them.
        self._out = bytearray()
        self._last = None

    def event(self, int direction, bytes meta not None, data):
        cdef Py_buffer view
        cdef int flags
        cdef Py_ssize_t before
        cdef timespec now
        cdef double ts
        cdef object clean
        if self.disabled:
            return
        before = PyByteArray_GET_SIZE(self._out)
        if before + self.backlog > self._limit:
            self.dropped += 1
            return
        clock_gettime(CLOCK_MONOTONIC, &now)
        ts = self._wall0 + ((<double>now.tv_sec + <double>now.tv_nsec * 1e-9) - self._mono0)
        _get_buffer(data, &view)
        try:
            flags = _scan_all(<const unsigned char*>view.buf, view.len,
                              self._secrets, self._extras)
            if flags == 0:
                self.seq += 1
                _frame_into(self._out, ts, self.seq, direction, meta,
                            <const char*>view.buf, view.len)
                if type(data) is bytes and view.len >= _CAPTURE_REF_MIN:
                    self._last = data
                    self._last_seq = self.seq
        finally:
            PyBuffer_Release(&view)
        if flags:
            clean = self._redact(bytes(data), flags)
            self.seq += 1
            _frame_into(self._out, ts, self.seq, direction, meta,
                        PyBytes_AS_STRING(<bytes?>clean), PyBytes_GET_SIZE(clean))
        if PyByteArray_GET_SIZE(self._out) >= self._full:
            self._wake(True)
        elif before == 0:
            self._wake(False)

    def split(self, int direction, bytes meta not None, bytes payload not None,
              tuple points not None):
        """``event`` of ``payload``, telling the writer where a later ``relayed`` will
        cut it (``points``: increasing offsets inside it), so it can compress the pieces
        apart and reuse them. Redacted or short, it is an ordinary event."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t k = len(points), i, before, pos = 0, p
        cdef timespec now
        cdef double ts
        if self.disabled:
            return
        if n < _CAPTURE_REF_MIN or k == 0 or 4 + 4 * k + n > 0xFFFFFF00:
            self.event(direction, meta, payload)
            return
        for i in range(k):
            p = points[i]
            if p <= pos or p >= n:
                self.event(direction, meta, payload)
                return
            pos = p
        if _scan_all(<const unsigned char*>PyBytes_AS_STRING(payload), n,
                     self._secrets, self._extras):
            self.event(direction, meta, payload)
            return
        before = PyByteArray_GET_SIZE(self._out)
        if before + self.backlog > self._limit:
            self.dropped += 1
            return
        clock_gettime(CLOCK_MONOTONIC, &now)
        ts = self._wall0 + ((<double>now.tv_sec + <double>now.tv_nsec * 1e-9) - self._mono0)
        self.seq += 1
        _frame_split_into(self._out, ts, self.seq, direction | _CAPTURE_SPLIT, meta, points,
                          PyBytes_AS_STRING(payload), n)
        self._last = payload
        self._last_seq = self.seq
        if PyByteArray_GET_SIZE(self._out) >= self._full:
            self._wake(True)
        elif before == 0:
            self._wake(False)

    def relayed(self, int direction, bytes meta not None, bytes payload not None,
                bytes framed not None, Py_ssize_t at, tuple cuts not None):
        """``framed`` was relayed: ``payload`` without the byte ranges in ``cuts``
        (``((start, end), ...)``, in order), at offset ``at``, between a prefix and a
        suffix (HTTP chunked framing, or nothing). When ``payload`` is the data of the
        previous event, the event refers to it instead of carrying it again."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t f = PyBytes_GET_SIZE(framed)
        cdef Py_ssize_t k = len(cuts)
        cdef Py_ssize_t before, kept = n, pos = 0, start, end, i, outside, o
        cdef const char* w = PyBytes_AS_STRING(framed)
        cdef timespec now
        cdef double ts
        cdef bytearray ref
        cdef char* r
        cdef uint32_t u32
        if (payload is not self._last or self._last_seq != self.seq or self.disabled
                or at < 0):
            self.event(direction, meta, framed)
            return
        for i in range(k):
            start, end = cuts[i]
            if start < pos or end < start or end > n:
                self.event(direction, meta, framed)
                return
            kept -= end - start
            pos = end
        if at + kept > f:
            self.event(direction, meta, framed)
            return
        # The reference's data: u32 prefix length, u32 number of cuts, each cut's u32
        # start and end, the prefix, the suffix. Prefix and suffix are scanned like any
        # data; a trigger word in them sends the whole event instead.
        outside = f - kept
        ref = bytearray(8 + 8 * k + outside)
        r = PyByteArray_AS_STRING(ref)
        u32 = <uint32_t>at
        memcpy(r, &u32, 4)
        u32 = <uint32_t>k
        memcpy(r + 4, &u32, 4)
        o = 8
        for i in range(k):
            start, end = cuts[i]
            u32 = <uint32_t>start
            memcpy(r + o, &u32, 4)
            u32 = <uint32_t>end
            memcpy(r + o + 4, &u32, 4)
            o += 8
        memcpy(r + o, w, at)
        memcpy(r + o + at, w + at + kept, f - kept - at)
        if _scan_all(<const unsigned char*>r + o, outside, self._secrets, self._extras):
            self.event(direction, meta, framed)
            return
        before = PyByteArray_GET_SIZE(self._out)
        if before + self.backlog > self._limit:
            self.dropped += 1
            return
        clock_gettime(CLOCK_MONOTONIC, &now)
        ts = self._wall0 + ((<double>now.tv_sec + <double>now.tv_nsec * 1e-9) - self._mono0)
        self.seq += 1
        _frame_into(self._out, ts, self.seq, direction | _CAPTURE_REF, meta,
                    r, PyByteArray_GET_SIZE(ref))
        self.referred += 1
        if PyByteArray_GET_SIZE(self._out) >= self._full:
            self._wake(True)
        elif before == 0:
            self._wake(False)


# -- the writer's side: frames to CBOR event items ------------------------------------
# The capture writer turns each frame into one CBOR map (docs/capture.md): ts, dir, seq,
# data and, when the frame has any, meta. For the usual small event with a flat meta
# object this is written here byte by byte; anything else (data to compress, a meta that
# is not a flat object of strings, integers, booleans and nulls without escapes) goes to
# the caller's ``slow(ts, seq, direction, meta, data)``, which builds it with cbor2.

cdef inline Py_ssize_t _cbor_head_size(uint64_t v) noexcept:
    if v < 24:
        return 1
    if v < 0x100:
        return 2
    if v < 0x10000:
        return 3
    if v < 0x100000000:
        return 5
    return 9


cdef inline Py_ssize_t _cbor_head(char* w, int major, uint64_t v) noexcept:
    cdef int i, n
    cdef unsigned char mt = <unsigned char>(major << 5)
    if v < 24:
        w[0] = <char>(mt | v)
        return 1
    if v < 0x100:
        w[0] = <char>(mt | 24)
        n = 1
    elif v < 0x10000:
        w[0] = <char>(mt | 25)
        n = 2
    elif v < 0x100000000:
        w[0] = <char>(mt | 26)
        n = 4
    else:
        w[0] = <char>(mt | 27)
        n = 8
    for i in range(n):
        w[n - i] = <char>(v >> (8 * i) & 0xFF)
    return 1 + n


cdef Py_ssize_t _meta_cbor(const unsigned char* p, Py_ssize_t n, char* w) noexcept:
    """A flat JSON object (as orjson writes it) as a CBOR map; its size. With ``w`` NULL
    only sizes it. -1: not a flat object this handles (the caller takes the slow way)."""
    cdef Py_ssize_t i = 1, o = 0, start, pairs = 0, k
    cdef uint64_t num
    cdef bint neg
    cdef int field
    if n < 2 or p[0] != 123 or p[n - 1] != 125:
        return -1
    if w != NULL:
        o = 1  # the map head, written last (its pair count is known at the end)
    else:
        o = 1
    if n == 2:
        if w != NULL:
            w[0] = <char>0xA0
        return 1
    while i < n:
        for field in range(2):  # the key, then the value
            if p[i] == 34:  # a string: key or value, copied as CBOR text
                i += 1
                start = i
                while i < n and p[i] != 34:
                    if p[i] == 92 or p[i] < 32:
                        return -1
                    i += 1
                if i >= n:
                    return -1
                k = i - start
                if w != NULL:
                    o += _cbor_head(w + o, 3, <uint64_t>k)
                    memcpy(w + o, p + start, k)
                else:
                    o += _cbor_head_size(<uint64_t>k)
                o += k
                i += 1
            elif field == 0:
                return -1
            elif p[i] == 116 and i + 4 <= n and memcmp(p + i, b"true", 4) == 0:
                if w != NULL:
                    w[o] = <char>0xF5
                o += 1
                i += 4
            elif p[i] == 102 and i + 5 <= n and memcmp(p + i, b"false", 5) == 0:
                if w != NULL:
                    w[o] = <char>0xF4
                o += 1
                i += 5
            elif p[i] == 110 and i + 4 <= n and memcmp(p + i, b"null", 4) == 0:
                if w != NULL:
                    w[o] = <char>0xF6
                o += 1
                i += 4
            elif p[i] == 45 or 48 <= p[i] <= 57:
                neg = p[i] == 45
                if neg:
                    i += 1
                start = i
                num = 0
                while i < n and 48 <= p[i] <= 57:
                    if i - start >= 18:
                        return -1  # beyond what fits without overflow checks
                    num = num * 10 + (p[i] - 48)
                    i += 1
                if i == start or (i < n and (p[i] == 46 or p[i] == 101 or p[i] == 69)):
                    return -1  # no digits, or a float
                if neg and num == 0:
                    return -1  # -0 is not an integer CBOR can say apart
                if w != NULL:
                    o += _cbor_head(w + o, 1 if neg else 0, num - 1 if neg else num)
                else:
                    o += _cbor_head_size(num - 1 if neg else num)
            else:
                return -1
            if i >= n:
                return -1
            if field == 0:
                if p[i] != 58:
                    return -1
                i += 1
        pairs += 1
        if p[i] == 44:
            i += 1
        elif p[i] == 125 and i == n - 1:
            break
        else:
            return -1
    if pairs >= 24:
        return -1
    if w != NULL:
        w[0] = <char>(0xA0 | pairs)
    return o


cdef bytes _K_TS = b"\x62ts"
cdef bytes _K_DIR = b"\x63dir"
cdef bytes _K_SEQ = b"\x63seq"
cdef bytes _K_DATA = b"\x64data"
cdef bytes _K_META = b"\x64meta"


def capture_items(buf, Py_ssize_t compress_min, slow):
    """The CBOR items of the whole frames at the start of ``buf``, and how many bytes
    they took (the caller drops them)."""
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t end, pos = 0, stop, meta_at, data_at, m, d, msize, size, o
    cdef uint32_t length, mlen
    cdef double ts
    cdef uint64_t seq, bits
    cdef int direction, i
    cdef bytes item
    cdef char* w
    cdef list items = []
    _get_buffer(buf, &view)
    try:
        p = <const unsigned char*>view.buf
        end = view.len
        while end - pos >= _CAPTURE_FRAME_HEAD:
            memcpy(&length, p + pos, 4)
            stop = pos + 4 + length
            if stop > end or length < _CAPTURE_FRAME_HEAD - 4:
                break
            memcpy(&ts, p + pos + 4, 8)
            memcpy(&seq, p + pos + 12, 8)
            direction = p[pos + 20]
            memcpy(&mlen, p + pos + 21, 4)
            meta_at = pos + _CAPTURE_FRAME_HEAD
            data_at = meta_at + mlen
            if data_at > stop:
                break
            m = mlen
            d = stop - data_at
            msize = 0
            if m:
                msize = _meta_cbor(p + meta_at, m, NULL)
                if msize == 1:
                    m = 0  # an empty object: no meta, as cbor2's writer leaves it out
            if d >= compress_min or msize < 0 or direction & (_CAPTURE_REF | _CAPTURE_SPLIT):
                items.append(slow(ts, seq, direction,
                                  PyBytes_FromStringAndSize(<const char*>p + meta_at, mlen),
                                  PyBytes_FromStringAndSize(<const char*>p + data_at, d)))
                pos = stop
                continue
            size = (1 + 3 + 9 + 4 + _cbor_head_size(<uint64_t>direction)
                    + 4 + _cbor_head_size(seq) + 5 + _cbor_head_size(<uint64_t>d) + d)
            if m:
                size += 5 + msize
            item = PyBytes_FromStringAndSize(NULL, size)
            w = PyBytes_AS_STRING(item)
            w[0] = <char>(0xA5 if m else 0xA4)
            o = 1
            memcpy(w + o, PyBytes_AS_STRING(_K_TS), 3)
            o += 3
            w[o] = <char>0xFB
            memcpy(&bits, &ts, 8)
            for i in range(8):
                w[o + 8 - i] = <char>(bits >> (8 * i) & 0xFF)
            o += 9
            memcpy(w + o, PyBytes_AS_STRING(_K_DIR), 4)
            o += 4
            o += _cbor_head(w + o, 0, <uint64_t>direction)
            memcpy(w + o, PyBytes_AS_STRING(_K_SEQ), 4)
            o += 4
            o += _cbor_head(w + o, 0, seq)
            memcpy(w + o, PyBytes_AS_STRING(_K_DATA), 5)
            o += 5
            o += _cbor_head(w + o, 2, <uint64_t>d)
            memcpy(w + o, p + data_at, d)
            o += d
            if m:
                memcpy(w + o, PyBytes_AS_STRING(_K_META), 5)
                o += 5
                o += _meta_cbor(p + meta_at, m, w + o)
            items.append(item)
            pos = stop
        return items, pos
    finally:
        PyBuffer_Release(&view)
