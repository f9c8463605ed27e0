"""What a frontend dialect must provide: error rendering and stream framing rules.

The dialect modules (openai.py, anthropic.py) implement this as modules; a request
carries its dialect (decided once, `Request.resolve`) typed as this Protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ...core.records import BackendUsage


class Dialect(Protocol):
    @property
    def name(self) -> str: ...

    def error_body(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> bytes: ...

    def stream_error_event(self, message: str, code: str) -> bytes: ...

    def is_terminal(self, event: bytes, data: bytes) -> bool: ...

    def stream_usage(self, event: bytes, data: bytes) -> tuple[BackendUsage | None, bool]: ...
