"""The C allocator: its thresholds at start, and freed memory given back once idle.

``tune_allocator`` runs once at the start of the gateway, each worker and each helper
process. glibc serves a request of 128 KiB or more with a fresh ``mmap`` and returns it
with ``munmap`` when freed (the threshold then adapts, but trimming the heap's top
keeps undoing it), so every such buffer costs a page fault and a zeroed page per 4 KiB
touched. The gateway makes them all the time: stream chunks of 16-64 KiB joined into
larger writes, the wire-capture batch of up to 256 KiB handed over every few
milliseconds, the writer's zlib state (~270 KiB per compressed event), the recorder's
read buffers. Fixed thresholds (``MMAP_THRESHOLD``, ``TRIM_THRESHOLD``) keep them in the
heap, where freed memory is reused at once: measured on the canned-nginx rig, SSE at
c=64 took 5-7 % less loop CPU per stream, the wire-capture writer ~10 % less per stream,
JSON unchanged. The idle trimmer below still returns the heap's free pages when the
gateway goes quiet, so the retained memory is bounded by ``TRIM_THRESHOLD`` under load.
Where there is no glibc ``mallopt`` (musl, macOS) nothing changes.

Giving freed memory back to the system once the gateway is idle:

A burst of traffic (hundreds of streams at once, a queue of usage records on the writer
thread) makes the C allocator grow its heaps. When the burst is over, Python frees the
objects, but glibc keeps most of the pages for later: the soak in ``bench/soak`` measured
the gateway's RSS 12-15 % above its warm level after 10,000 streams, flat from then on
(40,000 streams added 2 MiB), all of it anonymous memory that ``malloc_trim`` returns at
once (212 -> 140 MiB). Nothing leaked, but an operator watching RSS cannot tell that
apart from a leak, and the memory is unavailable to the rest of the machine.

So the gateway's once-a-second tick asks :class:`IdleTrimmer` whether to trim: only when
no request has started or finished for two ticks and RSS has grown by at least
``GROWTH_BYTES`` since the last trim. Trimming walks the heaps (a few ms for ~200 MiB),
which is why it never runs while requests are in flight. Where the C library has no
``malloc_trim`` (musl, macOS) the trimmer does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

__all__ = ["IdleTrimmer", "tune_allocator"]

GROWTH_BYTES = 8 * 1024 * 1024
MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def tune_allocator() -> bool:
    """Set the allocator thresholds (see the module docstring); False where there is no
    glibc ``mallopt`` or it refused. Idempotent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class IdleTrimmer:
    __slots__ = ("_after_trim", "_last_activity", "_quiet_ticks", "_rss", "_trim", "trims")

    def __init__(
        self, trim: Callable[[int], int] | None = None, rss: Callable[[], int] = rss_bytes
    ) -> None:
        self._trim = trim if trim is not None else _load_trim()
        self._rss = rss
        self._last_activity = -1
        self._quiet_ticks = 0
        self._after_trim = rss()
        self.trims = 0

    def tick(self, activity: int, busy: Callable[[], bool]) -> bool:
        """Called once a second with a counter that moves with traffic and a check for a
        request in flight (asked only when the counter stood still); trims when quiet and
        grown. Returns whether it trimmed."""
        if self._trim is None:
            return False
        if activity != self._last_activity or busy():
            self._last_activity = activity
            self._quiet_ticks = 0
            return False
        self._quiet_ticks += 1
        if self._quiet_ticks < 2:
            return False
        rss = self._rss()
        if rss - self._after_trim < GROWTH_BYTES:
            self._after_trim = min(self._after_trim, rss)
            return False
        self._trim(0)
        self.trims += 1
        self._after_trim = self._rss()
        return True
