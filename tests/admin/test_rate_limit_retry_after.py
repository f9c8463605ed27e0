"""``is_rate_limited`` / ``retry_after_seconds`` in /v1/diagnostics follow the backend's
``Retry-After``: delta-seconds or an HTTP-date, capped at an hour, the 60 s default only
when the header is absent or unreadable.

Two halves, both through a real gateway and its admin listener:

* the diagnostics side: the gateway's `RateLimitWatch` (one of the data plane's attempt
  sinks) is told an attempt's outcome on the gateway's loop with the raw header value,
  exactly as the request cycle tells its attempt sinks, and the document is read over
  HTTP;
* end to end: a real 429 from the mock LLM (``x-mock-retry-after``) or from a raw backend
  (an HTTP-date, or no header) relayed by the data plane, which hands the 429's raw
  ``Retry-After`` to the attempt sinks (fastproxy/dataplane/cycle.py,
  ``RequestCycle._attempts``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from fastproxy.monitor.rate_limits import RateLimitWatch

from .conftest import Admin

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def retry_after(admin: Admin, name: str = "openai.1") -> tuple[bool, float | None]:
    doc = httpx.get(admin.url + "/v1/diagnostics", timeout=10).json()
    inst = next(i for i in doc["instances"] if i["name"] == name)
    return inst["is_rate_limited"], inst["retry_after_seconds"]


def watch(admin: Admin) -> RateLimitWatch:
    """The gateway's rate-limit board: the one the data plane reports attempts to."""
    board = admin.gw.gateway.rate_limits
    assert isinstance(board, RateLimitWatch)
    assert board in admin.gw.plane.reporter.attempts
    return board


def http_date(seconds_from_now: float) -> bytes:
    return formatdate(time.time() + seconds_from_now, usegmt=True).encode()


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        (b"30", 29.0, 30.0),  # delta-seconds
        (b"600", 599.0, 600.0),  # longer than the old fixed 60 s
        (b"86400", 3599.0, 3600.0),  # a day's quota: capped at an hour
        (None, 59.0, 60.0),  # absent: the default
        (b"soon", 59.0, 60.0),  # unreadable: the default
    ],
)
def test_the_hold_is_what_the_header_says(
    admin: Admin, header: bytes | None, low: float, high: float
) -> None:
    board = watch(admin)
    admin.gw.lt.call(lambda: board.attempt_finished("openai.1", 429, None, header))
    limited, left = retry_after(admin)
    assert limited is True and left is not None and low <= left <= high
    assert retry_after(admin, "anthropic.1") == (False, None)


def test_an_http_date_is_a_wall_clock_deadline(admin: Admin) -> None:
    board = watch(admin)
    admin.gw.lt.call(lambda: board.attempt_finished("openai.1", 429, None, http_date(120)))
    limited, left = retry_after(admin)
    # An HTTP-date has whole seconds: the hold is 119-120 s from when it was made.
    assert limited is True and left is not None and 118.0 <= left <= 120.0
    # A date already past means "now": nothing to hold.
    admin.gw.lt.call(lambda: board.attempt_finished("openai.1", 429, None, http_date(-30)))
    assert retry_after(admin) == (False, None)


def test_a_success_still_clears_the_hold(admin: Admin) -> None:
    board = watch(admin)
    admin.gw.lt.call(lambda: board.attempt_finished("openai.1", 429, None, b"900"))
    assert retry_after(admin)[0] is True
    assert httpx.post(admin.gw.url + "/v1/chat/completions", json=CHAT).status_code == 200
    assert retry_after(admin) == (False, None)


def test_a_real_429_with_retry_after_seconds(admin: Admin) -> None:
    r = httpx.post(
        admin.gw.url + "/v1/chat/completions",
        json=CHAT,
        headers={"x-mock-status": "429", "x-mock-retry-after": "600"},
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "600"
    limited, left = retry_after(admin)
    assert limited is True and left is not None and 595.0 <= left <= 600.0


def raw_429(extra: bytes) -> bytes:
    body = b'{"error":{"message":"slow down","type":"rate_limit_error"}}'
    return (
        b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n%bconnection: close\r\n\r\n%b" % (len(body), extra, body)
    )


@pytest.fixture
def raw_gateway(
    gateway_factory: Callable[..., Any], raw_backend: Callable[[bytes], str]
) -> Callable[[bytes], Admin]:
    def make(response: bytes) -> Admin:
        url = raw_backend(response)
        gw = gateway_factory(
            {
                "backends": {"openai.1": {"api_url": url, "api_key": "k", "models": ["gpt-4o"]}},
                "health_check": {"enabled": False},
                "usage_tracking": {"enabled": False},
            }
        )
        return Admin(gw)

    return make


def test_a_real_429_with_an_http_date(raw_gateway: Callable[[bytes], Admin]) -> None:
    admin = raw_gateway(raw_429(b"retry-after: " + http_date(300) + b"\r\n"))
    r = httpx.post(admin.gw.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 429
    limited, left = retry_after(admin)
    assert limited is True and left is not None and 290.0 <= left <= 300.0


def test_a_real_429_without_retry_after_holds_the_default(
    raw_gateway: Callable[[bytes], Admin],
) -> None:
    admin = raw_gateway(raw_429(b""))
    r = httpx.post(admin.gw.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 429 and "retry-after" not in r.headers
    limited, left = retry_after(admin)
    assert limited is True and left is not None and 55.0 <= left <= 60.0
