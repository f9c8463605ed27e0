"""Logging: configured in one place, greppable key=value lines, secrets never printed.

Loggers are named per plane (``fastproxy.data``, ``fastproxy.admin``, ``fastproxy.monitor``,
``fastproxy.storage``, ``fastproxy.access``) so an operator can filter by plane. Payloads
are never logged; as a last line of defence the formatter masks anything shaped like a
credential (``sk-...``, ``Bearer ...``, ``x-api-key: ...``) whatever the call site passed.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, TextIO

DATA = "fastproxy.data"
ADMIN = "fastproxy.admin"
MONITOR = "fastproxy.monitor"
STORAGE = "fastproxy.storage"
ACCESS = "fastproxy.access"

_SECRET_RE = re.compile(
    r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=]\s*[\"']?|api[_-]?key[\"']?\s*[:=]\s*[\"']?)"
    r"([A-Za-z0-9._\-]{6,})"
    r"|\b(sk-[A-Za-z0-9_\-]{8,}|sk-ant-[A-Za-z0-9_\-]{8,})"
)


def redact(text: str) -> str:
    """Mask credential-shaped substrings, keeping a 4-character hint for debugging."""

    def _mask(m: re.Match[str]) -> str:
        if m.group(3):
            return m.group(3)[:4] + "***"
        return m.group(1) + m.group(2)[:4] + "***"

    return _SECRET_RE.sub(_mask, text)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." k=v`` with UTC timestamps."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = redact(record.getMessage()).replace('"', "'")
        line = (
            f'ts={ts}.{int(record.msecs):03d}Z level={record.levelname} '
            f'logger={record.name} msg="{msg}"'
        )
        extra: dict[str, Any] | None = getattr(record, "kv", None)
        if extra:
            line += "".join(f" {k}={_fmt(v)}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def _fmt(value: Any) -> str:
    text = redact(str(value))
    return f'"{text}"' if (" " in text or not text) else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is *now*: a handler bound to the stream of the
    moment breaks once that stream is replaced and closed (pytest capture, daemons)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Install the one handler on the ``fastproxy`` logger tree (idempotent)."""
    root = logging.getLogger("fastproxy")
    for handler in list(root.handlers):
        if getattr(handler, "_fastproxy", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(KeyValueFormatter())
    handler._fastproxy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def access_line(rec: object) -> str:
    """One line per request: numbers and names only, never payloads, keys or IPs."""
    r = rec  # an ExchangeRecord; typed loosely to keep logs.py free of data-plane imports
    return (
        f'rid={r.id} method=POST path={r.path or "-"} status={r.status} '  # type: ignore[attr-defined]
        f"outcome={r.outcome} frontend={r.frontend or '-'} backend={r.backend or '-'} "  # type: ignore[attr-defined]
        f"model={r.model_used or r.model_requested or '-'} stream={int(r.streaming)} "  # type: ignore[attr-defined]
        f"attempts={r.attempts} bytes_in={r.bytes_rx} bytes_out={r.bytes_tx} "  # type: ignore[attr-defined]
        f"ms={r.duration_ms:.1f}"  # type: ignore[attr-defined]
    )
