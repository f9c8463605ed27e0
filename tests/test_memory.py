"""IdleTrimmer: memory goes back to the system only when the gateway is quiet."""

from __future__ import annotations

from fastproxy.memory import GROWTH_BYTES, IdleTrimmer, rss_bytes

MiB = 1024 * 1024


class Heap:
    """A stand-in for the process: RSS the test sets, a trim that brings it down."""

    def __init__(self) -> None:
        self.rss = 100 * MiB
        self.trimmed = 0

    def trim(self, pad: int) -> int:
        self.trimmed += 1
        self.rss = 100 * MiB
        return 1


def test_trims_after_two_quiet_ticks_when_grown() -> None:
    heap = Heap()
    t = IdleTrimmer(heap.trim, lambda: heap.rss)
    heap.rss += GROWTH_BYTES + MiB
    assert not t.tick(5, lambda: False)  # the counter moved: traffic
    assert not t.tick(5, lambda: False)  # quiet for one tick
    assert t.tick(5, lambda: False)  # quiet for two: trim
    assert heap.trimmed == 1 and heap.rss == 100 * MiB
    assert not t.tick(5, lambda: False)  # nothing grew since


def test_never_trims_with_a_request_in_flight_or_traffic_moving() -> None:
    heap = Heap()
    t = IdleTrimmer(heap.trim, lambda: heap.rss)
    heap.rss += 10 * GROWTH_BYTES
    for i in range(10):
        assert not t.tick(7, lambda: True)  # a long stream: counters still, but busy
        assert not t.tick(i * 3, lambda: False)  # requests finishing every second
    assert heap.trimmed == 0


def test_small_growth_is_left_alone() -> None:
    heap = Heap()
    t = IdleTrimmer(heap.trim, lambda: heap.rss)
    heap.rss += GROWTH_BYTES - MiB
    for _ in range(5):
        assert not t.tick(1, lambda: False)
    assert heap.trimmed == 0


def test_the_real_trim_runs_and_rss_is_read() -> None:
    assert rss_bytes() > 0
    readings = iter([0] + [10**12] * 10)  # a huge "growth" forces the C library's trim
    t = IdleTrimmer(rss=lambda: next(readings))
    for _ in range(3):
        t.tick(1, lambda: False)
    assert t.trims == 1
