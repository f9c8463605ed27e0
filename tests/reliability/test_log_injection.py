"""Client-supplied text cannot forge log lines: one request, one access line.

Model names, paths and header values come from clients. Written raw, a CR or LF in any
of them starts a new line that a reader (or a log shipper) takes for the gateway's own,
ESC drives the operator's terminal, and a quote or backslash can end a quoted field
early. The rule under test: every control character (C0, DEL, C1, the Unicode line and
paragraph separators, bidirectional-text controls), quote and backslash in a log line
is escaped, so

- the whole log stays well formed: every line is ``ts=.. level=.. logger=.. msg="..."``
  plus ``key=value`` fields, with no control character in it;
- each request through the gateway adds exactly one access line;
- the client's text is still there, escaped, and unescapes back to exactly what was sent.

Requests go over raw sockets to a real gateway (`access_log: true`), so the bytes are
exactly the ones under test; the log is captured with ``configure_logging(stream=...)``.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from fastproxy.admin.routes import AdminRequest, AdminResponse
from fastproxy.logs import KeyValueFormatter, access_line, configure_logging
from tests.conftest import RunningGateway, backend_for
from tests.support.rawhttp import read_response
from tests.support.waiting import wait_until

# A line the attacker wants to appear in the log: a past timestamp no real line has.
FORGED = 'ts=1999-01-01T00:00:00.000Z level=ERROR logger=fastproxy.access msg="rid=1 status=500"'

# Everything a log line must never contain raw.
_RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_LINE = re.compile(
    r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    rf"logger=fastproxy(?:\.\w+)* msg=({_QUOTED})((?: [\w.-]+=(?:{_QUOTED}|[^\s\"]+))*)"
)
_FIELD = re.compile(rf'([\w.-]+)=({_QUOTED}|[^\s"]+)')
_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|(.))")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1) or m.group(2):
            return chr(int(m.group(1) or m.group(2), 16))
        return _SIMPLE[m.group(3)]

    return _ESCAPE.sub(one, text)


def value(raw: str) -> str:
    return unescape(raw[1:-1]) if raw.startswith('"') else raw


def fields(text: str) -> dict[str, str]:
    """``k=v k="v"`` (the whole text, nothing else) as a dict of unescaped values."""
    out: dict[str, str] = {}
    pos = 0
    for m in _FIELD.finditer(text):
        assert m.start() == pos, f"junk between fields at {pos}: {text!r}"
        out[m.group(1)] = value(m.group(2))
        pos = m.end() + 1
    assert pos == len(text) + 1, f"junk after the fields: {text!r}"
    return out


def parse_line(line: str) -> tuple[str, dict[str, str]]:
    """(msg, other fields) of one well-formed line; fails the test on anything else."""
    assert _RAW_CONTROL.search(line) is None, f"raw control character in {line!r}"
    m = _LINE.fullmatch(line)
    assert m is not None, f"not a well-formed log line: {line!r}"
    return value(m.group(1)), fields(m.group(2).lstrip(" ")) if m.group(2) else {}


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[str]:
        text = self.stream.getvalue()
        complete = text[: text.rfind("\n") + 1]  # a line being written is not read yet
        lines = complete.split("\n")[:-1]
        # No other character that any reader takes for a line break (str.splitlines
        # knows them all: VT, FF, FS, GS, RS, NEL, U+2028, U+2029, CR).
        assert complete.splitlines() == lines, "a line break other than LF in the log"
        return lines

    def access(self) -> list[str]:
        return [line for line in self.lines() if " logger=fastproxy.access " in line]

    def assert_well_formed(self) -> None:
        for line in self.lines():
            parse_line(line)
            assert not line.startswith("ts=1999"), f"a forged line: {line!r}"


@pytest.fixture
def log_capture() -> Iterator[LogCapture]:
    root = logging.getLogger("fastproxy")
    saved = (list(root.handlers), root.level, root.propagate)
    capture = LogCapture()
    configure_logging("INFO", stream=capture.stream)
    yield capture
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    root.propagate = saved[2]


@pytest.fixture
def gw(
    gateway_factory: Callable[..., RunningGateway], mock_llm: Any, log_capture: LogCapture
) -> RunningGateway:
    return gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm, "openai")},
            "default_backend": "openai.1",  # any model name reaches the mock
            "access_log": True,
            "health_check": {"enabled": False},
            "usage_tracking": {"enabled": False},
        }
    )


def chat(
    model: str = "gpt-4o", headers: bytes = b"", path: bytes = b"/v1/chat/completions"
) -> bytes:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return (
        b"POST " + path + b" HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\n"
        + headers
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def send(port: int, raw: bytes) -> int:
    """One request on a fresh connection; its status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        return read_response(sock).status


def one_access_line(gw: RunningGateway, log: LogCapture, raw: bytes) -> tuple[int, dict[str, str]]:
    """Send ``raw``; wait for the log to hold exactly one more access line; its fields."""
    before = len(log.access())
    status = send(gw.port, raw)
    wait_until(lambda: len(log.access()) > before, timeout=5, what="the access line")
    access = log.access()
    # Whatever else the request caused was written before its access line (the record
    # is finished last), so the count is settled here.
    assert len(access) == before + 1, access[before:]
    log.assert_well_formed()
    msg, extra = parse_line(access[-1])
    assert not extra
    return status, fields(msg)


def assert_still_serves(gw: RunningGateway, log: LogCapture) -> None:
    status, f = one_access_line(gw, log, chat())
    assert status == 200
    # An ordinary request's line reads as it always did: plain values, unquoted.
    assert f["model"] == "gpt-4o" and f["path"] == "/v1/chat/completions"
    assert "model=gpt-4o " in log.access()[-1]


MODELS = [
    ("model with CRLF and a forged access line", "gpt-4o\r\n" + FORGED),
    ("model with LF and a forged access line", "gpt-4o\n" + FORGED),
    ("model with a lone CR and a forged access line", "gpt-4o\r" + FORGED),
    ("model with NUL, ESC sequences and DEL", "gpt-4o\x00\x1b[2K\x1b[1A\x7f" + FORGED),
    (
        "model with VT, FF and the file, group and record separators",
        "gpt-4o\x0b\x0c\x1c\x1d\x1e" + FORGED,
    ),
    ("model with NEL, U+2028 and U+2029", "gpt-4o\x85" + FORGED + "\u2028x\u2029y"),
    ("model with a right-to-left override", "gpt-4o\u202e" + FORGED),
    (
        "model with a quote and a backslash that would end the field early",
        'gpt-4o" status=200 outcome=ok x="\\',
    ),
]


@pytest.mark.parametrize("model", [m[1] for m in MODELS], ids=[m[0] for m in MODELS])
def test_json_body_model_is_escaped_in_the_access_line(
    gw: RunningGateway, log_capture: LogCapture, model: str
) -> None:
    status, f = one_access_line(gw, log_capture, chat(model))
    assert f["model"] == model  # escaped on the way in, exactly the client's text back out
    assert f["status"] == str(status)
    assert "\\n" in log_capture.access()[-1] or "\n" not in model
    assert_still_serves(gw, log_capture)


HEADERS = [
    # httptools lets TAB and bytes 0x80-0xFF through in header values: NEL (0x85) among
    # them, which several readers take for a line break.
    ("x-session-id with TAB and NEL", b"x-session-id: s1\t\x85" + FORGED.encode() + b"\r\n"),
    ("x-proxy-user with NEL", b"x-proxy-user: alice\x85" + FORGED.encode() + b"\r\n"),
    ("user-agent with NEL", b"user-agent: ua/1.0\x85" + FORGED.encode() + b"\r\n"),
    # The rest the parser refuses: still one access line, for the refusal.
    (
        "x-session-id with CRLF and a forged line",
        b"x-session-id: s1\r\n" + FORGED.encode() + b"\r\n",
    ),
    (
        "x-proxy-user with a bare LF and a forged line",
        b"x-proxy-user: alice\n" + FORGED.encode() + b"\r\n",
    ),
    ("user-agent with a lone CR", b"user-agent: ua/1.0\r" + FORGED.encode() + b"\r\n"),
    ("x-session-id with NUL and ESC", b"x-session-id: s1\x00\x1b[2K\r\n"),
    (
        "x-session-id as an obs-fold continuation carrying a forged line",
        b"x-session-id: s1\r\n " + FORGED.encode() + b"\r\n",
    ),
]


@pytest.mark.parametrize("header", [h[1] for h in HEADERS], ids=[h[0] for h in HEADERS])
def test_header_values_cannot_forge_a_line(
    gw: RunningGateway, log_capture: LogCapture, header: bytes
) -> None:
    status, f = one_access_line(gw, log_capture, chat(headers=header))
    assert status in (200, 400), status
    assert f["status"] == str(status)
    assert_still_serves(gw, log_capture)


PATHS = [
    (
        "path with percent-encoded CRLF and a forged line",
        b"/v1/chat/completions%0d%0a" + FORGED.replace(" ", "%20").replace('"', "%22").encode(),
    ),
    ("path with a raw control byte", b"/v1/chat/\x01completions"),
    (
        "path with raw CRLF inside the request line",
        b"/v1/chat/completions\r\n" + FORGED.encode() + b"\r\nx: /v1/chat/completions",
    ),
    ("monitoring path with percent-encoded CRLF", b"/v1/diagnostics%0d%0a%1b[2K"),
]


@pytest.mark.parametrize("path", [p[1] for p in PATHS], ids=[p[0] for p in PATHS])
def test_request_path_cannot_forge_a_line(
    gw: RunningGateway, log_capture: LogCapture, path: bytes
) -> None:
    status, f = one_access_line(gw, log_capture, chat(path=path))
    assert status in (400, 404), status
    assert "\n" not in f["path"] and "\r" not in f["path"]
    assert_still_serves(gw, log_capture)


def test_admin_path_in_a_handler_failure_cannot_forge_a_line(
    gw: RunningGateway, log_capture: LogCapture
) -> None:
    """The admin listener logs the (percent-decoded) path when a handler fails, with the
    traceback: all of it one line."""

    async def boom(req: AdminRequest) -> AdminResponse:
        raise RuntimeError("handler failed for " + req.params["name"])

    gw.lt.call(lambda: gw.gateway.monitoring.router.add("GET", "/test/boom/{name}", boom))
    target = b"/test/boom/x%0d%0a" + FORGED.replace(" ", "%20").replace('"', "%22").encode()
    admin_port = gw.gateway.admin_port
    assert admin_port is not None
    status = send(admin_port, b"GET " + target + b" HTTP/1.1\r\nhost: localhost\r\n\r\n")
    assert status == 500

    def failure_lines() -> list[str]:
        return [line for line in log_capture.lines() if "admin handler for" in line]

    wait_until(failure_lines, timeout=5, what="the handler failure to be logged")
    log_capture.assert_well_formed()
    (line,) = failure_lines()
    msg, extra = parse_line(line)
    assert msg.startswith("admin handler for GET ") and FORGED in unescape(msg)
    assert extra["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: handler failed for x\r\n" + FORGED in extra["exc"]
    assert_still_serves(gw, log_capture)


# -- the formatter and access_line on their own ----------------------------------------------

HOSTILE = (
    "a\r\n"
    + FORGED
    + "\x00\x07\x1b[31m\x7f\x85\x9f\u2028\u2029\u202e\t"
    + 'q"uote back\\slash \\" end\\'
)


def _record(msg: str, *args: Any, exc_info: Any = None, **kv: Any) -> logging.LogRecord:
    record = logging.LogRecord("fastproxy.data", logging.WARNING, __file__, 1, msg, args, exc_info)
    if kv:
        record.kv = kv
    return record


def test_formatter_escapes_control_characters_quotes_and_backslashes_in_msg() -> None:
    line = KeyValueFormatter().format(_record("model %s failed", HOSTILE))
    msg, extra = parse_line(line)
    assert msg == f"model {HOSTILE} failed" and not extra
    assert "\\r\\nts=1999" in line and "\\x1b[31m" in line and "\\u2028" in line


def test_formatter_quotes_and_escapes_kv_values() -> None:
    line = KeyValueFormatter().format(_record("x", model=HOSTILE, n=3, empty="", plain="a.b"))
    _, extra = parse_line(line)
    assert extra == {"model": HOSTILE, "n": "3", "empty": "", "plain": "a.b"}
    assert line.endswith(' n=3 empty="" plain=a.b')


def test_formatter_keeps_a_traceback_on_the_same_line() -> None:
    try:
        raise ValueError("bad model " + HOSTILE)
    except ValueError:
        exc_info = sys.exc_info()
    line = KeyValueFormatter().format(_record("exchange failed", exc_info=exc_info))
    msg, extra = parse_line(line)
    assert msg == "exchange failed"
    assert extra["exc"].startswith("Traceback (most recent call last):\n")
    assert extra["exc"].endswith("ValueError: bad model " + HOSTILE)


def test_formatter_still_masks_credentials_everywhere() -> None:
    try:
        raise RuntimeError("auth header was Bearer sk-abcdefghijklmnop")
    except RuntimeError:
        exc_info = sys.exc_info()
    line = KeyValueFormatter().format(
        _record("key sk-abcdefghijklmnop\nx", exc_info=exc_info, key="sk-abcdefghijklmnop")
    )
    assert "abcdefghijklmnop" not in line
    parse_line(line)


def _exchange_record(**overrides: Any) -> SimpleNamespace:
    rec = SimpleNamespace(
        id=7,
        method="POST",
        path="/v1/chat/completions",
        status=200,
        outcome="ok",
        frontend="openai",
        backend="openai.1",
        model_used=None,
        model_requested="gpt-4o",
        streaming=False,
        attempts=1,
        bytes_rx=10,
        bytes_tx=20,
        duration_ms=1.25,
    )
    for k, v in overrides.items():
        setattr(rec, k, v)
    return rec


def test_access_line_of_an_ordinary_request_is_unchanged() -> None:
    assert access_line(_exchange_record()) == (
        "rid=7 method=POST path=/v1/chat/completions status=200 outcome=ok frontend=openai "
        "backend=openai.1 model=gpt-4o stream=0 attempts=1 bytes_in=10 bytes_out=20 ms=1.2"
    )


@pytest.mark.parametrize("field", ["model_requested", "model_used", "path", "backend", "method"])
def test_access_line_quotes_and_escapes_each_client_field(field: str) -> None:
    line = access_line(_exchange_record(**{field: HOSTILE}))
    assert _RAW_CONTROL.search(line) is None
    got = fields(line)
    name = {"model_requested": "model", "model_used": "model"}.get(field, field)
    assert got[name] == HOSTILE
    assert got["rid"] == "7" and got["ms"] == "1.2"


def test_access_line_is_one_line_under_a_plain_message_handler() -> None:
    """An operator's own handler (``%(message)s``) gets one line per request too."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.reliability.plain_access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info(access_line(_exchange_record(model_requested=HOSTILE, path=HOSTILE)))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.splitlines() == [text[:-1]]
    assert _RAW_CONTROL.search(text[:-1]) is None
    assert fields(text[:-1])["model"] == HOSTILE


def test_access_line_field_memo_is_exact_and_bounded() -> None:
    """Rendered fields are remembered, but clients pick model names: the memory is
    bounded, and a remembered field is the same escaped text as a fresh one."""
    from fastproxy.logs import AccessLine

    render = AccessLine()
    for i in range(3 * AccessLine.MAX_FIELDS):
        name = f"m{i}\r\n{FORGED}"
        first = render(_exchange_record(model_requested=name))
        assert (
            render(_exchange_record(model_requested=name))
            == first
            == access_line(_exchange_record(model_requested=name))
        )
        assert fields(first)["model"] == name
        assert len(render._fields) <= AccessLine.MAX_FIELDS
