"""A recording transport and a manually advanced clock, for protocol tests without sockets.

`FakeTransport` stands where uvloop's TCP transport stands under a protocol: it records
every byte written, every close/abort and every pause/resume of reading, and it delivers
incoming bytes the way a real transport does (never while reading is paused, never after
close, EOF only after the data before it). Its write buffer can be made to cross the
high-water mark so the protocol sees ``pause_writing``/``resume_writing`` as it would from
a slow client.

`FakeClockLoop` is a real asyncio event loop (tasks, futures, call_soon all genuine) whose
``time()`` only moves when the test calls ``advance()``: timers scheduled with ``call_at``
or ``call_later`` fire, in order, at the instant they were scheduled for, and no test ever
sleeps. Its selector never blocks, so a mistake in a test spins instead of hanging on the
wall clock; the loop is only ever run for a bounded number of iterations.

`make_plane` builds a real `DataPlane` from a real `Config` (``load_config`` on a YAML
tree), so the protocol under test reads its limits and timeouts exactly as in production.
"""

from __future__ import annotations

import asyncio
import selectors
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fastproxy.config import Config, load_config
from fastproxy.dataplane.plane import DataPlane

# --------------------------------------------------------------------------------------
# the clock


class _NoWaitSelector(selectors.DefaultSelector):
    """Polls, never waits: with a fake clock a real wait would be a real sleep."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return super().select(0)


class InlineExecutor(ThreadPoolExecutor):
    """Runs each submitted call at once, in the caller's thread (no worker threads)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only in `advance` (like uvicorn's MockLoop, but a
    genuine loop underneath, so the code under test may create tasks and futures).

    Every ``call_soon`` and ``call_at`` handle is tracked until it has run or is
    cancelled, so `settle` can run the loop until nothing more can happen at this instant
    (instead of a guessed number of iterations), and `advance` knows exactly which timers
    are still to fire.
    """

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__(_NoWaitSelector())
        self._now = start
        self._soon: dict[int, asyncio.Handle] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        # run_in_executor / asyncio.to_thread run inline: a worker thread finishing at a
        # wall-clock moment would make "settled" depend on the machine's speed.
        self.set_default_executor(InlineExecutor())

    def time(self) -> float:
        return self._now

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        box: list[int] = []
        handle = super().call_soon(self._run_soon, box, callback, *args, context=context)
        box.append(id(handle))
        self._soon[id(handle)] = handle
        return handle

    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        # Tracked like call_soon: with the inline executor this is how a "thread's"
        # result comes back to the loop.
        box: list[int] = []
        handle = super().call_soon_threadsafe(self._run_soon, box, callback, *args, context=context)
        box.append(id(handle))
        self._soon[id(handle)] = handle
        return handle

    def _run_soon(self, box: list[int], callback: Callable[..., object], *args: Any) -> None:
        self._soon.pop(box[0], None)
        callback(*args)

    def call_at(
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        box: list[int] = []
        handle = super().call_at(when, self._run_timer, box, callback, *args, context=context)
        box.append(id(handle))
        self._timers[id(handle)] = handle
        return handle

    def _run_timer(self, box: list[int], callback: Callable[..., object], *args: Any) -> None:
        self._timers.pop(box[0], None)
        callback(*args)

    def pending_timers(self) -> list[float]:
        """When each live (not cancelled, not yet fired) timer is due, sorted."""
        self._timers = {k: h for k, h in self._timers.items() if not h.cancelled()}
        return sorted(h.when() for h in self._timers.values())

    def _busy(self) -> bool:
        # Cancelled handles never run, so they are dropped here; otherwise every re-armed
        # deadline would stay in the table and make each check slower than the last.
        if self._soon:
            self._soon = {k: h for k, h in self._soon.items() if not h.cancelled()}
            if self._soon:
                return True
        self._timers = {k: h for k, h in self._timers.items() if not h.cancelled()}
        now = self._now
        return any(h.when() <= now for h in self._timers.values())

    def settle(self, max_iterations: int = 1000) -> None:
        """Run everything that can run now: ready callbacks, task steps, due timers.

        Stops as soon as nothing is scheduled for this instant (tasks waiting on a future
        nobody will resolve are not "ready"); ``max_iterations`` only guards a test bug.
        """

        async def _spin() -> None:
            for _ in range(max_iterations):
                await asyncio.sleep(0)
                if not self._busy():
                    return
            raise AssertionError(f"loop still busy after {max_iterations} iterations")

        self.run_until_complete(_spin())

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing each timer at its own due time, in order."""
        target = self._now + seconds
        self.settle()
        while True:
            due = [w for w in self.pending_timers() if w <= target]
            if not due:
                break
            self._now = max(self._now, due[0])
            self.settle()
        self._now = target
        self.settle()


@contextmanager
def fake_clock_loop(start: float = 1000.0) -> Iterator[FakeClockLoop]:
    loop = FakeClockLoop(start)
    try:
        yield loop
    finally:
        # Cancel what the test left behind so closing the loop warns about nothing.
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.settle()
        loop.close()


# --------------------------------------------------------------------------------------
# the transport


class FakeTransport(asyncio.Transport):
    """Records what a protocol does to its connection; delivers bytes like a socket would.

    ``written`` is every byte passed to write/writelines, in order. Incoming data goes
    through `receive`/`receive_eof`, which hold it while reading is paused and drop it
    after close, as a real transport does. ``connection_lost`` is delivered through the
    loop (call_soon), never from inside ``close()``, because that is when a real transport
    delivers it and re-entering the protocol from its own close() would test a situation
    that cannot happen.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        port: int = 40000,
        high_water: int = 64 * 1024,
        low_water: int = 16 * 1024,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: asyncio.Protocol | None = None
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.closed_at: float | None = None  # loop time of close()/abort()
        self.write_times: list[float] = []  # loop time of each write
        self.aborted = False
        self.reading_paused = False
        self.pause_reading_calls = 0
        self.resume_reading_calls = 0
        self.lost = False
        self.eof_delivered = False
        self.port = port
        self.high_water = high_water
        self.low_water = low_water
        self.hold_writes = False  # True: writes stay in the buffer (a client not reading)
        self._buffered = 0
        self._writing_paused = False
        self._inbox: deque[bytes | None] = deque()  # None marks EOF

    # -- set-up -----------------------------------------------------------------------
    def connect(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        protocol.connection_made(self)

    # -- what the protocol calls ------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return  # a closing transport drops writes, as uvloop's does
        self.written += data
        self.writes += 1
        self.write_times.append(self.loop.time())
        if self.hold_writes:
            self._set_buffered(self._buffered + len(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.closed_at = self.loop.time()
        self.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.pause_reading_calls += 1
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.resume_reading_calls += 1
        if self.reading_paused:
            self.reading_paused = False
            # A real transport reads again on a later loop iteration, not inside this call.
            self.loop.call_soon(self.pump)

    def is_reading(self) -> bool:
        return not self.reading_paused and not self.closed

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.low_water, self.high_water

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self.high_water = high
        if low is not None:
            self.low_water = low

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", self.port)
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    # -- what the peer does -------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes arrive from the client (held while reading is paused)."""
        if data:
            self._inbox.append(data)
        self.pump()

    def receive_eof(self) -> None:
        """The client half-closes, after the bytes already sent."""
        self._inbox.append(None)
        self.pump()

    @property
    def held(self) -> int:
        """Bytes received but not yet delivered (reading paused)."""
        return sum(len(d) for d in self._inbox if d is not None)

    def pump(self) -> None:
        protocol = self.protocol
        assert protocol is not None
        while self._inbox and not self.reading_paused and not self.closed:
            data = self._inbox.popleft()
            if data is None:
                self.eof_delivered = True
                # As asyncio's transports: a falsy eof_received() means "close now".
                if not protocol.eof_received():
                    self.close()
                return
            protocol.data_received(data)

    def drain_client(self, n: int | None = None) -> None:
        """The client reads ``n`` buffered bytes (all by default)."""
        left = 0 if n is None else max(0, self._buffered - n)
        self._set_buffered(left)

    def reset_by_peer(self) -> None:
        """The client vanished (RST): connection_lost with an error, no close() needed."""
        if not self.lost:
            if not self.closed:
                self.closed = True
                self.closed_at = self.loop.time()
            self._lose(ConnectionResetError("connection reset by peer"))

    # -- internals ----------------------------------------------------------------------
    def _set_buffered(self, size: int) -> None:
        self._buffered = size
        protocol = self.protocol
        assert protocol is not None
        if not self._writing_paused and size > self.high_water:
            self._writing_paused = True
            protocol.pause_writing()
        elif self._writing_paused and size <= self.low_water:
            self._writing_paused = False
            protocol.resume_writing()

    def _lose(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        assert self.protocol is not None
        self.protocol.connection_lost(exc)


# --------------------------------------------------------------------------------------
# a real DataPlane


def make_config(tree: dict[str, Any] | None = None, tmp_dir: str | Path | None = None) -> Config:
    """A real `Config` from a YAML tree, through the real loader (files off, empty env).

    With ``tmp_dir`` the tree is written to a file there and loaded as a config file, the
    way the gateway loads it; without, the same tree is passed as CLI-style dotted keys.
    """
    tree = dict(tree or {})
    if tmp_dir is not None:
        path = Path(tmp_dir) / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        return load_config(None, config_file=str(path), env={}, use_files=False).config
    return load_config(_dotted(tree), env={}, use_files=False).config


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if (
            isinstance(value, dict)
            and value
            and key not in ("backends", "pricing", "extra_headers")
        ):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def make_plane(
    loop: asyncio.AbstractEventLoop,
    tree: dict[str, Any] | None = None,
    config: Config | None = None,
) -> DataPlane:
    """A `DataPlane` on ``loop``: no backends, no services plugged in (no breakers, no
    reporter sinks, no activity, no monitoring API)."""
    return DataPlane(config if config is not None else make_config(tree), loop)
