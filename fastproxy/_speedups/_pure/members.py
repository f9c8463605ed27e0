"""json_members: a few top-level members of a JSON object, without parsing the rest.

A backend's non-streaming answer is relayed as it came; the gateway needs only its
``usage`` object (and ``type``, which tells an Anthropic message from an OpenAI body).
Parsing the whole document for that builds every string of the completion as a Python
object on the event loop, work proportional to the answer. This walks the document once,
checking it is a well-formed JSON object without building anything, and hands back the
raw text of the members asked for.

``json_members(data, names)`` returns a tuple with, for each name in ``names`` (bytes, no
escapes), the raw JSON text of that top-level member's value (the last one, when a name
repeats, as a JSON parser keeps it) or None when absent; or None for the whole call when
the document is not an object this scan vouches for, and the caller parses it itself
(orjson then decides). Never a different verdict: what this accepts, a strict parser
accepts, with the same values. None for:

- anything but an object at the top, bytes after it other than whitespace;
- a syntax error: a bad string escape, a control byte or invalid UTF-8 inside a string,
  a number outside JSON's grammar, a literal other than true, false or null;
- what a strict parser may judge differently from a scan: an escape of a UTF-16
  surrogate, an integer part of more than 18 digits, an exponent of more than two
  digits, a key with escapes at the top level, nesting deeper than 256.
"""

from __future__ import annotations

_WS = b" \t\r\n"
_DIGITS = b"0123456789"
_ESCAPES = b'"\\/bfnrt'
_HEX = b"0123456789abcdefABCDEF"
MAX_DEPTH = 256


class _Refused(Exception):
    pass


def _ws(s: bytes, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _utf8(s: bytes, i: int) -> int:
    """The index after the multi-byte UTF-8 character at ``i`` (a lead byte >= 0x80)."""
    c = s[i]
    if 0xC2 <= c <= 0xDF:
        lo, hi, more = 0x80, 0xBF, 1
    elif 0xE0 <= c <= 0xEF:
        lo = 0xA0 if c == 0xE0 else 0x80
        hi = 0x9F if c == 0xED else 0xBF
        more = 2
    elif 0xF0 <= c <= 0xF4:
        lo = 0x90 if c == 0xF0 else 0x80
        hi = 0x8F if c == 0xF4 else 0xBF
        more = 3
    else:
        raise _Refused
    if i + more >= len(s) or not lo <= s[i + 1] <= hi:
        raise _Refused
    for k in range(i + 2, i + 1 + more):
        if not 0x80 <= s[k] <= 0xBF:
            raise _Refused
    return i + 1 + more


def _string(s: bytes, i: int) -> tuple[int, bool]:
    """``s[i]`` is a quote: the index after the closing quote, and whether it had escapes."""
    n = len(s)
    i += 1
    escaped = False
    while True:
        if i >= n:
            raise _Refused
        c = s[i]
        if c == 0x22:
            return i + 1, escaped
        if c == 0x5C:
            escaped = True
            if i + 1 >= n:
                raise _Refused
            e = s[i + 1]
            if e == 0x75:  # \uXXXX
                digits = s[i + 2 : i + 6]
                if len(digits) != 4 or any(d not in _HEX for d in digits):
                    raise _Refused
                if 0xD800 <= int(digits, 16) <= 0xDFFF:
                    raise _Refused  # surrogates: left to the parser
                i += 6
            elif e in _ESCAPES:
                i += 2
            else:
                raise _Refused
        elif c < 0x20:
            raise _Refused
        elif c < 0x80:
            i += 1
        else:
            i = _utf8(s, i)


def _number(s: bytes, i: int) -> int:
    n = len(s)
    if i < n and s[i] == 0x2D:
        i += 1
    start = i
    if i < n and s[i] == 0x30:
        i += 1
    elif i < n and 0x31 <= s[i] <= 0x39:
        while i < n and s[i] in _DIGITS:
            i += 1
    else:
        raise _Refused
    if i - start > 18:
        raise _Refused
    if i < n and s[i] == 0x2E:
        i += 1
        if i >= n or s[i] not in _DIGITS:
            raise _Refused
        while i < n and s[i] in _DIGITS:
            i += 1
    if i < n and s[i] in b"eE":
        i += 1
        if i < n and s[i] in b"+-":
            i += 1
        start = i
        while i < n and s[i] in _DIGITS:
            i += 1
        if not 0 < i - start <= 2:
            raise _Refused  # 1e999 is infinity, which a strict parser refuses
    return i


def _value(s: bytes, i: int, depth: int) -> int:
    """``s[i]`` starts a value (no whitespace before it): the index after it."""
    if i >= len(s):
        raise _Refused
    c = s[i]
    if c == 0x22:
        return _string(s, i)[0]
    if c == 0x7B or c == 0x5B:
        if depth >= MAX_DEPTH:
            raise _Refused
        close = 0x7D if c == 0x7B else 0x5D
        i = _ws(s, i + 1)
        if i < len(s) and s[i] == close:
            return i + 1
        while True:
            if c == 0x7B:
                if i >= len(s) or s[i] != 0x22:
                    raise _Refused
                i = _ws(s, _string(s, i)[0])
                if i >= len(s) or s[i] != 0x3A:
                    raise _Refused
                i = _ws(s, i + 1)
            i = _ws(s, _value(s, i, depth + 1))
            if i >= len(s):
                raise _Refused
            if s[i] == close:
                return i + 1
            if s[i] != 0x2C:
                raise _Refused
            i = _ws(s, i + 1)
    for word in (b"true", b"false", b"null"):
        if s.startswith(word, i):
            return i + len(word)
    return _number(s, i)


def json_members(data: bytes, names: tuple[bytes, ...]) -> tuple[bytes | None, ...] | None:
    if type(data) is not bytes:
        return None
    try:
        return _members(data, names)
    except _Refused:
        return None


def _members(s: bytes, names: tuple[bytes, ...]) -> tuple[bytes | None, ...] | None:
    found: list[bytes | None] = [None] * len(names)
    i = _ws(s, 0)
    if i >= len(s) or s[i] != 0x7B:
        return None
    i = _ws(s, i + 1)
    if i < len(s) and s[i] == 0x7D:
        i += 1
    else:
        while True:
            if i >= len(s) or s[i] != 0x22:
                return None
            end, escaped = _string(s, i)
            if escaped:
                return None  # "usag\u0065" is "usage" to a parser: not judged here
            key = s[i + 1 : end - 1]
            i = _ws(s, end)
            if i >= len(s) or s[i] != 0x3A:
                return None
            i = _ws(s, i + 1)
            start = i
            i = _value(s, i, 1)
            if key in names:
                found[names.index(key)] = s[start:i]
            i = _ws(s, i)
            if i >= len(s):
                return None
            if s[i] == 0x7D:
                i += 1
                break
            if s[i] != 0x2C:
                return None
            i = _ws(s, i + 1)
    if _ws(s, i) != len(s):
        return None
    return tuple(found)
