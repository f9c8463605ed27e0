# Declarations of the cdef classes in _core.pyx, so that a later Cython module can
# `from fastproxy._speedups._core cimport SSEScanner` and call the C-level entry points
# (feed_buffer, ...) without going through Python calls.
#
# Attributes are private to _core.pyx unless marked readonly; methods declared here are
# final (cdef), only the *_buffer entry points are meant to be called from outside.

from libc.stdint cimport uint64_t


# State of the token estimator's byte-level machine (see _pure.TokenEstimator).
cdef struct _TokState:
    long long units
    Py_ssize_t n
    int run
    int prev
    int need
    int seq
    unsigned int cp
    bint last_lower


cdef class SSEEvent:
    cdef readonly int kind
    cdef readonly bytes event
    cdef readonly bytes data
    cdef readonly object id
    cdef readonly bytes raw


cdef class SSEScanner:
    cdef Py_ssize_t _max
    # Pending bytes live in _buf[_start:_len]; _buf[_line_start:_len] is the incomplete
    # last line, which holds no terminator (so a new chunk is searched from old _len).
    cdef unsigned char* _buf
    # What the scan reads: _buf, or during one feed the caller's chunk itself.
    cdef const unsigned char* _wb
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _line_start
    cdef bint _skip_lf
    cdef bint _discarding
    cdef bint _disc_midline
    cdef bint _bom_check
    # Current block: _blk is the offset of its first field line still in _buf (-1 if
    # none); field values are spans of _buf until a mid-block comment moves them into
    # the _carry_* objects.
    cdef bint _has_fields
    cdef Py_ssize_t _blk
    cdef Py_ssize_t _carried
    cdef Py_ssize_t _ndata
    cdef Py_ssize_t _data_len
    cdef Py_ssize_t _d0s
    cdef Py_ssize_t _d0e
    cdef Py_ssize_t _ev_s
    cdef Py_ssize_t _ev_e
    cdef Py_ssize_t _id_s
    cdef Py_ssize_t _id_e
    cdef bytes _carry_data
    cdef Py_ssize_t _carry_ndata
    cdef object _carry_event
    cdef object _carry_id
    cdef Py_ssize_t _events_seen

    cdef list feed_buffer(self, const unsigned char* p, Py_ssize_t n)
    cdef int _append(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef Py_ssize_t _discard(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept
    cdef int _scan(self, Py_ssize_t pos, list out) except -1
    cdef int _line(self, Py_ssize_t ls, Py_ssize_t le, Py_ssize_t te, list out) except -1
    cdef void _field(self, Py_ssize_t off, Py_ssize_t le) noexcept
    cdef int _comment(self, Py_ssize_t ls, Py_ssize_t off, Py_ssize_t le, Py_ssize_t te,
                      list out) except -1
    cdef int _dispatch(self, Py_ssize_t ls, Py_ssize_t te, list out) except -1
    cdef int _error(self, list out, bint discard) except -1
    cdef bytes _build_data(self, Py_ssize_t end)
    cdef int _materialise(self, Py_ssize_t end) except -1
    cdef void _reset_block(self) noexcept
    cdef void _reset(self) noexcept
    cdef int _compact(self) except -1


cdef class CounterBlock:
    cdef uint64_t* _counters
    cdef Py_ssize_t _size
    cdef bint _own
    cdef bint _has_view
    cdef Py_buffer _view

    # For Cython callers: bounds-checked relaxed atomic add, callable without the GIL.
    cdef int inc(self, Py_ssize_t index, uint64_t value) except -1 nogil


cdef class TokenEstimator:
    cdef _TokState _s
    cdef Py_ssize_t _bytes

    cdef void feed_buffer(self, const unsigned char* p, Py_ssize_t n) noexcept nogil
    cdef long long count(self) noexcept nogil


cdef class DeltaScanner:
    cdef _TokState _tok
    cdef Py_ssize_t _text_bytes
    cdef Py_ssize_t _events

    # For Cython callers: one event's JSON; returns the DELTA_* flags (0 if malformed).
    cdef int feed_buffer(self, const unsigned char* p, Py_ssize_t n) noexcept nogil
    cdef void _feed_text(self, const unsigned char* p, Py_ssize_t i, Py_ssize_t end,
                         bint escaped) noexcept nogil
    cdef int _walk(self, const unsigned char* p, Py_ssize_t n) noexcept nogil


cdef class SSEPass:
    cdef Py_ssize_t _max
    cdef int _dialect
    # Held bytes (the incomplete item since the last boundary) live in _buf[0:_len].
    # During a feed the window scanned is _wb[0:_wlen]: _buf, or the caller's chunk
    # itself when nothing was held.
    cdef unsigned char* _buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef const unsigned char* _wb
    cdef Py_ssize_t _wlen
    cdef Py_ssize_t _line_start
    cdef Py_ssize_t _boundary
    cdef bint _skip_lf
    cdef bint _bom_check
    cdef bint _dead
    # Current block, as spans of the window (a block never crosses a boundary, so its
    # lines are all held): first field line, first data value, last event value.
    cdef bint _has_fields
    cdef Py_ssize_t _blk
    cdef Py_ssize_t _ndata
    cdef Py_ssize_t _data_len
    cdef Py_ssize_t _d0s
    cdef Py_ssize_t _d0e
    cdef Py_ssize_t _ev_s
    cdef Py_ssize_t _ev_e
    cdef Py_ssize_t _events
    cdef int _flags
    cdef list _notable
    cdef DeltaScanner _delta

    cdef object feed_buffer(self, object whole, const unsigned char* p, Py_ssize_t n)
    cdef int _scan(self, Py_ssize_t pos) except -1
    cdef int _line(self, Py_ssize_t ls, Py_ssize_t le, Py_ssize_t te) except -1
    cdef void _field(self, Py_ssize_t off, Py_ssize_t le) noexcept
    cdef int _dispatch(self, Py_ssize_t ls, Py_ssize_t te) except -1
    cdef bytes _join_data(self, Py_ssize_t end)
    cdef int _keep_tail(self) except -1
    cdef void _reset(self) noexcept
    cdef void _reset_block(self) noexcept
