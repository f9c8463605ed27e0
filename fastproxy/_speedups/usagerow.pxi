# A usage record's values and its row, from an unpacked exchange frame: the twin of
# _pure/usagerow.py, which documents the inputs and the rules. Included by _core.pyx.
#
# This is the projector's glue (token points, timings, cost, the record tuple, the dims
# key and the row): some 60 small Python operations per record, ~9 µs in the
# interpreter. Values that a backend or a client supplied stay Python objects and go
# through Python's own arithmetic and comparisons (the results must be the twin's to the
# bit); only the frame's times, which are always floats, are C doubles. Rounding is
# Python's round(), called, not re-implemented.

import builtins as _builtins
import time as _time

from cpython.float cimport PyFloat_FromDouble
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.math cimport copysign, fabs, floor
from libc.math cimport isfinite as _isfinite

cdef object _py_round = _builtins.round
cdef object _gmtime = _time.gmtime
cdef object _UR_INT_MAX = 2 ** 40
cdef str _SRC_BACKEND = "backend"
cdef str _SRC_COUNTED = "counted"
cdef str _SRC_ESTIMATED = "estimated"
cdef str _COST_BACKEND = "backend"
cdef str _COST_TABLE = "price_table"
cdef str _OK = "ok"


cdef object _ur_int(object v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if -_UR_INT_MAX <= v <= _UR_INT_MAX else None
    if isinstance(v, float) and _isfinite(<double>v) and v.is_integer():
        return int(v)
    return None


cdef object _ur_real(object v):
    cdef double f
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        f = float(v)
        return f if _isfinite(f) else None
    return None


cdef object _round3(double x):
    """round(x, 3), as Python computes it: the decimal nearest to x's exact value with 3
    places (ties to even), then the double nearest to that decimal. For |x| < 1e6 the
    product y = x * 1000 is within 1.2e-7 of the exact one, so unless y is within 1e-6
    of a tie, the nearest integer n of y is the decimal's digits, and n / 1000 (exact
    operands, one rounding) is the double nearest to it. Ties, large and non-finite
    values go to Python's round."""
    cdef double y, n, frac
    if not (-1e6 < x < 1e6):
        return _py_round(PyFloat_FromDouble(x), 3)
    y = x * 1000.0
    n = floor(y)
    frac = y - n  # exact: y and n are within 1 of each other
    if fabs(frac - 0.5) < 1e-6:
        return _py_round(PyFloat_FromDouble(x), 3)
    if frac > 0.5:
        n += 1.0
    if n == 0.0:
        return PyFloat_FromDouble(copysign(0.0, x))  # round(-0.0001, 3) is -0.0
    return PyFloat_FromDouble(n / 1000.0)


cdef inline object _ur_ms(double later, double earlier):
    if not later or not earlier or later < earlier:
        return None
    return _round3((later - earlier) * 1000.0)


cdef tuple _ur_cost(object usage, object price, object prompt_tokens, object completion_tokens,
                    bint answered):
    if usage is not None and usage[6] is not None:
        return (usage[6], _COST_BACKEND)
    has_usage = usage is not None and (usage[0] is not None or usage[1] is not None)
    if not has_usage and not answered:
        return (None, None)
    if price is None:
        return (None, None)
    prompt = usage[0] if usage is not None and usage[0] is not None else prompt_tokens
    completion = usage[1] if usage is not None and usage[1] is not None else completion_tokens
    if prompt is None and completion is None:
        return (None, None)
    cached = (usage[3] or 0) if usage is not None else 0
    cache_write = (usage[4] or 0) if usage is not None else 0
    prompt = prompt or 0
    completion = completion or 0
    p_input, p_output, p_cached, p_write = price
    cached_price = p_input if p_cached is None else p_cached
    write_price = p_input if p_write is None else p_write
    uncached = prompt - cached - cache_write
    if not (uncached > 0):  # max(0, uncached): the first of equals, 0
        uncached = 0
    return (
        (uncached * p_input + cached * cached_price + cache_write * write_price
         + completion * p_output) / 1e6,
        _COST_TABLE,
    )


def usage_row(tuple frame, object ms, object rid, object api, object ctp, object turn,
              object session_id, bint counted, object price):
    if len(frame) != 30:
        raise ValueError("an exchange frame has 30 fields")
    cdef double started = frame[1]
    cdef double ended = frame[2]
    cdef double sent_at = frame[3]
    cdef double ttfb_at = frame[4]
    cdef double done_at = frame[5]
    cdef double first_at = frame[6]
    cdef double elapsed
    frontend = frame[9]
    backend = frame[11]
    backend_type = frame[12]
    model_requested = frame[13]
    model_used = frame[14]
    outcome = frame[15]
    proxy_user = frame[16]
    user_agent = frame[17]
    streaming = frame[18]
    status = frame[19]
    attempts = frame[20]
    tool_call_count = frame[21]
    tool_names = frame[22]
    usage = frame[23]
    btp_est = frame[24]
    ptc_est = frame[25]
    replacement = frame[26]
    key_name = frame[28]
    team = frame[29]

    reported = usage is not None and (usage[0] is not None or usage[1] is not None)
    source = _SRC_BACKEND if reported else _SRC_COUNTED if counted else _SRC_ESTIMATED
    if usage is not None and usage[0] is not None:
        ptb = usage[0]
    else:
        ptb = ctp if sent_at > 0.0 else None
    if usage is None or usage[1] is None:
        btp = btp_est
    elif streaming and outcome != _OK and btp_est is not None:
        btp = btp_est if btp_est > usage[1] else usage[1]  # max(): the first of equals
    else:
        btp = usage[1]
    if btp is None:
        ptc = ptc_est
    elif ptc_est is None or btp_est is None or ptc_est >= btp_est:
        ptc = btp
    elif btp == btp_est:
        ptc = ptc_est
    else:
        ptc = _py_round(btp * ptc_est / btp_est) if btp_est else 0
    cost, cost_source = _ur_cost(usage, price, ptb, btp, 200 <= status < 300)
    ttft = _ur_ms(first_at, started) if streaming else None
    stream_tps = None
    if streaming and first_at and btp:
        elapsed = ended - first_at
        if elapsed > 0:
            tps = btp / PyFloat_FromDouble(elapsed)
            stream_tps = _round3(tps) if type(tps) is float else _py_round(tps, 3)
    overhead = None
    if sent_at and done_at and ended >= done_at:
        overhead = _round3(((sent_at - started) + (ended - done_at)) * 1000.0)
    duration = _ur_ms(ended, started)
    if usage is None:
        br = None
        br_prompt = br_completion = br_total = None
    else:
        br = (usage[4], usage[3], usage[1], usage[6], usage[0], usage[5], usage[2])
        br_prompt = _ur_int(usage[0])
        br_completion = _ur_int(usage[1])
        br_total = _ur_int(usage[2])
    values = (
        rid,
        ms,
        session_id,
        turn,
        frontend,
        backend,
        backend_type,
        model_requested,
        model_used,
        streaming,
        status or None,
        outcome,
        attempts,
        tool_call_count,
        list(tool_names),
        ctp,
        ptb,
        btp,
        ptc,
        br,
        source,
        ttft,
        _ur_ms(ttfb_at, sent_at),
        duration,
        overhead,
        stream_tps,
        cost,
        cost_source,
        replacement,
        proxy_user,
        user_agent,
        api,
        key_name,
        team,
    )
    secs = ms // 1000
    cdef int overflow = 0
    cdef long long t = PyLong_AsLongLongAndOverflow(secs, &overflow) if type(secs) is int else -1
    if overflow or not (0 <= t < 253402300800):  # before 1970 or after 9999: the C library
        tm = _gmtime(secs)
        wday, hour = tm.tm_wday, tm.tm_hour
    else:
        wday = (t // 86400 + 3) % 7  # 1970-01-01 was a Thursday (Monday is 0)
        hour = (t % 86400) // 3600
    key = (backend, backend_type, frontend, model_requested, model_used, proxy_user, api, outcome,
           key_name, team)
    row = (
        ms / 1000,
        status or 0,
        wday,
        hour,
        session_id,
        1 if streaming else 0,
        outcome,
        ctp,
        _ur_int(ptb),
        _ur_int(btp),
        _ur_int(ptc),
        br_prompt,
        br_completion,
        br_total,
        _ur_real(cost),
        tool_call_count,
        ttft,
        duration,
        overhead,
        stream_tps,
        key_name,
        team,
    )
    return values, key, ms // 3_600_000, row
