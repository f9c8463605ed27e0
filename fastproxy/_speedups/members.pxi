# json_members: the compiled twin of _pure/members.py (the reference; its docstring says
# what is accepted and why). One pass with a C pointer; Python objects only for the
# values handed back.

cdef enum:
    _MEMBERS_MAX_DEPTH = 256
    _REFUSED = -1


cdef uint64_t _J_HIGH = 0x8080808080808080ULL
cdef uint64_t _J_SPACE_UP = 0x6060606060606060ULL  # (b & 0x7F) + 0x60 sets bit 7 iff b >= 0x20


cdef inline Py_ssize_t _jws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and (s[i] == 32 or s[i] == 9 or s[i] == 10 or s[i] == 13):
        i += 1
    return i


cdef inline int _hexval(unsigned char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef Py_ssize_t _jstring(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, bint* escaped
) noexcept:
    """s[i] is a quote: the index after the closing quote, or _REFUSED."""
    cdef unsigned char c, e, lo, hi
    cdef int more, k, v, d
    cdef uint64_t x, hits
    i += 1
    while True:
        # Most of an answer's bytes are plain ASCII inside strings: skip eight at a time
        # while none is a quote, a backslash, a control byte or a non-ASCII byte (the
        # delta scanner's lanes: the lowest set bit marks the first byte to look at).
        if i + 8 <= n:
            memcpy(&x, s + i, 8)
            hits = (
                _d_eq(x, _D_QUOTES)
                | _d_eq(x, _D_BACKSLASHES)
                | (x & _J_HIGH)
                | (~((x & _D_L7F) + _J_SPACE_UP) & _J_HIGH)
            )
            if not hits:
                i += 8
                continue
            i += _d_ctz64(hits) >> 3
        if i >= n:
            return _REFUSED
        c = s[i]
        if c == 34:
            return i + 1
        if c == 92:
            escaped[0] = True
            if i + 1 >= n:
                return _REFUSED
            e = s[i + 1]
            if e == 117:  # \uXXXX
                if i + 6 > n:
                    return _REFUSED
                v = 0
                for k in range(2, 6):
                    d = _hexval(s[i + k])
                    if d < 0:
                        return _REFUSED
                    v = v * 16 + d
                if 0xD800 <= v <= 0xDFFF:
                    return _REFUSED
                i += 6
            elif e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116:
                i += 2
            else:
                return _REFUSED
        elif c < 32:
            return _REFUSED
        elif c < 128:
            i += 1
        else:
            if 0xC2 <= c <= 0xDF:
                lo = 0x80
                hi = 0xBF
                more = 1
            elif 0xE0 <= c <= 0xEF:
                lo = 0xA0 if c == 0xE0 else 0x80
                hi = 0x9F if c == 0xED else 0xBF
                more = 2
            elif 0xF0 <= c <= 0xF4:
                lo = 0x90 if c == 0xF0 else 0x80
                hi = 0x8F if c == 0xF4 else 0xBF
                more = 3
            else:
                return _REFUSED
            if i + more >= n or s[i + 1] < lo or s[i + 1] > hi:
                return _REFUSED
            for k in range(2, more + 1):
                if s[i + k] < 0x80 or s[i + k] > 0xBF:
                    return _REFUSED
            i += 1 + more


cdef Py_ssize_t _jnumber(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef Py_ssize_t start
    if i < n and s[i] == 45:
        i += 1
    start = i
    if i < n and s[i] == 48:
        i += 1
    elif i < n and 49 <= s[i] <= 57:
        while i < n and 48 <= s[i] <= 57:
            i += 1
    else:
        return _REFUSED
    if i - start > 18:
        return _REFUSED
    if i < n and s[i] == 46:
        i += 1
        if i >= n or not (48 <= s[i] <= 57):
            return _REFUSED
        while i < n and 48 <= s[i] <= 57:
            i += 1
    if i < n and (s[i] == 101 or s[i] == 69):
        i += 1
        if i < n and (s[i] == 43 or s[i] == 45):
            i += 1
        start = i
        while i < n and 48 <= s[i] <= 57:
            i += 1
        if i == start or i - start > 2:
            return _REFUSED
    return i


cdef Py_ssize_t _jvalue(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int depth) noexcept:
    """s[i] starts a value: the index after it, or _REFUSED."""
    cdef unsigned char c, close
    cdef bint escaped = False
    if i >= n:
        return _REFUSED
    c = s[i]
    if c == 34:
        return _jstring(s, i, n, &escaped)
    if c == 123 or c == 91:
        if depth >= _MEMBERS_MAX_DEPTH:
            return _REFUSED
        close = 125 if c == 123 else 93
        i = _jws(s, i + 1, n)
        if i < n and s[i] == close:
            return i + 1
        while True:
            if c == 123:
                if i >= n or s[i] != 34:
                    return _REFUSED
                i = _jstring(s, i, n, &escaped)
                if i < 0:
                    return _REFUSED
                i = _jws(s, i, n)
                if i >= n or s[i] != 58:
                    return _REFUSED
                i = _jws(s, i + 1, n)
            i = _jvalue(s, i, n, depth + 1)
            if i < 0:
                return _REFUSED
            i = _jws(s, i, n)
            if i >= n:
                return _REFUSED
            if s[i] == close:
                return i + 1
            if s[i] != 44:
                return _REFUSED
            i = _jws(s, i + 1, n)
    if c == 116 and i + 4 <= n and memcmp(s + i, b"true", 4) == 0:
        return i + 4
    if c == 102 and i + 5 <= n and memcmp(s + i, b"false", 5) == 0:
        return i + 5
    if c == 110 and i + 4 <= n and memcmp(s + i, b"null", 4) == 0:
        return i + 4
    return _jnumber(s, i, n)


def json_members(data, tuple names):
    if not PyBytes_CheckExact(data):
        return None
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i, end, start, key_len, k
    cdef Py_ssize_t count = len(names)
    cdef bint escaped
    cdef bytes name
    cdef list found = [None] * count
    i = _jws(s, 0, n)
    if i >= n or s[i] != 123:
        return None
    i = _jws(s, i + 1, n)
    if i < n and s[i] == 125:
        i += 1
    else:
        while True:
            if i >= n or s[i] != 34:
                return None
            escaped = False
            end = _jstring(s, i, n, &escaped)
            if end < 0 or escaped:
                return None
            key_len = end - i - 2
            start = i + 1
            i = _jws(s, end, n)
            if i >= n or s[i] != 58:
                return None
            i = _jws(s, i + 1, n)
            end = _jvalue(s, i, n, 1)
            if end < 0:
                return None
            for k in range(count):
                name = names[k]
                if PyBytes_GET_SIZE(name) == key_len and memcmp(
                    PyBytes_AS_STRING(name), s + start, key_len
                ) == 0:
                    found[k] = PyBytes_FromStringAndSize(<const char*>s + i, end - i)
                    break
            i = _jws(s, end, n)
            if i >= n:
                return None
            if s[i] == 125:
                i += 1
                break
            if s[i] != 44:
                return None
            i = _jws(s, i + 1, n)
    if _jws(s, i, n) != n:
        return None
    return tuple(found)
