"""Request: one parsed client request, and the table that says what its path is.

What a request *is* (which API, which dialect its errors are written in) is decided once,
by `Request.resolve`, as soon as its path is known, and stored on it: the protocol's
head checks, the request cycle and every error path read the same answer instead of
each deciding again from the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .dialects import anthropic, openai
from .dialects.base import Dialect

if TYPE_CHECKING:
    from ..core.keys import ClientKey


class ApiRoute:
    """An LLM API path: the dialect it speaks and the API kind (for usage records)."""

    __slots__ = ("dialect", "kind")

    def __init__(self, dialect: Dialect, kind: str) -> None:
        self.dialect = dialect
        self.kind = kind


API_PATHS: dict[bytes, ApiRoute] = {
    b"/v1/chat/completions": ApiRoute(openai, "chat"),
    b"/v1/responses": ApiRoute(openai, "responses"),
    b"/v1/embeddings": ApiRoute(openai, "embeddings"),
    b"/v1/messages": ApiRoute(anthropic, "messages"),
    b"/v1/messages/count_tokens": ApiRoute(anthropic, "count_tokens"),
    b"/v1/completions": ApiRoute(openai, "completions"),
}
for _path, _route in list(API_PATHS.items()):
    API_PATHS[_path[3:]] = _route  # clients configured with a base URL lacking /v1

MODEL_LIST_PATHS = (b"/v1/models", b"/models")


def is_model_path(path: bytes) -> bool:
    return path in MODEL_LIST_PATHS or path.startswith(b"/v1/models/")


class Request:
    __slots__ = (
        "_index",
        "api",
        "body",
        "body_buf",
        "body_size",
        "client_key",
        "client_key_id",
        "content_length",
        "dialect",
        "expects_body",
        "head_size",
        "headers",
        "host_count",
        "http11",
        "keep_alive",
        "method",
        "path",
        "query",
        "received_at",
        "reject",
        "te_present",
    )

    def __init__(self, now: float) -> None:
        self.method = b""
        self.path = b""
        self.query = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # name -> first value, built once the head is complete (index_headers): the
        # cycle looks up half a dozen headers per request, each a scan of the list.
        self._index: dict[bytes, bytes] | None = None
        self.head_size = 0  # header names and values, 4 bytes each for ": " and CRLF
        # The body: the one chunk it came in, or a bytearray once a second chunk arrives
        # (grown in place: a 60 MiB body is held once, never as parts plus a join).
        self.body: bytes | bytearray = b""
        self.body_buf: bytearray | None = None
        self.body_size = 0
        self.expects_body = False
        self.content_length = 0  # declared length; 0 when chunked or absent
        self.client_key: ClientKey | None = None  # who, when keys are required (core/keys.py)
        self.client_key_id: str | None = None
        self.http11 = True
        self.keep_alive = True
        self.received_at = now
        # Set by the protocol when the request is refused from its head (a GatewayError).
        self.reject: Exception | None = None
        self.host_count = 0
        self.te_present = False
        # Decided by resolve(): the LLM API this path is (None: not an API call) and the
        # dialect every answer to this request is written in.
        self.api: ApiRoute | None = None
        self.dialect: Dialect = openai

    def resolve(self, path: bytes) -> None:
        """Set the path and decide, once, what the request is and which dialect its
        answers (errors included) speak."""
        self.path = path
        api = API_PATHS.get(path)
        self.api = api
        if api is not None:
            self.dialect = api.dialect
        elif path.startswith((b"/v1/messages", b"/messages")):
            self.dialect = anthropic  # an unknown Anthropic path still errs in its shape
        elif path.startswith((b"/v1/models", b"/models")) and self.header(b"anthropic-version"):
            self.dialect = anthropic  # Anthropic's SDK listing models (see models.py)
        else:
            self.dialect = openai

    def index_headers(self) -> None:
        """Freeze the head's headers into a lookup table (call once, at head end:
        trailers never become headers, so nothing is added after)."""
        # Reversed, so a repeated header's first value wins, as in the scan below.
        self._index = dict(reversed(self.headers))

    def header_lookup(self) -> Callable[[bytes], bytes | None]:
        """``header`` as one callable: the index's own ``get`` once the head is indexed
        (a lookup is then one C call, not a method call and a dict lookup)."""
        index = self._index
        return index.get if index is not None else self.header

    def header(self, name: bytes) -> bytes | None:
        index = self._index
        if index is not None:
            return index.get(name)
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def head_only(self) -> bool:
        return self.method == b"HEAD"
