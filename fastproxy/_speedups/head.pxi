# parse_simple_request: the compiled twin of _pure/head.py (the reference; read its
# docstring for the accepted subset). One pass over the head with a C pointer; Python
# objects are made only for what is returned.

cdef frozenset _HEAD_METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
)
cdef unsigned char _TCHAR_MAP[256]
cdef unsigned char _URI_MAP[256]


cdef void _fill_head_maps():
    cdef bytes t = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    cdef bytes u = (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
    )
    cdef Py_ssize_t i
    memset(_TCHAR_MAP, 0, 256)
    memset(_URI_MAP, 0, 256)
    for i in range(len(t)):
        _TCHAR_MAP[<unsigned char>t[i]] = 1
    for i in range(len(u)):
        _URI_MAP[<unsigned char>u[i]] = 1


_fill_head_maps()


cdef inline bint _ieq(const unsigned char* p, Py_ssize_t n, const char* lower) noexcept:
    """p[:n] equals the lower-case ASCII ``lower`` ignoring case."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        if lower[i] == 0:
            return False
        c = p[i]
        if 65 <= c <= 90:
            c += 32
        if c != <unsigned char>lower[i]:
            return False
    return lower[n] == 0


cdef inline bint _plain_value(const unsigned char* s, Py_ssize_t* at, Py_ssize_t n) noexcept:
    """Advance ``at`` to the CR ending a value of visible ASCII, space and tab; False on
    any other byte (a bare LF, NUL, DEL, obs-text) or when the line runs out."""
    cdef Py_ssize_t i = at[0]
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == 13:
            break
        if (c < 32 and c != 9) or c >= 127:
            return False
        i += 1
    if i + 1 >= n or s[i + 1] != 10:
        return False
    at[0] = i
    return True


def parse_simple_request(data, Py_ssize_t max_target, Py_ssize_t max_head, Py_ssize_t max_headers):
    if not PyBytes_CheckExact(data):
        return None
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = 0, start, name_end, vstart, vend, nheaders = 0
    cdef Py_ssize_t head_size = 0, hosts = 0, body_start, k
    cdef long long length = -1
    cdef unsigned char c
    cdef bytes method, target, name, value
    cdef list headers = []
    # Request line: METHOD SP target SP HTTP/1.1 CRLF
    while i < n and i < 8 and 65 <= s[i] <= 90:
        i += 1
    if i == 0 or i >= n or s[i] != 32:
        return None
    method = PyBytes_FromStringAndSize(<const char*>s, i)
    if method not in _HEAD_METHODS:
        return None
    i += 1
    start = i
    while i < n and _URI_MAP[s[i]]:
        i += 1
    if i == start or s[start] != 47 or i - start > max_target:  # "/"
        return None
    if i + 11 > n or memcmp(s + i, b" HTTP/1.1\r\n", 11) != 0:
        return None
    target = PyBytes_FromStringAndSize(<const char*>s + start, i - start)
    i += 11
    # Header lines until the blank line.
    while True:
        if i + 1 < n and s[i] == 13 and s[i + 1] == 10:
            i += 2
            break
        start = i
        while i < n and _TCHAR_MAP[s[i]]:
            i += 1
        if i == start or i >= n or s[i] != 58:  # ":"
            return None
        name_end = i
        i += 1
        while i < n and (s[i] == 32 or s[i] == 9):
            i += 1
        vstart = i
        if not _plain_value(s, &i, n):
            return None
        vend = i  # trailing spaces stay, as httptools leaves them
        i += 2
        nheaders += 1
        if nheaders > max_headers:
            return None
        if _ieq(s + start, name_end - start, b"transfer-encoding") or _ieq(
            s + start, name_end - start, b"upgrade"
        ) or _ieq(s + start, name_end - start, b"expect"):
            return None
        if _ieq(s + start, name_end - start, b"connection"):
            if not _ieq(s + vstart, vend - vstart, b"keep-alive"):
                return None
        elif _ieq(s + start, name_end - start, b"host"):
            hosts += 1
        elif _ieq(s + start, name_end - start, b"content-length"):
            if length >= 0 or vend - vstart < 1 or vend - vstart > 18:
                return None
            length = 0
            for k in range(vstart, vend):
                c = s[k]
                if c < 48 or c > 57:
                    return None
                length = length * 10 + (c - 48)
        name = PyBytes_FromStringAndSize(<const char*>s + start, name_end - start).lower()
        value = PyBytes_FromStringAndSize(<const char*>s + vstart, vend - vstart)
        head_size += (name_end - start) + (vend - vstart) + 4
        headers.append((name, value))
    if hosts != 1 or head_size > max_head:
        return None
    body_start = i
    if length < 0:
        length = 0
    if n != body_start + length:
        return None
    return method, target, headers, head_size, body_start, length


# parse_simple_response: the compiled twin of _pure/head.py's parse_simple_response (the
# reference, with the accepted subset): a backend's whole answer in one read, for the
# upstream connection.

def parse_simple_response(data, Py_ssize_t max_head, Py_ssize_t max_headers):
    if not PyBytes_CheckExact(data):
        return None
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i, start, name_end, vstart, vend, nheaders = 0, head_size = 0, k
    cdef long long length = -1
    cdef int status
    cdef bint keep_alive = True
    cdef unsigned char c
    cdef bytes name, value
    cdef list headers = []
    # Status line: HTTP/1.1 SP 3DIGIT SP reason CRLF
    if n < 15 or memcmp(s, b"HTTP/1.1 ", 9) != 0 or s[12] != 32:
        return None
    for i in range(9, 12):
        if s[i] < 48 or s[i] > 57:
            return None
    status = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
    if status < 200 or status > 599 or status == 204 or status == 304:
        return None
    i = 13
    if not _plain_value(s, &i, n):
        return None
    i += 2
    while True:
        if i + 1 < n and s[i] == 13 and s[i + 1] == 10:
            i += 2
            break
        start = i
        while i < n and _TCHAR_MAP[s[i]]:
            i += 1
        if i == start or i >= n or s[i] != 58:  # ":"
            return None
        name_end = i
        i += 1
        while i < n and (s[i] == 32 or s[i] == 9):
            i += 1
        vstart = i
        if not _plain_value(s, &i, n):
            return None
        vend = i
        i += 2
        nheaders += 1
        if nheaders > max_headers:
            return None
        if _ieq(s + start, name_end - start, b"transfer-encoding") or _ieq(
            s + start, name_end - start, b"upgrade"
        ):
            return None
        if _ieq(s + start, name_end - start, b"connection"):
            if _ieq(s + vstart, vend - vstart, b"close"):
                keep_alive = False
            elif not _ieq(s + vstart, vend - vstart, b"keep-alive"):
                return None
        elif _ieq(s + start, name_end - start, b"content-length"):
            if length >= 0 or vend - vstart < 1 or vend - vstart > 18:
                return None
            length = 0
            for k in range(vstart, vend):
                c = s[k]
                if c < 48 or c > 57:
                    return None
                length = length * 10 + (c - 48)
        name = PyBytes_FromStringAndSize(<const char*>s + start, name_end - start).lower()
        value = PyBytes_FromStringAndSize(<const char*>s + vstart, vend - vstart)
        head_size += (name_end - start) + (vend - vstart) + 4
        headers.append((name, value))
    if length < 0 or head_size > max_head:
        return None
    if n != i + length:
        return None
    return status, keep_alive, headers, i, length
