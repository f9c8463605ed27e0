# Usage rollups of a batch, folded in one call: the twin of _pure/rollup.py, which
# documents the row layout and the rules. Included by _core.pyx.
#
# The usage writer folds each batch of request rows into its hourly and daily rollups.
# In SQL (INSERT ... SELECT ... GROUP BY) that was ~3.5 µs per row on the recorder: 29
# aggregate steps per row and table plus a sort. Here a row is read once, its group found
# in a small open-addressing table of C structs, and Python objects are made only for
# each group's output row.

from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsDouble, PyLong_AsLongLong, PyLong_Check
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport isfinite
from libc.stdlib cimport malloc

cdef enum:
    _RW_TS = 1
    _RW_DIM = 2
    _RW_STATUS = 3
    _RW_DOW = 4
    _RW_HOD = 5
    _RW_CTP = 9         # seven optional token counts from here on
    _RW_COST = 16
    _RW_TOOLS = 17
    _RW_TIMING = 18     # four optional timings from here on
    _RW_SIZE = 24


cdef struct _Roll:
    long long unit
    long long dim
    long long status
    long long dow
    long long hod
    long long n
    long long sums[7]
    double cost
    long long cost_n
    long long tools
    double min_ts
    double max_ts
    long long t_n[4]
    double t_sum[4]
    double t_min[4]
    double t_max[4]


cdef inline double _roll_real(object v) except? -1.0:
    if PyFloat_CheckExact(v):
        return PyFloat_AS_DOUBLE(v)
    if PyLong_Check(v):
        return PyLong_AsDouble(v)
    raise TypeError(f"a rollup value must be a number, not {type(v).__name__}")


cdef inline long long _roll_int(object v) except? -1:
    if PyLong_Check(v):
        return PyLong_AsLongLong(v)
    raise TypeError(f"a rollup value must be an int, not {type(v).__name__}")


cdef extern from *:
    """
    static inline int _fp_add_overflows(long long a, long long b, long long *r) {
        return __builtin_saddll_overflow(a, b, r);
    }
    """
    bint _fp_add_overflows(long long a, long long b, long long* r) noexcept


cdef inline long long _roll_add(long long a, long long b) except? -1:
    cdef long long out
    if _fp_add_overflows(a, b, &out):
        raise OverflowError("a rollup sum does not fit in 64 bits")
    return out


cdef inline long long _roll_unit(double ts, double unit_s) except? -1:
    # CAST(ts / unit AS INTEGER) as the SQL fold had it: truncation toward zero.
    cdef double q = ts / unit_s
    if not isfinite(q):
        raise ValueError("a rollup row's ts is not a finite number")
    if not (-9.2e18 < q < 9.2e18):
        raise OverflowError("a rollup row's ts is out of range")
    return <long long>q


cdef inline size_t _roll_hash(long long unit, long long dim, long long status) noexcept:
    cdef unsigned long long h = <unsigned long long>unit * 0x9E3779B97F4A7C15ULL
    h ^= <unsigned long long>dim * 0xC2B2AE3D27D4EB4FULL
    h ^= <unsigned long long>status * 0x165667B19E3779F9ULL
    h ^= h >> 29
    return <size_t>h


cdef list _fold(list rows, double unit_s, bint hourly):
    cdef Py_ssize_t nrows = len(rows)
    cdef size_t cap = 16
    while cap < <size_t>(2 * nrows):
        cap <<= 1
    cdef _Roll* groups = <_Roll*>calloc(nrows if nrows else 1, sizeof(_Roll))
    cdef Py_ssize_t* slots = <Py_ssize_t*>malloc(cap * sizeof(Py_ssize_t))
    cdef Py_ssize_t ngroups = 0
    cdef Py_ssize_t i, k, g
    cdef size_t s
    cdef object row, v
    cdef double ts, x
    cdef long long unit, dim, status
    cdef _Roll* r
    cdef list out = []
    if groups == NULL or slots == NULL:
        free(groups)
        free(slots)
        raise MemoryError()
    try:
        for s in range(cap):
            slots[s] = -1
        for i in range(nrows):
            row = rows[i]
            if type(row) is not tuple or PyTuple_GET_SIZE(row) != _RW_SIZE:
                raise ValueError("a rollup row is a tuple of the request columns")
            ts = _roll_real(<object>PyTuple_GET_ITEM(row, _RW_TS))
            unit = _roll_unit(ts, unit_s)
            dim = _roll_int(<object>PyTuple_GET_ITEM(row, _RW_DIM))
            status = _roll_int(<object>PyTuple_GET_ITEM(row, _RW_STATUS))
            s = _roll_hash(unit, dim, status) & (cap - 1)
            while True:
                g = slots[s]
                if g < 0:
                    g = ngroups
                    ngroups += 1
                    slots[s] = g
                    r = &groups[g]
                    r.unit, r.dim, r.status = unit, dim, status
                    r.dow = _roll_int(<object>PyTuple_GET_ITEM(row, _RW_DOW))
                    r.hod = _roll_int(<object>PyTuple_GET_ITEM(row, _RW_HOD))
                    r.min_ts = ts
                    r.max_ts = ts
                    break
                r = &groups[g]
                if r.unit == unit and r.dim == dim and r.status == status:
                    break
                s = (s + 1) & (cap - 1)
            r.n += 1
            if ts < r.min_ts:
                r.min_ts = ts
            if ts > r.max_ts:
                r.max_ts = ts
            for k in range(7):
                v = <object>PyTuple_GET_ITEM(row, _RW_CTP + k)
                if v is not None:
                    r.sums[k] = _roll_add(r.sums[k], _roll_int(v))
            v = <object>PyTuple_GET_ITEM(row, _RW_COST)
            if v is not None:
                r.cost += _roll_real(v)
                r.cost_n += 1
            r.tools = _roll_add(r.tools, _roll_int(<object>PyTuple_GET_ITEM(row, _RW_TOOLS)))
            for k in range(4):
                v = <object>PyTuple_GET_ITEM(row, _RW_TIMING + k)
                if v is None:
                    continue
                x = _roll_real(v)
                if r.t_n[k] == 0:
                    r.t_min[k] = x
                    r.t_max[k] = x
                else:
                    if x < r.t_min[k]:
                        r.t_min[k] = x
                    if x > r.t_max[k]:
                        r.t_max[k] = x
                r.t_n[k] += 1
                r.t_sum[k] += x
        for g in range(ngroups):
            r = &groups[g]
            if hourly:
                head = (r.unit, r.dim, r.status, r.dow, r.hod)
            else:
                head = (r.unit, r.dim, r.status, r.dow)
            timings = []
            for k in range(4):
                if r.t_n[k]:
                    timings += [r.t_n[k], r.t_sum[k], r.t_min[k], r.t_max[k]]
                else:
                    timings += [0, 0.0, None, None]
            out.append(
                head
                + (
                    r.n,
                    r.sums[0],
                    r.sums[1],
                    r.sums[2],
                    r.sums[3],
                    r.sums[4],
                    r.sums[5],
                    r.sums[6],
                    r.cost,
                    r.cost_n,
                    r.tools,
                    r.min_ts,
                    r.max_ts,
                )
                + tuple(timings)
            )
        return out
    finally:
        free(groups)
        free(slots)


def fold_rollups(list rows):
    return _fold(rows, 3600.0, True), _fold(rows, 86400.0, False)
