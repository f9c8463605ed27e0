"""parse_simple_request: one complete, plain HTTP/1.1 request in one call (the reference).

The data port's usual request arrives whole in one read: a POST with a Content-Length
body, a handful of ordinary headers. httptools parses it through a Python callback per
element (message begin, URL, each header, head end, body, message end); this parses the
same bytes in one call and hands back what those callbacks would have built.

It accepts a deliberately narrow subset of HTTP/1.1 and returns None for anything else,
so the caller feeds those bytes to httptools instead, which then decides (and refuses
what must be refused). Never a different verdict: whatever this accepts, the strict
parser accepts with the same method, target, headers and body (tests/speedups test it
against httptools). None for:

- a method outside GET/HEAD/POST/PUT/PATCH/DELETE/OPTIONS, a target that does not start
  with "/" or holds a byte outside the URI characters, any version but HTTP/1.1;
- a header name outside the token characters, a value with a byte outside visible
  ASCII, space and tab, a folded line, a bare LF anywhere;
- Transfer-Encoding, Upgrade, Expect, a Connection header other than "keep-alive", a
  Content-Length that is not 1-18 digits or appears twice, a Host count other than one;
- more headers, head bytes or target bytes than the caller's limits;
- bytes before the end of the head or the body, or after the body (a pipelined request).

The result: ``(method, target, headers, head_size, body_start, content_length)``, header
names lower-cased, values without their leading spaces and tabs (as httptools gives them), ``head_size`` counted as
the data port counts it (name + value + 4 per header).
"""

from __future__ import annotations

METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"))
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_URI = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
)
_REFUSED = frozenset((b"transfer-encoding", b"upgrade", b"expect"))
_DIGITS = frozenset(b"0123456789")

Parsed = tuple[bytes, bytes, list[tuple[bytes, bytes]], int, int, int]


def _value_ok(value: bytes) -> bool:
    # Visible ASCII, space and tab only: obs-text (bytes >= 0x80) goes to httptools too.
    return all(0x20 <= c < 0x7F or c == 0x09 for c in value)


def _split_head(data: bytes) -> tuple[list[bytes], int] | None:
    """The head's lines (the request or status line first) and where the body starts;
    None for anything but exact bytes, a head not ended in this read, or a bare LF (a
    CR without its LF is refused by `_value_ok`)."""
    if type(data) is not bytes:
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end]
    if b"\n" in head.replace(b"\r\n", b""):
        return None
    return head.split(b"\r\n"), end + 4


def _length(value: bytes, seen: int) -> int:
    """A Content-Length of 1-18 digits, or -2 for what the subset leaves to httptools:
    any other value, or a second Content-Length (``seen`` >= 0: one came before)."""
    if seen >= 0 or not 0 < len(value) <= 18 or any(c not in _DIGITS for c in value):
        return -2
    return int(value)


def _header_line(line: bytes) -> tuple[bytes, bytes] | None:
    """One header line as (lower-case name, value), or None when it is outside the
    subset: a name of token characters, a value of visible ASCII, space and tab,
    without its leading spaces and tabs (trailing ones stay, as httptools leaves them)."""
    name, colon, value = line.partition(b":")
    if not colon or not name or any(c not in _TCHAR for c in name):
        return None
    value = value.lstrip(b" \t")
    if not _value_ok(value):
        return None
    return name.lower(), value


def parse_simple_request(
    data: bytes, max_target: int, max_head: int, max_headers: int
) -> Parsed | None:
    split = _split_head(data)
    if split is None:
        return None
    lines, body_start = split
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method not in METHODS or version != b"HTTP/1.1":
        return None
    if not target.startswith(b"/") or len(target) > max_target:
        return None
    if any(c not in _URI for c in target):
        return None
    if len(lines) - 1 > max_headers:
        return None
    headers: list[tuple[bytes, bytes]] = []
    head_size = 0
    hosts = 0
    length = -1
    for line in lines[1:]:
        pair = _header_line(line)
        if pair is None:
            return None
        name, value = pair
        if name in _REFUSED:
            return None
        if name == b"connection":
            if value.lower() != b"keep-alive":
                return None
        elif name == b"host":
            hosts += 1
        elif name == b"content-length":
            length = _length(value, length)
            if length < 0:
                return None
        head_size += len(name) + len(value) + 4
        headers.append((name, value))
    if hosts != 1 or head_size > max_head:
        return None
    if length < 0:
        length = 0
    if len(data) != body_start + length:
        return None
    return method, target, headers, head_size, body_start, length


# -- the upstream leg's twin --------------------------------------------------------------

_DECLINED = frozenset((b"transfer-encoding", b"upgrade"))
ParsedResponse = tuple[int, bool, list[tuple[bytes, bytes]], int, int]


def parse_simple_response(data: bytes, max_head: int, max_headers: int) -> ParsedResponse | None:
    """One complete, plain HTTP/1.1 response in one read: a backend's usual JSON answer.

    The same contract as `parse_simple_request`, for the upstream connection: whatever
    this accepts, httptools' response parser reads as exactly one complete message with
    the same status, keep-alive verdict, headers and body; anything else is None and goes
    to httptools. None for:

    - a status line other than ``HTTP/1.1 NNN reason`` with NNN in 200-599 (an interim
      1xx, a status without a body by definition or an HTTP/1.0 answer go to httptools),
      a reason phrase with a byte outside visible ASCII, space and tab;
    - the header rules of `parse_simple_request` (token names, plain values, no folding,
      no bare LF), Transfer-Encoding, Upgrade, a Connection header other than
      "keep-alive" or "close", a Content-Length absent, not 1-18 digits or given twice;
    - more headers or head bytes than the caller's limits;
    - a body shorter than its Content-Length in this read (the rest is still on its way,
      or the request was a HEAD) or bytes after it.

    The result: ``(status, keep_alive, headers, body_start, content_length)``, header
    names lower-cased and values as httptools gives them.
    """
    split = _split_head(data)
    if split is None:
        return None
    lines, body_start = split
    first = lines[0]
    if len(first) < 13 or first[:9] != b"HTTP/1.1 " or first[12:13] != b" ":
        return None
    code = first[9:12]
    if any(c not in _DIGITS for c in code) or not 200 <= int(code) <= 599:
        return None
    status = int(code)
    if status in (204, 304) or not _value_ok(first[13:]):
        return None
    if len(lines) - 1 > max_headers:
        return None
    headers: list[tuple[bytes, bytes]] = []
    head_size = 0
    keep_alive = True
    length = -1
    for line in lines[1:]:
        pair = _header_line(line)
        if pair is None:
            return None
        name, value = pair
        if name in _DECLINED:
            return None
        if name == b"connection":
            verdict = value.lower()
            if verdict == b"close":
                keep_alive = False
            elif verdict != b"keep-alive":
                return None
        elif name == b"content-length":
            length = _length(value, length)
            if length < 0:
                return None
        head_size += len(name) + len(value) + 4
        headers.append((name, value))
    if length < 0 or head_size > max_head:
        return None
    if len(data) != body_start + length:
        return None
    return status, keep_alive, headers, body_start, length
