"""A permanently failing endpoint cycles its breaker open -> half_open -> open every
cooldown. The log says so once, then summarises; the events stream and the webhook still
carry every transition; a recovery is one WARNING line and the next outage is logged in
full again.

The end-to-end tests run a real gateway whose HTTP probe hits a real mock LLM answering
503, with a 0.25 s cooldown and 0.2 s probes, so the breaker cycles a few times a second.
The events are read from the admin listener's SSE stream and from a real webhook
receiver; the log lines are the records the gateway's logger emitted (caplog).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import pytest

from tests.conftest import backend_for
from tests.support.waiting import wait_until

from .test_health_events import SSEReader, WebhookReceiver

LINE = re.compile(r"^breaker openai\.1: (\w+) -> (\w+) \(")


@pytest.fixture
def webhook() -> Any:
    r = WebhookReceiver()
    yield r
    r.close()


def cycling_gateway(
    gateway_factory: Any, mock: Any, webhook_url: str, window: float | None = None
) -> Any:
    health: dict[str, Any] = {
        "ping": {"enabled": False},
        "http": {"interval_seconds": 0.2, "timeout_seconds": 1, "failure_threshold": 1},
        "webhook_url": webhook_url,
    }
    if window is not None:
        health["log_repeat_window_seconds"] = window
    return gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock, models=["gpt-4o"])},
            "health_check": health,
            "circuit_breaker": {"failure_threshold": 1, "open_cooldown_seconds": 0.25},
        }
    )


class Events:
    """Every breaker event of openai.1 the SSE stream delivered, in order."""

    def __init__(self, sse: SSEReader) -> None:
        self.sse = sse
        self.seen: list[tuple[str, str]] = []

    def until(self, old: str, new: str, count: int = 1, timeout: float = 20.0) -> None:
        """Read on until (old -> new) has been seen ``count`` times in all."""

        def enough(kind: str, e: dict[str, Any]) -> bool:
            if kind == "breaker" and e.get("backend") == "openai.1":
                self.seen.append((e["from"], e["to"]))
            return self.seen.count((old, new)) >= count

        if self.seen.count((old, new)) < count:
            self.sse.next(enough, timeout=timeout)


def breaker_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, str, str]]:
    out = []
    for r in caplog.records:
        if r.name != "fastproxy.monitor":
            continue
        m = LINE.match(r.getMessage())
        if m:
            out.append((r.levelno, m.group(1), m.group(2), r.getMessage()))
    return out


def levels(lines: list[tuple[int, str, str, str]], old: str, new: str) -> Counter[int]:
    return Counter(level for level, a, b, _ in lines if (a, b) == (old, new))


def test_a_dead_endpoint_logs_each_transition_once_but_streams_every_one(
    gateway_factory: Any,
    mock_factory: Any,
    server_loop: Any,
    webhook: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastproxy.monitor")
    a = mock_factory()
    gw = cycling_gateway(gateway_factory, a, webhook.url)
    sse = SSEReader(f"http://127.0.0.1:{gw.gateway.admin_port}")
    events = Events(sse)
    try:
        server_loop.call(lambda: a.set_behaviour(status=503))
        events.until("closed", "open")
        events.until("open", "half_open", count=4)
        events.until("half_open", "open", count=4)
        server_loop.call(a.clear_behaviour)
        events.until("half_open", "closed")
        # Events are published in order, so every transition before the recovery has
        # been logged by now.
        lines = breaker_lines(caplog)
        streamed = Counter(events.seen)
        for old, new in (("open", "half_open"), ("half_open", "open")):
            by_level = levels(lines, old, new)
            assert by_level[logging.WARNING] == 1, (old, new, by_level)
            assert by_level[logging.DEBUG] == streamed[(old, new)] - 1 >= 3
        assert levels(lines, "closed", "open") == Counter({logging.WARNING: 1})
        (recovery,) = [m for level, a_, b_, m in lines if (a_, b_) == ("half_open", "closed")]
        assert levels(lines, "half_open", "closed") == Counter({logging.WARNING: 1})
        unlogged = sum(1 for level, *_ in lines if level == logging.DEBUG)
        assert f"(after {unlogged} repeated transitions logged at DEBUG only)" in recovery
        # The endpoint went down once and came back once: one WARNING line each.
        ep_lines = [r for r in caplog.records if r.getMessage().startswith("endpoint ")]
        assert [(r.levelno, r.getMessage().split(": ", 1)[1].split(" (")[0]) for r in ep_lines] == [
            (logging.WARNING, "healthy -> unhealthy"),
            (logging.WARNING, "unhealthy -> healthy"),
        ]

        # The webhook got every transition, not the summary.
        def delivered() -> list[tuple[str, str]] | None:
            got = [(b["from"], b["to"]) for b in webhook.bodies if b.get("backend") == "openai.1"]
            return got if got and got[-1] == ("half_open", "closed") else None

        assert wait_until(delivered, timeout=15, what="webhook caught up") == events.seen

        # A new outage after the recovery is news again: logged at WARNING in full.
        server_loop.call(lambda: a.set_behaviour(status=503))
        events.until("closed", "open", count=2)
        events.until("open", "half_open", count=streamed[("open", "half_open")] + 1)
        lines = breaker_lines(caplog)
        assert levels(lines, "closed", "open")[logging.WARNING] == 2
        assert levels(lines, "open", "half_open")[logging.WARNING] == 2
    finally:
        sse.close()


def test_repeats_are_summarised_with_their_count_once_per_window(
    gateway_factory: Any,
    mock_factory: Any,
    server_loop: Any,
    webhook: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="fastproxy.monitor")
    a = mock_factory()
    gw = cycling_gateway(gateway_factory, a, webhook.url, window=1.0)
    sse = SSEReader(f"http://127.0.0.1:{gw.gateway.admin_port}")
    events = Events(sse)
    try:
        server_loop.call(lambda: a.set_behaviour(status=503))

        def summary() -> bool:
            return any(
                "repeated" in m
                for level, a_, b_, m in breaker_lines(caplog)
                if (a_, b_) == ("open", "half_open") and level == logging.WARNING
            )

        wait_until(summary, timeout=20, what="a summary line after the 1 s window")
        server_loop.call(a.clear_behaviour)
        events.until("half_open", "closed", timeout=20)
        cycle = [
            (level, m)
            for level, a_, b_, m in breaker_lines(caplog)
            if (a_, b_) == ("open", "half_open")
        ]
        first, second = [i for i, (level, _) in enumerate(cycle) if level == logging.WARNING][:2]
        assert "repeated" not in cycle[first][1]
        # The count is every occurrence since the previous WARNING line, this one included.
        n = int(
            re.search(r"\(repeated (\d+) times in the last [\d.]+ s\)$", cycle[second][1]).group(1)
        )  # type: ignore[union-attr]
        assert n == second - first >= 2
        assert all(level == logging.DEBUG for level, _ in cycle[first + 1 : second])
        # Summarised in the log, never in the stream: one event per transition.
        assert Counter(events.seen)[("open", "half_open")] == len(cycle)
    finally:
        sse.close()


def test_transition_log_rules_on_a_hand_driven_clock(caplog: pytest.LogCaptureFixture) -> None:
    from fastproxy.monitor.notify import TransitionLog

    now = [0.0]
    tlog = TransitionLog(window_s=600, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="fastproxy.monitor")

    def write(old: str, new: str, reason: str = "r") -> tuple[int, str]:
        caplog.clear()
        tlog.write("breaker", "b", old, new, reason)
        (record,) = caplog.records
        return record.levelno, record.getMessage()

    assert write("closed", "open") == (logging.WARNING, "breaker b: closed -> open (r)")
    assert write("open", "half_open")[0] == logging.WARNING
    for _ in range(5):
        now[0] += 30
        assert write("open", "half_open")[0] == logging.DEBUG
    now[0] = 600.0
    assert write("open", "half_open", "cooldown") == (
        logging.WARNING,
        "breaker b: open -> half_open (cooldown) (repeated 6 times in the last 10 min)",
    )
    now[0] += 1
    assert write("open", "half_open")[0] == logging.DEBUG  # the window starts again
    # Another subject's first transition is its own news.
    caplog.clear()
    tlog.write("breaker", "other", "open", "half_open", "r")
    assert caplog.records[0].levelno == logging.WARNING
    assert write("half_open", "closed") == (
        logging.WARNING,
        "breaker b: half_open -> closed (r) (after 1 repeated transitions logged at DEBUG only)",
    )
    assert write("open", "half_open")[0] == logging.WARNING  # forgotten at the recovery
    # Window 0: every transition at WARNING, as before the summaries existed.
    every = TransitionLog(window_s=0, clock=lambda: now[0])
    for _ in range(3):
        caplog.clear()
        every.write("breaker", "b", "open", "half_open", "r")
        assert caplog.records[0].levelno == logging.WARNING
