"""What a frontend dialect must provide: error rendering and stream framing rules."""

from __future__ import annotations

from typing import Protocol


class Dialect(Protocol):
    name: str

    def error_body(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> bytes: ...

    def stream_error_event(self, message: str, code: str) -> bytes: ...

    def is_terminal(self, event: bytes, data: bytes) -> bool: ...
