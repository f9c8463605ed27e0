"""Rate limits as plain objects: a hand-moved clock, one ledger, limiters in one process or
in simulated workers whose messages cross a deterministic bus (tests/policy/support.py).
Nothing sleeps; nothing is wired (the gateway does not read these limits yet).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.core.ratelimit import (
    Ask,
    Grant,
    Handle,
    Ledger,
    Limiter,
    RateInfo,
    Refusal,
    Scope,
    Wait,
    format_duration,
    render_headers,
    retry_after_seconds,
)
from tests.policy.support import Clock, Cluster, count_between, max_in_window

KEY = Scope("key:alice", rpm=10, tpm=1000)


def local(clock: Clock | None = None, **kw: float) -> tuple[Clock, Ledger, Limiter]:
    clock = clock if clock is not None else Clock()
    ledger = Ledger(clock=clock)
    return clock, ledger, Limiter(clock=clock, ledger=ledger, **kw)  # type: ignore[arg-type]


def admitted(outcome: object) -> Handle:
    assert isinstance(outcome, Handle), outcome
    return outcome


def refused(outcome: object) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    return outcome


def headers(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in pairs}


# -- one process -------------------------------------------------------------------------


def test_rpm_admits_up_to_the_limit_then_refuses() -> None:
    clock, ledger, lim = local()
    scopes = (Scope("key:alice", rpm=10),)
    for _ in range(10):
        admitted(lim.reserve(scopes, 0))
        clock.now += 1.0
    r = refused(lim.reserve(scopes, 0))
    assert (r.scope, r.resource, r.limit) == ("key:alice", "requests", 10)
    # The first request (at 1000.0) leaves the window at 1060.0.
    assert r.retry_after == pytest.approx(1060.0 - clock.now)
    assert "key:alice" in r.message and "10 requests per minute" in r.message
    assert ledger.usage("key:alice")[0] == 10


def test_refused_requests_count_nothing_and_the_window_admits_again() -> None:
    clock, ledger, lim = local()
    scopes = (Scope("key:alice", rpm=5),)
    for _ in range(5):
        admitted(lim.reserve(scopes, 0))
    for _ in range(100):
        refused(lim.reserve(scopes, 0))
    clock.now += 59.99
    refused(lim.reserve(scopes, 0))
    clock.now += 0.01  # exactly 60 s after the five
    for _ in range(5):
        admitted(lim.reserve(scopes, 0))
    refused(lim.reserve(scopes, 0))
    assert ledger.usage("key:alice")[0] == 5


def test_sliding_window_frees_what_left_it_not_everything() -> None:
    clock, _, lim = local()
    scopes = (Scope("key:alice", rpm=4),)
    admitted(lim.reserve(scopes, 0))
    admitted(lim.reserve(scopes, 0))
    clock.now += 30.0
    admitted(lim.reserve(scopes, 0))
    admitted(lim.reserve(scopes, 0))
    refused(lim.reserve(scopes, 0))
    clock.now += 30.5  # the first two left; the last two are 30.5 s old
    admitted(lim.reserve(scopes, 0))
    admitted(lim.reserve(scopes, 0))
    r = refused(lim.reserve(scopes, 0))
    assert r.retry_after == pytest.approx(29.5)


def test_tpm_admits_while_tokens_remain_then_refuses() -> None:
    clock, ledger, lim = local()
    scopes = (Scope("key:alice", tpm=1000),)
    for _ in range(4):  # 300 each: 900, then 1200 (admitted while 100 remained)
        admitted(lim.reserve(scopes, 300))
    r = refused(lim.reserve(scopes, 1))
    assert (r.resource, r.limit) == ("tokens", 1000)
    assert "1000 tokens per minute" in r.message
    # In flight, the estimates are held: counted by the ledger as leased out.
    assert ledger.usage("key:alice")[1] + ledger.usage("key:alice")[3] >= 1200
    clock.now += 61.0
    refused(lim.reserve(scopes, 1))  # held tokens never leave until settled


def test_settle_corrects_tokens_down() -> None:
    clock, ledger, lim = local()
    scopes = (Scope("key:alice", tpm=1000),)
    handles = [admitted(lim.reserve(scopes, 400)) for _ in range(3)]
    refused(lim.reserve(scopes, 1))
    for h in handles:
        lim.settle(h, 100)  # the backend said 100, not 400
    clock.now += 1.0
    lim.tick()  # reports what was used, and hears what is free
    assert ledger.usage("key:alice")[1] == 300
    info = lim.info(handles[0])
    assert info.remaining_tokens == 700
    for _ in range(3):
        admitted(lim.reserve(scopes, 200))
    assert lim.info(handles[0]).remaining_tokens == 100


def test_settle_corrects_tokens_up() -> None:
    clock, ledger, lim = local()
    scopes = (Scope("key:alice", tpm=1000),)
    h = admitted(lim.reserve(scopes, 100))
    lim.settle(h, 990)  # a long answer: the estimate was the prompt only
    clock.now += 1.0
    lim.tick()
    assert ledger.usage("key:alice")[1] == 990
    assert lim.info(h).remaining_tokens == 10
    admitted(lim.reserve(scopes, 5))
    admitted(lim.reserve(scopes, 5))
    refused(lim.reserve(scopes, 5))


def test_settle_moves_the_difference_in_the_workers_own_lease_at_once() -> None:
    """Before any report: what a request took and did not use is the worker's to spend
    again (and a request that used more eats into the lease), no round trip needed."""
    clock = Clock()
    ledger = Ledger(clock=clock)
    lim = Limiter(clock=clock, worker=1, lease_fraction=1.0)  # leases of 1,000 tokens
    scopes = (Scope("key:a", tpm=1000),)
    assert isinstance(lim.reserve(scopes, 400), Wait)
    (ask,) = lim.take_messages()
    ((_, first),) = lim.on_grant(ledger.handle(ask))
    second = admitted(lim.reserve(scopes, 400))  # 200 left: low water, asks
    (refill,) = lim.take_messages()
    assert lim.on_grant(ledger.handle(refill)) == []  # nothing free: blocked
    assert lim.info(second).remaining_tokens == 200
    lim.settle(admitted(first), 100)
    assert lim.info(second).remaining_tokens == 500
    lim.settle(second, 700)
    assert lim.info(second).remaining_tokens == 200
    assert lim.take_messages() == []  # all of it local


def test_the_ledger_counts_a_use_for_exactly_one_window() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)

    def ask(used: int, want: int) -> Grant:
        return ledger.handle(Ask(0, 1, "key:a", 3, None, used, 0, 0.0, 0, 0, want, 0))

    assert ask(0, 3).requests == 3
    clock.now += 10.0
    assert ask(3, 3).requests == 0  # three used, reported 10 s later, dated now
    assert ledger.usage("key:a") == (3, 0, 0, 0)
    clock.now += 59.999
    blocked = ask(0, 1)
    assert blocked.requests == 0 and blocked.retry_requests_at == pytest.approx(1070.0)
    clock.now += 0.001
    assert ledger.usage("key:a") == (0, 0, 0, 0)
    assert ask(0, 3).requests == 3


def test_a_use_reported_late_is_dated_when_it_happened() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)
    ledger.handle(Ask(0, 1, "key:a", 3, None, 0, 0, 0.0, 0, 0, 3, 0))
    clock.now = 1005.0
    # Used at 1001 (the ask says so), reported at 1005: leaves at 1061, not 1065.
    ledger.handle(Ask(0, 2, "key:a", 3, None, 3, 0, 1001.0, 0, 0, 0, 0))
    clock.now = 1060.9
    assert ledger.usage("key:a")[0] == 3
    clock.now = 1061.0
    assert ledger.usage("key:a")[0] == 0


def test_settle_without_usage_keeps_the_estimate_and_settles_once() -> None:
    clock, ledger, lim = local()
    scopes = (Scope("key:alice", tpm=1000),)
    h = admitted(lim.reserve(scopes, 250))
    lim.settle(h, None)  # an abort before usage was known
    lim.settle(h, 0)  # a second settle is ignored
    clock.now += 1.0
    lim.tick()
    assert ledger.usage("key:alice")[1] == 250


def test_every_scope_must_admit_and_a_refusal_charges_none() -> None:
    clock, ledger, lim = local()
    key = Scope("key:alice", rpm=100)
    model = Scope("model:gpt-4o", rpm=3)
    for _ in range(3):
        admitted(lim.reserve((key, model), 0))
    r = refused(lim.reserve((key, model), 0))
    assert r.scope == "model:gpt-4o"
    other = Scope("key:bob", rpm=100)
    refused(lim.reserve((other, model), 0))
    clock.now += 1.0
    lim.tick()
    assert ledger.usage("key:alice")[0] == 3
    assert ledger.usage("key:bob")[0] == 0
    # Alice's other models are not limited by this one.
    admitted(lim.reserve((key,), 0))


def test_a_reload_that_raises_the_limit_applies_to_the_next_request() -> None:
    _, _, lim = local()
    for _ in range(2):
        admitted(lim.reserve((Scope("key:a", rpm=2),), 0))
    refused(lim.reserve((Scope("key:a", rpm=2),), 0))
    admitted(lim.reserve((Scope("key:a", rpm=5),), 0))


def test_scope_rejects_nonpositive_limits() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Scope("key:a", rpm=0)
    with pytest.raises(ValueError, match="tpm"):
        Scope("key:a", tpm=-1)


# -- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0004, "1ms"),
        (0.020, "20ms"),
        (0.999, "999ms"),
        (0.9999, "1s"),
        (1.0, "1s"),
        (1.5, "2s"),
        (6.25, "7s"),
        (59.9991, "1m0s"),
        (60.0, "1m0s"),
        (60.5, "1m1s"),
        (119.2, "2m0s"),
        (121.0, "2m1s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (3725.0, "1h2m5s"),
    ],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_retry_after_is_whole_seconds_rounded_up_never_zero() -> None:
    assert [retry_after_seconds(s) for s in (0.0, 0.2, 1.0, 1.01, 59.5)] == [1, 1, 1, 2, 60]


def test_render_headers_names_values_and_order() -> None:
    info = RateInfo(60, 59, 1.0, 150000, 149984, 360.0)
    assert render_headers(info) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-limit-tokens", b"150000"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-remaining-tokens", b"149984"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-reset-tokens", b"6m0s"),
    ]
    assert render_headers(RateInfo(limit_requests=5, remaining_requests=0, reset_requests=2.5),
                          retry_after=2.5) == [
        (b"x-ratelimit-limit-requests", b"5"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", b"3s"),
        (b"retry-after", b"3"),
    ]  # fmt: skip
    assert render_headers(RateInfo()) == []


def test_admitted_requests_carry_remaining_counts() -> None:
    clock, _, lim = local()
    scopes = (Scope("key:alice", rpm=10, tpm=1000),)
    h = admitted(lim.reserve(scopes, 100))
    got = headers(render_headers(lim.info(h)))
    assert got == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    clock.now += 20.0
    h2 = admitted(lim.reserve(scopes, 100))
    got = headers(render_headers(lim.info(h2)))
    assert got["x-ratelimit-remaining-requests"] == "8"
    assert got["x-ratelimit-remaining-tokens"] == "800"
    assert got["x-ratelimit-reset-requests"] == "1m0s"  # the newest usage leaves last


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(1, 500)),  # rpm
            st.one_of(st.none(), st.integers(1, 100_000)),  # tpm
        ).filter(lambda t: t != (None, None)),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.tuples(st.integers(0, 3000), st.floats(0.0, 200.0)), max_size=12),
)
def test_header_lines_are_the_rendered_info(
    limits: list[tuple[int | None, int | None]], steps: list[tuple[int, float]]
) -> None:
    """The one-pass rendering every admitted response uses says exactly what
    render_headers(info) says, whatever the scopes and however far their leases ran."""
    clock, _, lim = local()
    scopes = tuple(Scope(f"s{i}", rpm=r, tpm=t) for i, (r, t) in enumerate(limits))
    for tokens, later in steps:
        clock.now += later
        outcome = lim.reserve(scopes, tokens)
        if not isinstance(outcome, Handle):
            continue
        want = b"".join(n + b": " + v + b"\r\n" for n, v in render_headers(lim.info(outcome)))
        assert lim.header_lines(outcome) == want
        lim.settle(outcome, tokens // 2)


def test_refusal_headers_for_a_429() -> None:
    clock, _, lim = local()
    scopes = (Scope("key:alice", rpm=2),)
    admitted(lim.reserve(scopes, 0))
    admitted(lim.reserve(scopes, 0))
    clock.now += 10.0
    got = headers(refused(lim.reserve(scopes, 0)).headers())
    assert got == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "50s",
        "retry-after": "50",
    }


def test_the_tightest_scope_is_reported() -> None:
    _, _, lim = local()
    key = Scope("key:alice", rpm=100, tpm=10_000)
    model = Scope("model:m", rpm=5, tpm=1_000_000)
    h = admitted(lim.reserve((key, model), 10))
    info = lim.info(h)
    assert (info.limit_requests, info.remaining_requests) == (5, 4)
    assert (info.limit_tokens, info.remaining_tokens) == (10_000, 9_990)


# -- messages ----------------------------------------------------------------------------


def test_messages_round_trip_as_plain_tuples() -> None:
    ask = Ask(1, 7, "key:a", 60, None, 3, 400, 1012.5, 2, 100, 5, 0)
    assert Ask.from_tuple(ask.to_tuple()) == ask
    assert all(isinstance(v, int | str | float | type(None)) for v in ask.to_tuple())
    grant = Grant(1, 7, "key:a", 5, 0, 40, 0, 0.0, 1060.5, 1060.5)
    assert Grant.from_tuple(grant.to_tuple()) == grant


def test_a_worker_waits_for_its_first_grant_then_admits_locally() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)
    lim = Limiter(clock=clock, worker=3, lease_fraction=0.1)
    scopes = (Scope("key:a", rpm=100),)
    first = lim.reserve(scopes, 0)
    second = lim.reserve(scopes, 0)
    assert isinstance(first, Wait) and isinstance(second, Wait)
    (ask,) = lim.take_messages()  # one ask for both
    assert (ask.worker, ask.scope, ask.want_requests) == (3, "key:a", 10)
    done = lim.on_grant(ledger.handle(ask))
    assert [w for w, _ in done] == [first, second]
    assert all(isinstance(o, Handle) for _, o in done)
    # Eight left in the lease: served with no message (low water is at half a lease).
    for _ in range(2):
        admitted(lim.reserve(scopes, 0))
    assert lim.take_messages() == []
    admitted(lim.reserve(scopes, 0))  # 5 left: ask for more, keep serving
    (refill,) = lim.take_messages()
    assert refill.used_requests == 5 and refill.holding_requests == 5
    admitted(lim.reserve(scopes, 0))


def test_a_burst_on_a_fresh_worker_waits_at_most_two_round_trips() -> None:
    cluster = Cluster(workers=2, delay=0.01)
    scopes = (Scope("key:a", rpm=60, tpm=100_000),)  # leases of 1 request
    for _ in range(30):
        cluster.arrive(0.0, 0, scopes, 100)
    cluster.run(0.05)  # two round trips of 20 ms
    assert len(cluster.admitted) == 30 and not cluster.refused
    assert cluster.asks <= 3


def test_a_stale_grant_is_ignored() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)
    lim = Limiter(clock=clock, worker=0, wait_timeout=2.0)
    scopes = (Scope("key:a", rpm=100),)
    assert isinstance(lim.reserve(scopes, 0), Wait)
    (old,) = lim.take_messages()
    clock.now += 2.0
    done = lim.tick()  # the primary did not answer: fail open
    assert len(done) == 1 and isinstance(done[0][1], Handle)
    assert isinstance(lim.reserve(scopes, 0), Wait)
    (new,) = lim.take_messages()
    assert lim.on_grant(ledger.handle(old)) == []  # the old seq: dropped
    assert len(lim.on_grant(ledger.handle(new))) == 1


def test_a_blocked_worker_refuses_locally_until_the_ledger_says() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)
    lim = Limiter(clock=clock, worker=0)
    scopes = (Scope("key:a", rpm=1),)
    w = lim.reserve(scopes, 0)
    (ask,) = lim.take_messages()
    assert isinstance(lim.on_grant(ledger.handle(ask))[0][1], Handle)
    # The admission emptied the lease: a refill asked for, answered "none until 1060.5".
    (refill,) = lim.take_messages()
    lim.on_grant(ledger.handle(refill))
    clock.now += 5.0
    for _ in range(50):
        r = refused(lim.reserve(scopes, 0))
    assert r.retry_after == pytest.approx(55.0)
    assert lim.take_messages() == []  # no round trip per refused request
    assert isinstance(w, Wait)


# -- across workers ----------------------------------------------------------------------


def steady(rate_per_second: float, start: float, end: float) -> list[float]:
    n = int((end - start) * rate_per_second)
    return [start + i / rate_per_second for i in range(n)]


@pytest.mark.parametrize("limit", [100, 600, 6000])
@pytest.mark.parametrize("overload", [1.5, 3.0])
def test_two_workers_admit_within_2_percent_of_the_limit(limit: int, overload: float) -> None:
    """The issue's requirement: 60 s at a steady over-limit rate across 2 workers."""
    cluster = Cluster(workers=2)
    scopes = (Scope("key:a", rpm=limit),)
    times = steady(limit * overload / 60.0, 0.0, 180.0)
    # Connections are spread by the kernel: alternate, with runs, not strictly fair.
    cluster.arrivals(times, scopes, lambda n: (n // 3) % 2)
    cluster.run(181.0)
    first = count_between(cluster.admitted, 0.0, 60.0)
    assert limit * 0.98 <= first <= limit
    for start in range(0, 121, 3):  # and every later minute, at any phase
        n = count_between(cluster.admitted, start, start + 60.0)
        assert limit * 0.98 <= n <= limit, (start, n)
    assert max_in_window(cluster.admitted) <= limit
    # Leasing, not a round trip per request.
    assert cluster.asks < len(cluster.admitted) + 400


def test_one_worker_taking_all_the_traffic_gets_the_whole_limit() -> None:
    cluster = Cluster(workers=2)
    scopes = (Scope("key:a", rpm=600),)
    cluster.arrivals(steady(20.0, 0.0, 120.0), scopes, lambda n: 0)
    cluster.run(121.0)
    assert 588 <= count_between(cluster.admitted, 0.0, 60.0) <= 600
    assert 588 <= count_between(cluster.admitted, 60.0, 120.0) <= 600


def test_bursts_across_two_workers_never_exceed_the_limit() -> None:
    cluster = Cluster(workers=2)
    limit = 600
    scopes = (Scope("key:a", rpm=limit),)
    # 300 requests at once every 13 s (1,385 a minute), split 3:1; nothing in between.
    for burst in range(14):
        at = burst * 13.0
        for i in range(300):
            cluster.arrive(at + i * 0.0001, 0 if i % 4 else 1, scopes)
    cluster.run(181.0)
    assert max_in_window(cluster.admitted) <= limit
    # Each minute is filled: what leaves the window is granted to the next burst. (A
    # minute at another phase can hold less: bursts come only every 13 s.)
    for start in (0.0, 60.0, 120.0):
        assert count_between(cluster.admitted, start, start + 60.0) >= limit * 0.98


def test_a_dead_workers_lease_comes_back_when_it_expires() -> None:
    cluster = Cluster(workers=2, lease_fraction=0.2, lease_seconds=5.0)
    scopes = (Scope("key:a", rpm=100),)
    cluster.arrive(0.0, 1, scopes)  # worker 1 leases 20 and uses one
    cluster.run(1.1)  # its tick at 1.0 reported the use
    assert cluster.ledger.usage("key:a") == (1, 0, 19, 0)
    cluster.alive[1] = False  # killed: it never reports again
    cluster.arrivals(steady(100.0, 1.2, 20.0), scopes, lambda n: 0)
    cluster.run(5.0)
    assert len(cluster.admitted) == 1 + 80  # worker 0 got what was not leased
    cluster.run(20.0)
    # The lease expired (5 s without a report): its 19 permits went to worker 0.
    assert len(cluster.admitted) == 100
    assert cluster.ledger.usage("key:a")[2] <= 20  # only worker 0's own lease remains


def test_forget_worker_returns_its_lease_at_once() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)
    ask = Ask(1, 1, "key:a", 100, 1000, 0, 0, 0.0, 0, 0, 30, 500)
    grant = ledger.handle(ask)
    assert (grant.requests, grant.tokens) == (30, 500)
    assert ledger.usage("key:a") == (0, 0, 30, 500)
    ledger.forget_worker(1)
    assert ledger.usage("key:a") == (0, 0, 0, 0)
    ledger.sweep()
    assert len(ledger) == 0


def test_an_idle_worker_gives_its_lease_back() -> None:
    cluster = Cluster(workers=2, lease_fraction=0.2)
    scopes = (Scope("key:a", rpm=100),)
    cluster.arrive(0.0, 1, scopes)
    cluster.run(1.1)
    assert cluster.ledger.usage("key:a") == (1, 0, 19, 0)
    cluster.run(2.6)  # idle for 2 s: returned on the next tick
    assert cluster.ledger.usage("key:a")[2] == 0


def test_two_workers_share_tokens_per_minute_with_settled_usage() -> None:
    cluster = Cluster(workers=2, lease_fraction=0.01)
    limit = 100_000
    scopes = (Scope("key:a", tpm=limit),)
    # 300 tokens estimated, 200 used: 1,000 requests a minute asked, ~500 fit.
    for i, at in enumerate(steady(1000 / 60, 0.0, 60.0)):
        cluster.arrive(at, i % 2, scopes, 300)
    done = 0
    while cluster.clock.now < 60.0:
        cluster.run(cluster.clock.now + 0.25)
        for worker, h in cluster.handles[done:]:
            cluster.limiters[worker].settle(h, 200)
        done = len(cluster.handles)
    used = len(cluster.admitted) * 200
    assert limit * 0.95 <= used <= limit + 2 * 300


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=300),
    workers=st.lists(st.integers(0, 1), min_size=300, max_size=300),
    limit=st.integers(1, 60),
    delay=st.sampled_from([0.0, 0.0002, 0.01, 0.3]),
)
def test_no_60_seconds_ever_admit_more_than_the_limit(
    gaps: list[float], workers: list[int], limit: int, delay: float
) -> None:
    # A grant slower than wait_timeout admits without a permit (fail open, tested
    # apart): the bound is about the leases, so the wait never times out here.
    cluster = Cluster(workers=2, delay=delay, lease_fraction=0.1, wait_timeout=1e9)
    scopes = (Scope("key:a", rpm=limit),)
    at = 0.0
    for gap, w in zip(gaps, workers, strict=False):
        at += gap
        cluster.arrive(at, w, scopes)
    cluster.run(at + 70.0)
    assert max_in_window(cluster.admitted) <= limit
    assert len(cluster.admitted) + len(cluster.refused) == len(gaps)


# -- memory --------------------------------------------------------------------------------


def test_idle_scopes_are_forgotten_by_both_sides() -> None:
    clock, ledger, lim = local()
    for i in range(1000):
        admitted(lim.reserve((Scope(f"key:{i}", rpm=10, tpm=100),), 5))
    assert len(lim) == 1000 and len(ledger) == 1000
    for step in range(5):
        clock.now += 20.0 + step
        lim.tick()
        ledger.sweep()
    # Held tokens keep a lease alive: these requests never settled.
    assert len(lim) == 1000
    for lease in list(lim._leases.values()):
        lease.tok_held = 0  # as if settled with nothing
    clock.now += 61.0
    lim.tick()
    clock.now += 61.0
    lim.tick()
    ledger.sweep()
    assert len(lim) == 0 and len(ledger) == 0


def test_idle_scopes_are_forgotten_after_settling() -> None:
    clock, ledger, lim = local()
    handles = [admitted(lim.reserve((Scope(f"key:{i}", tpm=100),), 5)) for i in range(50)]
    for h in handles:
        lim.settle(h, 5)
    for _ in range(4):
        clock.now += 40.0
        lim.tick()
        ledger.sweep()
    assert len(lim) == 0 and len(ledger) == 0


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 3000), st.integers(0, 3000)),
        min_size=1,
        max_size=60,
    ),
    tpm=st.integers(1, 20_000),
)
def test_the_ledger_ends_up_counting_exactly_the_tokens_used(
    ops: list[tuple[int, int, int]], tpm: int
) -> None:
    """Whatever the estimates, borrowing and corrections: once every request is settled
    and reported, the window holds the backend's figures, nothing more or less."""
    cluster = Cluster(workers=2, lease_fraction=0.05)
    scopes = (Scope("key:a", tpm=tpm),)
    for i, (worker, estimate, _) in enumerate(ops):
        cluster.arrive(i * 0.01, worker, scopes, estimate)
    cluster.run(len(ops) * 0.01 + 0.1)
    # The backend's figures, drawn with the ops (one per admitted request, in order).
    actuals = [ops[i][2] for i in range(len(cluster.handles))]
    for (worker, handle), actual in zip(cluster.handles, actuals, strict=True):
        cluster.limiters[worker].settle(handle, actual)
    cluster.run(cluster.clock.now + 3.0)  # reports, and idle leases given back
    _, window_tokens, _, leased_tokens = cluster.ledger.usage("key:a")
    assert window_tokens == sum(actuals)
    assert leased_tokens == 0
