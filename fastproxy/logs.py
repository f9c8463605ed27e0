"""Logging: configured in one place, greppable key=value lines, secrets never printed.

Loggers are named per plane (``fastproxy.data``, ``fastproxy.admin``, ``fastproxy.monitor``,
``fastproxy.storage``, ``fastproxy.access``) so an operator can filter by plane. Payloads
are never logged; as a last line of defence the formatter masks anything shaped like a
credential (``sk-...``, ``Bearer ...``, ``x-api-key: ...``) whatever the call site passed.

One record is one line, whatever a client sent. Model names, paths and header values
come from clients, and a CR or LF written raw would start a line of the client's making
(ESC would drive the reader's terminal; a quote would end a field early). So the
formatter escapes every control character, quote and backslash in ``msg``, in ``kv``
values and in a traceback (``exc="..."``, on the same line), and ``access_line`` quotes
the fields it takes from the request itself, so its text is one safe line under any
handler an operator installs.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, TextIO

_SECRET_RE = re.compile(
    r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=]\s*[\"']?|api[_-]?key[\"']?\s*[:=]\s*[\"']?)"
    r"([A-Za-z0-9._\-]{6,})"
    r"|\b(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,})"
)


# Never written raw: C0 controls and DEL (CR and LF end lines, ESC drives terminals), C1
# controls (NEL ends a line for some readers, str.splitlines among them), the Unicode
# line and paragraph separators, and the bidirectional-text controls (they reorder what
# a terminal shows); quote and backslash too, so a quoted value always ends where it
# seems to and an escape always means what it says.
_ESCAPED_RE = re.compile(
    r'[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"\\]'
)
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}
# Values written without quotes: these characters only (so never a space, quote or "=").
_BARE_RE = re.compile(r"[A-Za-z0-9._:/@+\-]+")
_KEY_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.\-]")


def _escape_one(m: re.Match[str]) -> str:
    char = m.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with control characters, quotes and backslashes escaped (``\\n``,
    ``\\"``, ``\\x1b``, ``\\u2028``): safe between double quotes on one line."""
    return _ESCAPED_RE.sub(_escape_one, text)


def quote(value: object) -> str:
    """A ``key=value`` value: bare when it is plain, else quoted and escaped."""
    text = str(value)
    return text if _BARE_RE.fullmatch(text) else f'"{escape(text)}"'


def redact(text: str) -> str:
    """Mask credential-shaped substrings, keeping a 4-character hint for debugging."""

    def _mask(m: re.Match[str]) -> str:
        if m.group(3):
            return m.group(3)[:4] + "***"
        return m.group(1) + m.group(2)[:4] + "***"

    return _SECRET_RE.sub(_mask, text)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." k=v`` with UTC timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        # The time is formatted here, in UTC: Formatter.formatTime (and its ``converter``)
        # is never called, so neither is overridden.
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        # Redact before escaping: the credential patterns match the text as sent.
        msg = escape(redact(record.getMessage()))
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname} "
            f'logger={record.name} msg="{msg}"'
        )
        extra: dict[str, Any] | None = getattr(record, "kv", None)
        if extra:
            line += "".join(
                f" {_KEY_UNSAFE_RE.sub('_', str(k)) or '_'}={quote(redact(str(v)))}"
                for k, v in extra.items()
            )
        # A traceback ends in the exception's message, which may quote a client's text:
        # it is a field of this line, not lines of its own.
        if record.exc_info:
            line += f' exc="{escape(redact(self.formatException(record.exc_info)))}"'
        if record.stack_info:
            line += f' stack="{escape(redact(self.formatStack(record.stack_info)))}"'
        return line


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is *now*: a handler bound to the stream of the
    moment breaks once that stream is replaced and closed (pytest capture, daemons)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Install the one handler on the ``fastproxy`` logger tree (idempotent)."""
    root = logging.getLogger("fastproxy")
    for previous in list(root.handlers):
        if getattr(previous, "_fastproxy", False):
            root.removeHandler(previous)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(KeyValueFormatter())
    # The mark lives on the handler (read back with getattr above), so a later call finds
    # the handler an earlier one installed; logging.Handler declares no such attribute.
    handler._fastproxy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class AccessLine:
    """Renders the one access-log line of a request: numbers and names only, never
    payloads, keys or IPs.

    The method, path and model are the client's text and the names are the operator's:
    each is written bare when plain (``model=gpt-4o``) and otherwise quoted with every
    control character escaped, so the line is one line under any handler, not only ours.
    Paths, dialects, backends and most model names repeat request after request, so the
    rendered form of recent values is kept: a dict lookup instead of two regex passes
    (~2.5 us less per request). Bounded, because clients choose the model names. One
    instance per gateway (``DataPlane.access_line``), not module state."""

    __slots__ = ("_fields",)

    MAX_FIELDS = 1024

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def __call__(self, rec: object) -> str:
        r = rec  # an ExchangeRecord; typed loosely to keep logs.py free of data-plane imports
        field = self._field
        return (
            f"rid={r.id} method={field(r.method)} path={field(r.path)} "  # type: ignore[attr-defined]
            f"status={r.status} outcome={r.outcome} frontend={field(r.frontend)} "  # type: ignore[attr-defined]
            f"backend={field(r.backend)} model={field(r.model_used or r.model_requested)} "  # type: ignore[attr-defined]
            f"stream={int(r.streaming)} attempts={r.attempts} bytes_in={r.bytes_rx} "  # type: ignore[attr-defined]
            f"bytes_out={r.bytes_tx} ms={r.duration_ms:.1f}"  # type: ignore[attr-defined]
        )

    def _field(self, value: str | None) -> str:
        """A field: ``-`` when absent, else quoted as needed and masked (a key pasted into
        the model field must not reach a handler that does not redact)."""
        if not value:
            return "-"
        fields = self._fields
        text = fields.get(value)
        if text is None:
            if len(fields) >= self.MAX_FIELDS:
                fields.clear()
            text = fields[value] = quote(redact(value))
        return text


def access_line(rec: object) -> str:
    """One request's access line, rendered without a kept cache (tests, tools)."""
    return AccessLine()(rec)
