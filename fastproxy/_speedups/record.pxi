# Exchange frames for the usage recorder process: the twin of _pure/record.py, which
# documents the layout. Included by _core.pyx.
#
# pack_exchange runs on the event loop once per finished request: it sizes the frame,
# grows the bytearray once and writes the fields straight into it, with no Python object
# made per field (texts are read through their cached UTF-8 form).

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint8_t

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

FRAME_EXCHANGE = 1
FLAG_STREAMING = 1
FLAG_BODY = 2
FLAG_USAGE = 4
FLAG_BTP = 8
FLAG_PTC = 16

EXCHANGE_FIELDS = (
    "wall_started_at",
    "started_at",
    "ended_at",
    "upstream_sent_at",
    "backend_ttfb_at",
    "upstream_done_at",
    "first_content_at",
    "session_id",
    "client_key_id",
    "frontend",
    "path",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "outcome",
    "proxy_user",
    "user_agent",
    "streaming",
    "status",
    "attempts",
    "tool_call_count",
    "tool_names",
    "usage",
    "btp_est",
    "ptc_est",
    "replacement",
    "body",
    "key_name",
    "team",
)
EXCHANGE_USAGE = ("prompt", "completion", "total", "cached", "cache_write", "reasoning", "cost")

cdef enum:
    _FRAME_EXCHANGE = 1
    _FL_STREAMING = 1
    _FL_BODY = 2
    _FL_USAGE = 4
    _FL_BTP = 8
    _FL_PTC = 16
    # u32 length, 4 x u8, 3 x i64, 2 x u32, 7 x f64, 2 x i64, 6 x i64, f64
    _HEAD_SIZE = 4 + 4 + 24 + 8 + 56 + 16 + 48 + 8
    _N_TEXTS = 13

cdef tuple _TEXT_ATTRS = (
    "session_id",
    "client_key_id",
    "frontend",
    "path",
    "backend",
    "backend_type",
    "model_requested",
    "model_used",
    "outcome",
    "proxy_user",
    "user_agent",
    "key_name",
    "team",
)


cdef inline bint _is_count(object v):
    # An int within 64 bits; anything else is sent as absent (as the pure twin does).
    if type(v) is not int:
        return False
    try:
        <int64_t>v
    except OverflowError:
        return False
    return True


cdef Py_ssize_t _text_size(object s) except -1:
    cdef Py_ssize_t n
    if s is None:
        return 4
    if not isinstance(s, str):
        raise TypeError(f"expected str or None, got {type(s).__name__}")
    try:
        PyUnicode_AsUTF8AndSize(s, &n)
    except UnicodeEncodeError:
        n = len((<str>s).encode("utf-8", "surrogatepass"))
    return 4 + n


cdef inline void _put32(char* p, int32_t v) noexcept:
    memcpy(p, &v, 4)


cdef Py_ssize_t _put_text(char* p, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* src
    cdef bytes b
    if s is None:
        _put32(p, -1)
        return 4
    try:
        src = PyUnicode_AsUTF8AndSize(s, &n)
        _put32(p, <int32_t>n)
        memcpy(p + 4, src, n)
    except UnicodeEncodeError:
        b = (<str>s).encode("utf-8", "surrogatepass")
        n = PyBytes_GET_SIZE(b)
        _put32(p, <int32_t>n)
        memcpy(p + 4, PyBytes_AS_STRING(b), n)
    return 4 + n


cdef inline int64_t _int_of(object v) except? -1:
    if type(v) is not int:
        v = _index(v)
    return <int64_t>v


def pack_exchange(object rec, object body, bytearray out, bint defer_body=False):
    """Append one frame for ``rec`` (an ExchangeRecord) to ``out``, with ``body`` (the
    request body, or None to send the record without it). Returns the bytes appended.
    With ``defer_body`` the frame stops after the body's length: the caller sends the
    body's bytes next (a large body then goes out by reference, never copied).
    On an error (a field of the wrong type) ``out`` is left as it was."""
    cdef Py_ssize_t start = PyByteArray_GET_SIZE(out)
    cdef Py_ssize_t size = _HEAD_SIZE
    cdef Py_ssize_t body_len = 0
    cdef Py_ssize_t pos
    cdef uint8_t flags = 0
    cdef uint8_t mask = 0
    cdef int64_t head_i[3]
    cdef uint32_t head_u[2]
    cdef double times[7]
    cdef int64_t ests[2]
    cdef int64_t counts[6]
    cdef double cost = 0.0
    cdef uint32_t u32
    cdef char* p
    cdef Py_buffer view
    cdef int i
    cdef object usage, v, names, replacement, c, name, k
    # Everything is read (and checked) before the buffer grows: an error leaves it as it was.
    if rec.streaming:
        flags |= _FL_STREAMING
    head_i[0] = _int_of(rec.status)
    head_i[1] = _int_of(rec.attempts)
    head_i[2] = _int_of(rec.tool_call_count)
    times[0] = rec.wall_started_at
    times[1] = rec.started_at
    times[2] = rec.ended_at
    times[3] = rec.upstream_sent_at
    times[4] = rec.backend_ttfb_at
    times[5] = rec.upstream_done_at
    times[6] = rec.first_content_at
    memset(counts, 0, sizeof(counts))
    usage = rec.usage
    if usage is not None:
        flags |= _FL_USAGE
        for i, v in enumerate(
            (usage.prompt, usage.completion, usage.total, usage.cached, usage.cache_write,
             usage.reasoning)
        ):
            if _is_count(v):
                counts[i] = <int64_t>v
                mask |= 1 << i
        c = usage.cost
        if c is not None and (type(c) is float or type(c) is int):
            cost = c
            mask |= 1 << 6
    ests[0] = ests[1] = 0
    v = rec.btp_completion_est
    if _is_count(v):
        ests[0] = <int64_t>v
        flags |= _FL_BTP
    v = rec.ptc_completion_est
    if _is_count(v):
        ests[1] = <int64_t>v
        flags |= _FL_PTC
    for name in _TEXT_ATTRS:
        size += _text_size(getattr(rec, name))
    names = rec.tool_names
    head_u[0] = <uint32_t>len(names)
    head_u[1] = 0
    for v in names:
        size += _text_size(v)
    replacement = rec.replacement
    size += 4
    if replacement is not None:
        for k, v in replacement.items():
            size += _text_size(k) + _text_size(v)
    if body is not None:
        flags |= _FL_BODY
        body_len = len(body)
        size += 4 + body_len
    if size - 4 > 0xFFFFFFFF:
        raise OverflowError("an exchange frame is limited to 4 GiB")
    PyByteArray_Resize(out, start + size - (body_len if defer_body else 0))
    p = PyByteArray_AS_STRING(out) + start
    u32 = <uint32_t>(size - 4)
    memcpy(p, &u32, 4)
    p[4] = _FRAME_EXCHANGE
    p[5] = <char>flags
    p[6] = <char>mask
    p[7] = 0
    memcpy(p + 8, head_i, 24)
    memcpy(p + 32, head_u, 8)
    memcpy(p + 40, times, 56)
    memcpy(p + 96, ests, 16)
    memcpy(p + 112, counts, 48)
    memcpy(p + 160, &cost, 8)
    pos = _HEAD_SIZE
    try:
        for name in _TEXT_ATTRS:
            pos += _put_text(p + pos, getattr(rec, name))
        for v in names:
            pos += _put_text(p + pos, v)
        if replacement is None:
            _put32(p + pos, -1)
            pos += 4
        else:
            _put32(p + pos, <int32_t>len(replacement))
            pos += 4
            for k, v in replacement.items():
                pos += _put_text(p + pos, k)
                pos += _put_text(p + pos, v)
        if body is not None:
            u32 = <uint32_t>body_len
            memcpy(p + pos, &u32, 4)
            pos += 4
            if not defer_body:
                PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
                try:
                    memcpy(p + pos, view.buf, body_len)
                finally:
                    PyBuffer_Release(&view)
                pos += body_len
    except BaseException:
        PyByteArray_Resize(out, start)
        raise
    return pos


cdef inline int _need(Py_ssize_t pos, Py_ssize_t n, Py_ssize_t end) except -1:
    if n < 0 or pos + n > end:
        raise ValueError("a malformed exchange frame")
    return 0


cdef object _read_text(const unsigned char* p, Py_ssize_t* pos, Py_ssize_t end):
    cdef int32_t n
    _need(pos[0], 4, end)
    memcpy(&n, p + pos[0], 4)
    pos[0] += 4
    if n < 0:
        return None
    _need(pos[0], n, end)
    s = PyUnicode_DecodeUTF8(<const char*>p + pos[0], n, "surrogatepass")
    pos[0] += n
    return s


cdef tuple _unpack_frame(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end):
    cdef uint8_t flags = p[pos + 5]
    cdef uint8_t mask = p[pos + 6]
    cdef int64_t head_i[3]
    cdef uint32_t head_u[2]
    cdef double times[7]
    cdef int64_t ests[2]
    cdef int64_t counts[6]
    cdef double cost
    cdef int32_t pairs
    cdef uint32_t body_len
    cdef Py_ssize_t i
    cdef object usage = None, replacement = None, body = None, k, v
    cdef list names
    cdef list texts = []
    if p[pos + 4] != _FRAME_EXCHANGE:
        raise ValueError(f"not an exchange frame (kind {p[pos + 4]})")
    memcpy(head_i, p + pos + 8, 24)
    memcpy(head_u, p + pos + 32, 8)
    memcpy(times, p + pos + 40, 56)
    memcpy(ests, p + pos + 96, 16)
    memcpy(counts, p + pos + 112, 48)
    memcpy(&cost, p + pos + 160, 8)
    pos += _HEAD_SIZE
    for i in range(_N_TEXTS):
        texts.append(_read_text(p, &pos, end))
    names = []
    for i in range(head_u[0]):
        v = _read_text(p, &pos, end)
        names.append("" if v is None else v)
    _need(pos, 4, end)
    memcpy(&pairs, p + pos, 4)
    pos += 4
    if pairs >= 0:
        replacement = {}
        for i in range(pairs):
            k = _read_text(p, &pos, end)
            v = _read_text(p, &pos, end)
            replacement["" if k is None else k] = "" if v is None else v
    if flags & _FL_BODY:
        _need(pos, 4, end)
        memcpy(&body_len, p + pos, 4)
        pos += 4
        _need(pos, body_len, end)
        body = PyBytes_FromStringAndSize(<const char*>p + pos, body_len)
        pos += body_len
    if pos != end:
        raise ValueError("a malformed exchange frame")
    if flags & _FL_USAGE:
        usage = (
            counts[0] if mask & 1 else None,
            counts[1] if mask & 2 else None,
            counts[2] if mask & 4 else None,
            counts[3] if mask & 8 else None,
            counts[4] if mask & 16 else None,
            counts[5] if mask & 32 else None,
            cost if mask & 64 else None,
        )
    return (
        times[0],
        times[1],
        times[2],
        times[3],
        times[4],
        times[5],
        times[6],
        texts[0],
        texts[1],
        texts[2],
        texts[3],
        texts[4],
        texts[5],
        texts[6],
        texts[7],
        texts[8],
        texts[9],
        texts[10],
        bool(flags & _FL_STREAMING),
        head_i[0],
        head_i[1],
        head_i[2],
        names,
        usage,
        ests[0] if flags & _FL_BTP else None,
        ests[1] if flags & _FL_PTC else None,
        replacement,
        body,
        texts[11],
        texts[12],
    )


def unpack_exchanges(object buf, Py_ssize_t start=0):
    """The complete frames in ``buf`` from ``start``: (tuples in EXCHANGE_FIELDS order,
    the offset just past the last complete frame). An incomplete frame at the end is
    left for the next call; a frame of another kind or a malformed one raises ValueError."""
    cdef Py_buffer view
    cdef list out = []
    cdef Py_ssize_t pos = start, end
    cdef uint32_t size
    cdef const unsigned char* p
    _get_buffer(buf, &view)
    try:
        p = <const unsigned char*>view.buf
        end = view.len
        while end - pos >= 4:
            memcpy(&size, p + pos, 4)
            if end - pos - 4 < <Py_ssize_t>size:
                break
            if size < _HEAD_SIZE - 4:
                raise ValueError("a malformed exchange frame")
            out.append(_unpack_frame(p, pos, pos + 4 + size))
            pos += 4 + size
    finally:
        PyBuffer_Release(&view)
    return out, pos
