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

cdef enum:
    _R_HEADER = 1
    _R_JSON = 2
    _R_SHAPE = 4
    _R_QUERY = 8
    _R_LITERAL = 16
    _R_WORDS = 15  # every flag the word scan can set
    _CAPTURE_FRAME_HEAD = 25  # u32 rest, f64 ts, u64 seq, u8 dir, u32 meta length

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


cdef int _scan_words(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int flags = 0
    cdef int f
    cdef unsigned char c
    for i in range(n):
        c = _lc(p[i])
        if c == 107:  # k: key, key", key=
            if _ci_word(p + i, n - i, "key", 3):
                flags |= _R_HEADER | _after(p, i + 3, n)
        elif c == 116:  # t: token", token=
            if _ci_word(p + i, n - i, "token", 5):
                flags |= _after(p, i + 5, n)
        elif c == 97:  # a: authorization, authorization", aiza
            if _ci_word(p + i, n - i, "authorization", 13):
                f = _after(p, i + 13, n)
                flags |= _R_HEADER | (f & _R_JSON)
            elif _ci_word(p + i, n - i, "aiza", 4):
                flags |= _R_SHAPE
        elif c == 99:  # c: cookie
            if _ci_word(p + i, n - i, "cookie", 6):
                flags |= _R_HEADER
        elif c == 115:  # s: secret", and sk- (case-sensitive: provider keys are lower case)
            if p[i] == 115 and i + 2 < n and p[i + 1] == 107 and p[i + 2] == 45:
                flags |= _R_SHAPE
            elif _ci_word(p + i, n - i, "secret\"", 7):
                flags |= _R_JSON
        elif c == 112:  # p: password"
            if _ci_word(p + i, n - i, "password\"", 9):
                flags |= _R_JSON
        else:
            continue
        if flags == _R_WORDS:
            break
    return flags


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


def redact_flags(data, tuple secrets=(), tuple extras=()):
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef int flags
    cdef object s
    _get_buffer(data, &view)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        flags = _scan_words(p, n)
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
    finally:
        PyBuffer_Release(&view)


def append_capture_frame(bytearray out not None, double ts, seq, int direction, bytes meta not None, data):
    cdef Py_buffer view
    cdef Py_ssize_t start, m, n
    cdef char* w
    cdef uint32_t u32
    cdef uint64_t u64 = seq
    cdef uint8_t d
    if not 0 <= direction <= 255:
        raise ValueError("direction must be 0..255")
    d = <uint8_t>direction
    m = PyBytes_GET_SIZE(meta)
    _get_buffer(data, &view)
    try:
        n = view.len
        if _CAPTURE_FRAME_HEAD - 4 + m + n > 0xFFFFFFFF:
            raise ValueError("capture event too large for one frame")
        start = PyByteArray_GET_SIZE(out)
        PyByteArray_Resize(out, start + _CAPTURE_FRAME_HEAD + m + n)
        w = PyByteArray_AS_STRING(out) + start
        u32 = <uint32_t>(_CAPTURE_FRAME_HEAD - 4 + m + n)
        memcpy(w, &u32, 4)
        memcpy(w + 4, &ts, 8)
        memcpy(w + 12, &u64, 8)
        w[20] = <char>d
        u32 = <uint32_t>m
        memcpy(w + 21, &u32, 4)
        memcpy(w + 25, PyBytes_AS_STRING(meta), m)
        memcpy(w + 25 + m, view.buf, n)
    finally:
        PyBuffer_Release(&view)
