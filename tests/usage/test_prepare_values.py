"""The projector's fast row path (`prepare_values`) gives exactly what the general
`prepare` gives for the same record: the same dims key, hour and row values, and its
compact stored JSON reads back as that record."""

from __future__ import annotations

import time

import orjson
import pytest

from fastproxy.core.records import ExchangeRecord
from fastproxy.dataplane.dialects.usage import BackendUsage, from_openai
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import Projector
from fastproxy.monitor.usage_service import UsageCapture
from fastproxy.storage.usage_schema import RECORD_KEYS, load_record, prepare

BODY = orjson.dumps(
    {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
    }
)


def _rec(streaming: bool, usage: BackendUsage | None, wall: float) -> ExchangeRecord:
    r = ExchangeRecord(7, 3, 100.0)
    r.wall_started_at = wall
    r.frontend, r.path, r.backend, r.backend_type = "openai", "/v1/chat/completions", "b1", "openai"
    r.model_requested, r.model_used, r.streaming = "gpt-4o", "gpt-4o", streaming
    r.status, r.attempts, r.proxy_user, r.session_id = 200, 2, "alice", None
    r.upstream_sent_at, r.backend_ttfb_at = 100.001, 100.02
    r.first_content_at, r.upstream_done_at, r.ended_at = 100.03, 100.4, 100.401
    r.request_body, r.usage = BODY, usage
    r.btp_completion_est = r.ptc_completion_est = 40
    return r


@pytest.mark.parametrize(
    "usage",
    [
        BackendUsage(prompt=12, completion=40, total=52, cached=4, reasoning=0),
        None,  # nothing reported: the estimates and the price table
        # A broken backend: absurd, boolean, negative and non-finite values (parsed as the
        # data plane parses them) are not reported, and the record is still written.
        from_openai(
            {
                "prompt_tokens": 2**70,
                "completion_tokens": True,
                "total_tokens": -5,
                "cost": float("inf"),
            }
        ),
    ],
    ids=["reported", "estimated", "wild-values"],
)
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    "wall",
    [time.time(), 1_700_000_000.9996, 1_767_225_599.999],
    ids=["now", "rounding-edge", "year-end"],
)
def test_fast_row_equals_general_prepare(
    usage: BackendUsage | None, streaming: bool, wall: float
) -> None:
    projector = Projector(PriceTable({}))
    fast = projector.prepared(UsageCapture.take(_rec(streaming, usage, wall), True))
    record = load_record(fast[3])
    general = prepare(record)
    assert fast[:3] == general[:3]
    assert tuple(record) == RECORD_KEYS and record == orjson.loads(general[3])
    # The compact form: an array of values, no keys, time as integer milliseconds.
    stored = orjson.loads(fast[3])
    assert type(stored) is list and len(stored) == len(RECORD_KEYS) + 1
    assert len(fast[3]) < 0.6 * len(general[3])
    assert record["timestamp"].endswith("Z") and len(record["timestamp"]) == 24
    if usage is not None and usage.prompt is None:
        assert record["backend_reported_usage"]["prompt"] is None
        assert record["backend_reported_usage"]["cost"] is None
