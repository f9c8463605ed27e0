# Included by _core.pyx (one extension module, uvloop-style includes): counters.
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
