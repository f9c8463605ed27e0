"""A usage record's values and its row, from an unpacked exchange frame.

``usage_row(frame, ms, rid, api, ctp, turn, session_id, counted, price)`` is what the
usage projector does once the request body has been read (counted, digested): the
token points, timings and cost of the record, then the stored row. Inputs:

- ``frame``: a tuple from ``unpack_exchanges`` (``EXCHANGE_FIELDS`` order; the body is
  not read);
- ``ms``: the record's time in epoch milliseconds; ``rid``: its id;
- ``api``: the endpoint kind (or None); ``ctp``: the prompt's tokens as counted (or
  None); ``turn`` and ``session_id``: from the body or the frame;
- ``counted``: the prompt was counted exactly (``usage_source`` "counted" when the
  backend reported nothing);
- ``price``: the model's price (input, output, cached_input, cache_write per 1M tokens)
  or None.

Returns ``(values, key, hour, row)``: the record's values in
``usage_schema.RECORD_KEYS`` order (backend usage as a row in ``BACKEND_USAGE_KEYS``
order), the dims key, the hour number and the ``usage_requests`` row without seq and
dim, exactly as ``usage_schema.prepare_values`` makes them from those values. The rules
are those of ``monitor/usage_projection.py`` and ``monitor/costs.py`` (docs/usage-
tracking.md); tests hold both implementations to the projector's records.
"""

from __future__ import annotations

import math
import time
from typing import Any

# No request has 2**40 tokens: the store keeps its sums inside 64 bits (usage_schema).
_INT_MAX = 2**40


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if -_INT_MAX <= v <= _INT_MAX else None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def _real(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def _ms(later: float, earlier: float) -> float | None:
    if not later or not earlier or later < earlier:
        return None
    return round((later - earlier) * 1000.0, 3)


def _cost(
    usage: tuple[Any, ...] | None,
    price: tuple[Any, ...] | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    answered: bool,
) -> tuple[Any, str | None]:
    if usage is not None and usage[6] is not None:
        return usage[6], "backend"
    has_usage = usage is not None and (usage[0] is not None or usage[1] is not None)
    if not has_usage and not answered:
        return None, None
    if price is None:
        return None, None
    prompt = usage[0] if usage is not None and usage[0] is not None else prompt_tokens
    completion = usage[1] if usage is not None and usage[1] is not None else completion_tokens
    if prompt is None and completion is None:
        return None, None
    cached = (usage[3] or 0) if usage is not None else 0
    cache_write = (usage[4] or 0) if usage is not None else 0
    prompt = prompt or 0
    completion = completion or 0
    p_input, p_output, p_cached, p_write = price
    cached_price = p_input if p_cached is None else p_cached
    write_price = p_input if p_write is None else p_write
    uncached = max(0, prompt - cached - cache_write)
    return (
        uncached * p_input
        + cached * cached_price
        + cache_write * write_price
        + completion * p_output
    ) / 1e6, "price_table"


def usage_row(
    frame: tuple[Any, ...],
    ms: int,
    rid: str,
    api: str | None,
    ctp: int | None,
    turn: int | None,
    session_id: str | None,
    counted: bool,
    price: tuple[Any, ...] | None,
) -> tuple[tuple[Any, ...], tuple[Any, ...], int, tuple[Any, ...]]:
    (
        _wall,
        started,
        ended,
        sent_at,
        ttfb_at,
        done_at,
        first_at,
        _session,
        _key_id,
        frontend,
        _path,
        backend,
        backend_type,
        model_requested,
        model_used,
        outcome,
        proxy_user,
        user_agent,
        streaming,
        status,
        attempts,
        tool_call_count,
        tool_names,
        usage,
        btp_est,
        ptc_est,
        replacement,
        _body,
        key_name,
        team,
    ) = frame
    reported = usage is not None and (usage[0] is not None or usage[1] is not None)
    source = "backend" if reported else "counted" if counted else "estimated"
    ptb = (
        usage[0] if usage is not None and usage[0] is not None else (ctp if sent_at > 0.0 else None)
    )
    # btp: the backend's completion, else the data plane's estimate; a stream that did not
    # finish carries only the opening placeholder, so what arrived is the better figure.
    if usage is None or usage[1] is None:
        btp = btp_est
    elif streaming and outcome != "ok" and btp_est is not None:
        btp = max(usage[1], btp_est)
    else:
        btp = usage[1]
    # ptc: btp unless the client missed some; then the backend's figure, scaled.
    if btp is None:
        ptc = ptc_est
    elif ptc_est is None or btp_est is None or ptc_est >= btp_est:
        ptc = btp
    elif btp == btp_est:
        ptc = ptc_est
    else:
        ptc = round(btp * ptc_est / btp_est) if btp_est else 0
    cost, cost_source = _cost(usage, price, ptb, btp, 200 <= status < 300)
    ttft = _ms(first_at, started) if streaming else None
    stream_tps: float | None = None
    if streaming and first_at and btp:
        elapsed = ended - first_at
        if elapsed > 0:
            stream_tps = round(btp / elapsed, 3)
    overhead: float | None = None
    if sent_at and done_at and ended >= done_at:
        overhead = round(((sent_at - started) + (ended - done_at)) * 1000.0, 3)
    duration = _ms(ended, started)
    br = (
        None
        if usage is None
        else (usage[4], usage[3], usage[1], usage[6], usage[0], usage[5], usage[2])
    )
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
        _ms(ttfb_at, sent_at),
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
    tm = time.gmtime(ms // 1000)
    key = (
        backend,
        backend_type,
        frontend,
        model_requested,
        model_used,
        proxy_user,
        api,
        outcome,
        key_name,
        team,
    )
    row = (
        ms / 1000,
        status or 0,
        tm.tm_wday,
        tm.tm_hour,
        session_id,
        1 if streaming else 0,
        outcome,
        ctp,
        _int(ptb),
        _int(btp),
        _int(ptc),
        None if usage is None else _int(usage[0]),
        None if usage is None else _int(usage[1]),
        None if usage is None else _int(usage[2]),
        _real(cost),
        tool_call_count,
        ttft,
        duration,
        overhead,
        stream_tps,
        key_name,
        team,
    )
    return values, key, ms // 3_600_000, row
