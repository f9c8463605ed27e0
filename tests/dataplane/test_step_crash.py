"""A bug in one step of the request cycle: the caller gets a 500 in its own dialect,
the request's record says so, and the gateway keeps serving.

The cycle runs the three steps every request takes (start, the response head, the
response end) with the error handlers inline, and the rarer steps through `_guarded`;
each is broken here in turn by making a function it calls raise (the one deliberate
fault in the suite: the gateway, the mock backend and the clients are all real).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fastproxy.core.records import ExchangeRecord
from fastproxy.dataplane import cycle
from tests.conftest import RunningGateway
from tests.support.waiting import wait_until

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {"model": "claude-3-5-haiku", "max_tokens": 8, **BODY}


def _boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError("a planted bug")


def _break_head(monkeypatch: pytest.MonkeyPatch) -> None:
    # _head_ok asks the backend's content type first: a response whose header lookup
    # raises breaks the head step.
    from fastproxy.httpclient.response import UpstreamResponse

    monkeypatch.setattr(UpstreamResponse, "header", _boom)


@pytest.mark.parametrize("step", ["start", "head", "end"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_bug_in_a_step_is_a_500_in_the_callers_dialect(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch, step: str, path: str
) -> None:
    records: list[ExchangeRecord] = []
    gateway.observe(records.append)
    body = ANTHROPIC_BODY if path == "/v1/messages" else BODY
    if step == "start":
        monkeypatch.setattr(cycle, "_read_fields", _boom)
    elif step == "head":
        _break_head(monkeypatch)
    else:
        monkeypatch.setattr(cycle, "answer_usage", _boom)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        r = client.post(path, json=body, headers={"anthropic-version": "2023-06-01"})
        assert r.status_code == 500, r.text
        doc = r.json()
        if path == "/v1/messages":
            assert doc["type"] == "error" and doc["error"]["message"] == "internal gateway error"
        else:
            assert doc["error"]["message"] == "internal gateway error"
        wait_until(lambda: len(records) == 1, what="the broken request's record")
        assert records[0].status == 500 and records[0].outcome == "backend_error"
        monkeypatch.undo()
        # The same gateway (the 500 closed that connection): served as usual.
        ok = client.post(path, json=body, headers={"anthropic-version": "2023-06-01"})
        assert ok.status_code == 200, ok.text
