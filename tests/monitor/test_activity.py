"""ActivityTracker on both counter implementations: entries, totals, sweep, slot reuse.

The end-to-end behaviour (real streams through the gateway) is in
tests/admin/test_diagnostics_activity.py; here a fake clock drives the sweep rule.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from fastproxy.monitor.activity import (
    OVERFLOW_BACKEND,
    STRIDE,
    ActivityTracker,
)
from tests.conftest import RunningGateway
from tests.speedups.helpers import IMPLS, impl_module


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return impl_module(request.param)


def make(impl: ModuleType, **kw: object) -> tuple[ActivityTracker, FakeClock]:
    clock = FakeClock()
    kw.setdefault("stale_timeout_s", 10.0)
    tracker = ActivityTracker(
        ["openai.1", "anthropic.1"], clock=clock, counter_block=impl.CounterBlock, **kw
    )  # type: ignore[arg-type]
    return tracker, clock


def test_entries_count_and_leave(impl: ModuleType) -> None:
    t, _ = make(impl)
    a = t.open(1, "openai.1", "s1", "gpt-4o", True)
    b = t.open(2, "openai.1", "s1", "gpt-4o", True)  # same session: a second entry
    a.count(100, 90)
    a.count(50, 0)
    b.count(7, 7)
    assert t.active_connections == 2
    assert (a.bytes_rx, a.bytes_tx, b.bytes_rx, b.bytes_tx) == (150, 90, 7, 7)
    g = t.global_snapshot()
    assert (g.total_active_connections, g.total_bytes_rx, g.total_bytes_tx) == (2, 157, 97)
    assert (g.lifetime_bytes_rx, g.lifetime_bytes_tx) == (157, 97)

    t.close(a)
    t.close(a)  # idempotent
    assert not a.live and (a.bytes_rx, a.bytes_tx) == (150, 90)
    g = t.global_snapshot()
    assert (g.total_active_connections, g.total_bytes_rx, g.total_bytes_tx) == (1, 7, 7)
    assert (g.lifetime_bytes_rx, g.lifetime_bytes_tx) == (157, 97)
    snap = t.snapshot()
    be = snap.backends["openai.1"]
    assert (be.active_connections, be.bytes_rx, be.lifetime_bytes_rx, be.lifetime_bytes_tx) == (
        1,
        7,
        157,
        97,
    )
    assert snap.backends["anthropic.1"].active_connections == 0
    assert (t.opened_total, t.closed_total) == (2, 1)


def test_snapshot_connection_fields(impl: ModuleType) -> None:
    t, clock = make(impl)
    e = t.open(42, "anthropic.1", None, "claude", False)
    clock.now += 2.5
    e.count(10, 5)
    snap = t.snapshot()
    (c,) = snap.connections
    assert (c.exchange_id, c.backend, c.session_id, c.model, c.streaming) == (
        42,
        "anthropic.1",
        None,
        "claude",
        False,
    )
    assert c.duration_seconds == pytest.approx(2.5)
    assert (c.bytes_rx, c.bytes_tx) == (10, 5)
    # The bytes were first observed by this snapshot: last activity is "now".
    assert c.last_activity_at == pytest.approx(snap.at, abs=0.01)
    assert c.started_at <= snap.at


def test_slots_are_reused_and_zeroed(impl: ModuleType) -> None:
    t, _ = make(impl, segment_entries=4)
    entries = [t.open(i, "openai.1", None, None, True) for i in range(10)]
    assert t.segments == 3  # grows by whole segments
    for e in entries:
        e.count(1, 1)
        t.close(e)
    again = [t.open(100 + i, "openai.1", None, None, True) for i in range(10)]
    assert t.segments == 3  # freed slots came back, no new memory
    assert all(e.bytes_rx == 0 and e.bytes_tx == 0 for e in again)
    assert t.global_snapshot().lifetime_bytes_rx == 10


def test_late_count_after_close_goes_to_lifetime_not_a_reused_slot(impl: ModuleType) -> None:
    t, _ = make(impl, segment_entries=1)
    old = t.open(1, "openai.1", None, None, True)
    old.count(5, 5)
    t.close(old)
    new = t.open(2, "openai.1", None, None, True)  # takes the same (only) slot
    old.count(1000, 1000)  # e.g. a chunk relayed after the entry was swept
    assert (new.bytes_rx, new.bytes_tx) == (0, 0)
    snap = t.snapshot()
    assert snap.backends["openai.1"].lifetime_bytes_rx == 1005
    assert snap.totals.lifetime_bytes_tx == 1005


def test_reopen_same_exchange_id_replaces(impl: ModuleType) -> None:
    t, _ = make(impl)
    first = t.open(7, "openai.1", None, None, True)
    first.count(3, 3)
    second = t.open(7, "anthropic.1", None, None, True)  # failover to another backend
    assert not first.live and second.live and t.active_connections == 1
    snap = t.snapshot()
    assert snap.backends["openai.1"].lifetime_bytes_rx == 3
    assert snap.backends["anthropic.1"].active_connections == 1


def test_stale_is_measured_from_the_last_byte(impl: ModuleType) -> None:
    t, clock = make(impl, stale_timeout_s=10.0)
    silent = t.open(1, "openai.1", None, None, True)
    busy = t.open(2, "openai.1", None, None, True)
    for _ in range(30):  # 30 s of traffic every 1 s, observed by a sweep every 1 s
        clock.now += 1.0
        busy.count(1, 1)
        t.sweep()
    # The silent entry went once 10 s passed; the busy one (30 s old) stays.
    assert not silent.live and busy.live
    assert t.swept_total == 1
    assert t.active_connections == 1
    clock.now += 9.9
    assert t.sweep() == 0
    clock.now += 0.2
    assert t.sweep() == 1
    assert not busy.live
    assert t.global_snapshot().lifetime_bytes_rx == 30  # swept bytes are kept
    t.close(busy)  # the data plane's finally after a sweep: a no-op
    assert t.closed_total == 0


def test_silence_is_never_underestimated(impl: ModuleType) -> None:
    """Bytes seen only by a later observation stamp that observation's time, so a sweep
    can be late but never early."""
    t, clock = make(impl, stale_timeout_s=5.0)
    e = t.open(1, "openai.1", None, None, True)
    clock.now += 4.0
    e.count(1, 0)  # a byte at t=4 that no one observes until t=8
    clock.now += 4.0
    assert t.sweep() == 0  # observed now: last activity = 8
    clock.now += 4.9
    assert t.sweep() == 0
    clock.now += 0.1
    assert t.sweep() == 1


def test_backend_names_beyond_capacity_share_one_pair(impl: ModuleType) -> None:
    t, _ = make(impl)
    for i in range(200):
        e = t.open(i, f"extra.{i}", None, None, False)
        e.count(1, 2)
        t.close(e)
    g = t.global_snapshot()
    assert (g.lifetime_bytes_rx, g.lifetime_bytes_tx) == (200, 400)
    assert OVERFLOW_BACKEND in t.snapshot().backends


def test_layout_is_stride_four() -> None:
    # docs/activity.md documents [rx, tx, last_ms, seen] per slot; keep them in step.
    assert STRIDE == 4


def test_service_is_absent_when_off(gateway_factory: Callable[..., RunningGateway]) -> None:
    # Off means absent: the gateway makes no service and the plane counts into nothing.
    off = gateway_factory()
    assert off.gateway.activity is None
    assert off.plane.activity is None
    on = gateway_factory({"enable_activity_tracking": True})
    assert on.gateway.activity is not None
    assert on.plane.activity is on.gateway.activity.tracker
