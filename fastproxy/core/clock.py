"""HttpDate: the ``date:`` header line every response carries, formatted once a second.

Formatting a date per response costs more than the rest of a small response's head; one
cached line, refreshed by the gateway's one-second tick, serves both listeners.
"""

from __future__ import annotations

import time
from email.utils import formatdate


class HttpDate:
    __slots__ = ("line",)

    def __init__(self) -> None:
        self.line = b""
        self.tick()

    def tick(self) -> None:
        self.line = b"date: " + formatdate(time.time(), usegmt=True).encode() + b"\r\n"

    @property
    def value(self) -> bytes:
        """The header's value alone (for h11, which adds the name)."""
        return self.line[6:-2]
