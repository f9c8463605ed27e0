"""A uvloop event loop running in a background thread, for hosting servers in tests.

Servers under test (the gateway, mock LLMs) run here, while the test itself runs in the
main thread with blocking SDK clients or its own asyncio loop. Keeping the two loops
apart means a synchronous ``openai.OpenAI`` call in a test can never deadlock the
server it is talking to.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


class LoopThread:
    """Owns one uvloop loop in a daemon thread; ``run(coro)`` executes on it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(self._on_exception)
        self._thread = threading.Thread(target=self._main, name="test-server-loop", daemon=True)
        self._ready = threading.Event()

    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Unhandled loop errors are recorded so a test fixture can fail on them (uvloop's
        # _testbase habit), and still reported the default way for the log.
        self.errors.append(context)
        loop.default_exception_handler(context)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> LoopThread:
        self._thread.start()
        self._ready.wait()
        return self

    def submit(self, coro: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        return self.submit(coro).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run a plain callable on the loop thread and return its result."""

        async def _wrap() -> T:
            return fn()

        return self.run(_wrap(), timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            try:
                self.loop.close()
            except Exception as exc:  # e.g. a ResourceWarning turned error: report, don't hang
                self.errors.append({"message": "loop close failed", "exception": exc})
