"""What the request cycle does for tracing, on the loop: ids, the sampling decision and
the ``traceparent`` header sent upstream (W3C Trace Context). Nothing else.

Spans are not built here: the cycle notes ids and monotonic times on the record
(`core.records.Trace`), and the tracing service builds and exports the spans from the
finished record on a thread of its own (monitor/tracing.py; docs/tracing.md). So a
request pays a few random numbers and one formatted header line when tracing is on, and
one ``is None`` test when it is off (`DataPlane.tracing`).

Sampling is the standard head sampling (``OTEL_TRACES_SAMPLER``): ``always_on``,
``always_off``, ``traceidratio`` (the trace id's low 64 bits below ``ratio * 2**64``,
as the OpenTelemetry SDK decides, so every hop of a trace agrees), and their
``parentbased_`` forms, which follow the incoming ``traceparent``'s sampled flag when
there is one. An unsampled request still gets ids and still propagates them, with the
flag off, so the services behind the gateway see one trace either way.
"""

from __future__ import annotations

import os
import random
import re

from ..core.records import Trace, TraceAttempt
from ..httpclient.backend import Backend

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_LOW64 = (1 << 64) - 1


def parse_traceparent(value: bytes | None) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a valid ``traceparent``, else None (a
    malformed header starts a new trace, as the W3C spec says)."""
    if value is None:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    # ff is forbidden; version 00 has nothing after the flags; a later version may.
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, parent_id = int(trace, 16), int(parent, 16)
    if trace_id == 0 or parent_id == 0:
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


class TraceStarter:
    """Starts each request's trace and each attempt's span id (one per data plane)."""

    __slots__ = ("_bound", "_parent_based", "_rand")

    def __init__(self, sampler: str, ratio: float = 1.0) -> None:
        root = sampler.removeprefix("parentbased_")
        self._parent_based = sampler.startswith("parentbased_")
        # The root decision as a bound on the trace id's low 64 bits: 2**64 samples all.
        if root == "always_on":
            self._bound = 1 << 64
        elif root == "always_off":
            self._bound = 0
        else:
            self._bound = round(ratio * (1 << 64))
        # Our own generator (not the random module's shared one), seeded per process.
        self._rand = random.Random(os.urandom(16))

    def begin(self, traceparent: bytes | None) -> Trace:
        bits = self._rand.getrandbits
        span_id = bits(64) or 1
        parent = parse_traceparent(traceparent)
        if parent is None:
            trace_id = bits(128) or 1
            return Trace(trace_id, span_id, 0, (trace_id & _LOW64) < self._bound)
        trace_id, parent_id, parent_sampled = parent
        sampled = parent_sampled if self._parent_based else (trace_id & _LOW64) < self._bound
        return Trace(trace_id, span_id, parent_id, sampled)

    def attempt(self, trace: Trace, backend: Backend, model: str, now: float) -> bytes:
        """A new attempt's span on ``trace``; the ``traceparent`` line that carries it
        upstream (the backend's spans become its children)."""
        span_id = self._rand.getrandbits(64) or 1
        trace.attempts.append(
            TraceAttempt(
                span_id, backend.name, backend.type, model, backend.host, backend.port, now
            )
        )
        return b"traceparent: 00-%032x-%016x-%s\r\n" % (
            trace.trace_id,
            span_id,
            b"01" if trace.sampled else b"00",
        )


def attempt_outcome(trace: Trace, status: int, kind: str | None, now: float) -> None:
    """The latest attempt's outcome as the attempt sinks hear it: a head's status, or a
    failure's kind (a stream cut after a 200 keeps the 200 and adds the kind)."""
    attempts = trace.attempts
    if not attempts:
        return
    last = attempts[-1]
    if status:
        last.status = status
    if kind is not None:
        last.error = kind
    last.ended_at = now
