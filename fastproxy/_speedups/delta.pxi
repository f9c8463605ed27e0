# Included by _core.pyx (one extension module, uvloop-style includes): delta.
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


cdef extern from *:
    int _d_ctz64 "__builtin_ctzll"(unsigned long long x) noexcept nogil

cdef uint64_t _D_L7F = 0x7F7F7F7F7F7F7F7FULL
cdef uint64_t _D_QUOTES = 0x2222222222222222ULL
cdef uint64_t _D_BACKSLASHES = 0x5C5C5C5C5C5C5C5CULL


cdef inline uint64_t _d_eq(uint64_t x, uint64_t pattern) noexcept nogil:
    """0x80 in each byte of ``x`` equal to ``pattern``'s, 0 elsewhere (exact)."""
    cdef uint64_t y = x ^ pattern
    return ~(((y & _D_L7F) + _D_L7F) | y | _D_L7F)


cdef inline Py_ssize_t _string_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                                   bint* escaped) noexcept nogil:
    """Index of the closing quote of the string whose body starts at i; -1 if the
    string is unterminated or holds an escape JSON does not allow."""
    cdef unsigned char c
    cdef uint64_t x, hits
    while i < n:
        # Most of an SSE event's bytes are inside strings: skip eight at a time while
        # none is a quote or a backslash (little-endian lanes: byte j is p[i + j], so
        # the lowest set bit is the first such byte).
        if i + 8 <= n:
            memcpy(&x, p + i, 8)
            hits = _d_eq(x, _D_QUOTES) | _d_eq(x, _D_BACKSLASHES)
            if not hits:
                i += 8
                continue
            i += _d_ctz64(hits) >> 3
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
