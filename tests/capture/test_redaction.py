"""The redaction rules, one by one (sans I/O; the end-to-end grep is in test_capture.py)."""

from __future__ import annotations

import pytest

from fastproxy.monitor.capture import Redactor

SECRET = "backend-literal-secret-0001"


@pytest.fixture
def redact() -> Redactor:
    return Redactor(["X-Team-Token"], [SECRET, "short"])


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"Authorization: Bearer abc\r\n", b"Authorization: [REDACTED]\r\n"),
        (b"proxy-authorization: Basic abc\r\n", b"proxy-authorization: [REDACTED]\r\n"),
        (b"x-api-key: abc\r\nhost: h\r\n", b"x-api-key: [REDACTED]\r\nhost: h\r\n"),
        (b"api-key: abc\r\n", b"api-key: [REDACTED]\r\n"),
        (b"x-goog-api-key: abc\r\n", b"x-goog-api-key: [REDACTED]\r\n"),
        (b"Cookie: a=b; c=d\r\n", b"Cookie: [REDACTED]\r\n"),
        (b"set-cookie: s=1\r\n", b"set-cookie: [REDACTED]\r\n"),
        (b"x-team-token: t1\r\n", b"x-team-token: [REDACTED]\r\n"),
        (b'{"api_key": "v", "apiKey":"w"}', b'{"api_key": "[REDACTED]", "apiKey":"[REDACTED]"}'),
        (b'{"access_token":"a\\"b","n":1}', b'{"access_token":"[REDACTED]","n":1}'),
        (
            b'{"password": "p", "client_secret": "c"}',
            b'{"password": "[REDACTED]", "client_secret": "[REDACTED]"}',
        ),
        (b"use sk-ant-api03-abcdefghijklmnop now", b"use [REDACTED] now"),
        (b"sk-proj-0123456789abcdefXYZ", b"[REDACTED]"),
        (b"AIzaSyA0123456789abcdefghijklmnopqrstu", b"[REDACTED]"),
        (b"POST /v1/x?key=abc&alt=sse HTTP/1.1", b"POST /v1/x?key=[REDACTED]&alt=sse HTTP/1.1"),
        (f"echo {SECRET}!".encode(), b"echo [REDACTED]!"),
    ],
)
def test_each_rule(redact: Redactor, raw: bytes, want: bytes) -> None:
    assert redact(raw) == want


def test_ordinary_payloads_are_untouched(redact: Redactor) -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"a short key to success"}}]}\n\n'
    assert redact(chunk) == chunk
    usage = b'{"usage":{"prompt_tokens":3,"completion_tokens":5}}'
    assert redact(usage) == usage
    # A configured secret under 8 characters is not searched for literally.
    assert redact(b"a short word") == b"a short word"
