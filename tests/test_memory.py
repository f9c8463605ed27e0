"""IdleTrimmer: memory goes back to the system only when the gateway is quiet; and the
allocator thresholds set at start."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

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


CHURN = """
import resource, sys
if sys.argv[1] == "tuned":
    from fastproxy.memory import tune_allocator
    assert tune_allocator() and tune_allocator()
piece = b"x" * 20_000
def churn():
    # What the capture buffer does: grow by stream chunks to ~300 KB, hand a copy over.
    for n in range(100):
        b = bytearray()
        for i in range(15 + n % 5):
            b += piece
        keep = bytes(b)
        del b, keep
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_thresholds_stop_the_page_fault_churn() -> None:
    """In processes of their own (the thresholds are process-wide): buffers grown past
    128 KiB and freed, again and again, fault in fresh pages each time with glibc's
    defaults, and reuse the heap once the thresholds are set."""

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", CHURN, mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return int(out.stdout)

    default, tuned = faults("default"), faults("tuned")
    assert default > 1000, default  # the churn this guards against is real here
    assert tuned < default / 20, (tuned, default)
