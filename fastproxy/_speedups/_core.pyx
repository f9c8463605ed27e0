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

include "sse.pxi"
include "counters.pxi"
include "tokens.pxi"
include "delta.pxi"
include "record.pxi"
include "head.pxi"
include "members.pxi"
include "rollup.pxi"
include "usagerow.pxi"
include "capture.pxi"
