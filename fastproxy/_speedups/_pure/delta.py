"""Content-delta scanning of stream event JSON: `DeltaScanner`. Pure-Python twin of ``_core.pyx`` (see ``__init__``)."""

from __future__ import annotations

import re

from .tokens import TokenEstimator

#
# One pass over an event's JSON, never building objects: string values under the text
# keys are decoded and fed to a TokenEstimator, and the rare keys the caller must look
# at with a real parser are reported as flags. A key only counts with a non-null value:
# OpenAI sends "usage": null in every chunk once usage reporting is on, and flagging
# those would make the caller parse every event.

DELTA_USAGE = 1
DELTA_NAME = 2
DELTA_ERROR = 4

_MAX_DEPTH = 256
_TEXT_KEYS = frozenset(
    [
        b"content",
        b"text",
        b"partial_json",
        b"arguments",
        b"thinking",
        b"reasoning_content",
        b"refusal",
    ]
)
_FLAG_KEYS = {b"usage": DELTA_USAGE, b"name": DELTA_NAME, b"error": DELTA_ERROR}
_K_NONE = 0
_K_TEXT = 1  # feed a string value
_K_DELTA = 2  # "delta": feed it when it is a string, walk it otherwise
# Where the walk is in the grammar: what the next token may be.
_S_VALUE = 0  # a value
_S_FIRST_VALUE = 1  # a value or "]" (just after "[")
_S_KEY = 2  # a key (after "," in an object)
_S_FIRST_KEY = 3  # a key or "}" (just after "{")
_S_COLON = 4  # ":" after a key
_S_AFTER = 5  # "," or a closer after a value

# One JSON token after optional whitespace: a string (group 1: its body), a structural
# character (group 2) or a scalar: number, true, false, null (group 3).
_JSON_TOKEN = re.compile(
    rb'[ \t\r\n]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|([{}\[\],:])|([A-Za-z0-9+\-.]+))', re.S
)
_TRAILING_WS = re.compile(rb"[ \t\r\n]*")
_VALID_ESCAPES = re.compile(rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
_ESCAPE = re.compile(
    rb'\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|\\u([0-9a-fA-F]{4})|\\(["\\/bfnrt])'
)
_SIMPLE = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
}


def _unescape(m: re.Match[bytes]) -> bytes:
    if m.group(1):
        cp = 0x10000 + ((int(m.group(1), 16) - 0xD800) << 10) + (int(m.group(2), 16) - 0xDC00)
        return chr(cp).encode("utf-8")
    if m.group(3):
        cp = int(m.group(3), 16)
        if 0xD800 <= cp <= 0xDFFF:
            return b"\xef\xbf\xbd"  # a lone surrogate: U+FFFD, as a lenient decoder would
        return chr(cp).encode("utf-8")
    return _SIMPLE[m.group(4)]


class DeltaScanner:
    """Token estimate of the text streamed in SSE event JSON, without a JSON parse."""

    __slots__ = ("_estimator", "_events", "_text_bytes")

    def __init__(self) -> None:
        self._estimator = TokenEstimator()
        self._events = 0
        self._text_bytes = 0

    @property
    def tokens(self) -> int:
        return self._estimator.tokens

    @property
    def text_bytes(self) -> int:
        return self._text_bytes

    @property
    def events(self) -> int:
        return self._events

    def reset(self) -> None:
        self._estimator.reset()
        self._events = 0
        self._text_bytes = 0

    def feed_event(self, data: bytes | bytearray | memoryview) -> int:
        if type(data) is not bytes:
            data = memoryview(data).tobytes()
        self._events += 1
        flags = self._walk(data)
        return flags if flags > 0 else 0

    def _feed_text(self, body: bytes) -> None:
        text = _ESCAPE.sub(_unescape, body) if b"\\" in body else body
        self._text_bytes += len(text)
        self._estimator.feed(text)

    def _walk(self, data: bytes) -> int:
        """Flags of a well-formed JSON text, or -1 when it is not one."""
        flags = 0
        stack: list[bool] = []  # True: inside an object, False: inside an array
        state = _S_VALUE
        key_kind = _K_NONE
        key_flag = 0
        pos = 0
        match = _JSON_TOKEN.match
        while True:
            m = match(data, pos)
            if m is None:
                return -1
            pos = m.end()
            body, punct, scalar = m.group(1, 2, 3)
            if state in (_S_VALUE, _S_FIRST_VALUE):
                if body is not None:
                    if b"\\" in body and b"\\" in _VALID_ESCAPES.sub(b"", body):
                        return -1
                    if key_kind:
                        self._feed_text(body)
                    flags |= key_flag
                elif scalar is not None:
                    if scalar != b"null":
                        flags |= key_flag
                elif punct == b"{" or punct == b"[":
                    if len(stack) >= _MAX_DEPTH:
                        return -1
                    flags |= key_flag
                    stack.append(punct == b"{")
                    state = _S_FIRST_KEY if punct == b"{" else _S_FIRST_VALUE
                    key_kind = _K_NONE
                    key_flag = 0
                    continue
                elif punct == b"]" and state == _S_FIRST_VALUE:
                    stack.pop()
                else:
                    return -1
            elif state in (_S_KEY, _S_FIRST_KEY):
                if body is not None:
                    if b"\\" in body and b"\\" in _VALID_ESCAPES.sub(b"", body):
                        return -1
                    key_flag = _FLAG_KEYS.get(body, 0)
                    if body in _TEXT_KEYS:
                        key_kind = _K_TEXT
                    elif body == b"delta":
                        key_kind = _K_DELTA
                    state = _S_COLON
                    continue
                if punct != b"}" or state != _S_FIRST_KEY:
                    return -1
                stack.pop()
            elif state == _S_COLON:
                if punct != b":":
                    return -1
                state = _S_VALUE
                continue
            elif punct == b"," and stack:
                state = _S_KEY if stack[-1] else _S_VALUE
                continue
            elif stack and punct == (b"}" if stack[-1] else b"]"):
                stack.pop()
            else:
                return -1
            # A value just ended.
            state = _S_AFTER
            key_kind = _K_NONE
            key_flag = 0
            if not stack:
                rest = _TRAILING_WS.match(data, pos)
                return flags if rest is not None and rest.end() == len(data) else -1
