"""The two probes of an endpoint: ICMP echo (icmplib's async API) and an HTTP request.

Rules, and why:

- **Ping is evidence, never a verdict.** ICMP is blocked by many networks and cloud
  providers while HTTPS works fine (the reference project marked such endpoints dead:
  defect §12.6). A ping result is reported; the health service lets it degrade an
  endpoint only together with a failing HTTP probe.
- **Socket privileges are found out, not assumed.** Unprivileged ICMP sockets
  (``SOCK_DGRAM``, allowed by ``net.ipv4.ping_group_range``) are tried first; then raw
  sockets (root or CAP_NET_RAW); if neither is permitted, ping is "unavailable", said
  once in the log with the reason, and the HTTP probe carries the verdict alone. The
  mode is remembered per address family, so the cost of finding out is paid once.
- **No thread pool.** ``icmplib.async_ping`` waits on the socket through the event loop;
  host names are resolved with ``loop.getaddrinfo`` (itself asynchronous), and a failed
  lookup is a probe failure whose reason says so.
- **The HTTP probe is the gateway's own client.** It goes through ``UpstreamPool`` and
  ``UpstreamConnection`` with the backend's TLS context and credentials, so it fails for
  the same reasons live traffic would (a wrong CA bundle, an expired key). It opens a
  fresh connection each time (a pooled one would hide connect and TLS failures), sends
  ``connection: close`` and never a completion request: a probe costs no tokens.
- **Status classes.** 2xx is ok. 401/403 is "misconfigured": the endpoint is up and
  answering, our credentials are wrong; an outage would be the wrong diagnosis and
  opening the breaker would not help. Other 3xx/4xx are "misconfigured" too (a probe
  path or api_url that does not exist is our configuration's fault, not the
  endpoint's). 429 is "rate_limited": reachable, and its Retry-After is honoured by the
  scheduler. 5xx, timeouts, connect, reset, protocol and TLS errors are failures.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from email.utils import parsedate_to_datetime

import icmplib

from ..core.errors import UpstreamError
from ..httpclient.backend import Backend
from ..httpclient.pool import UpstreamPool
from ..httpclient.response import UpstreamResponse

log = logging.getLogger("fastproxy.monitor")

MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is treated as an hour
USER_AGENT = b"user-agent: fastproxy-health\r\n"

# HTTP status classes (the probe's verdict on one answer).
OK = "ok"
MISCONFIGURED = "misconfigured"
RATE_LIMITED = "rate_limited"
FAILING = "failing"


class PingResult:
    __slots__ = ("error", "latency_ms", "ok", "unavailable")

    def __init__(
        self,
        ok: bool,
        latency_ms: float | None = None,
        error: str | None = None,
        unavailable: bool = False,
    ) -> None:
        self.ok = ok
        self.latency_ms = latency_ms
        self.error = error
        self.unavailable = unavailable


class HttpResult:
    __slots__ = ("error", "kind", "latency_ms", "retry_after", "status")

    def __init__(
        self,
        kind: str,
        status: int = 0,
        latency_ms: float | None = None,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.latency_ms = latency_ms
        self.error = error
        self.retry_after = retry_after

    @property
    def counts_as_success(self) -> bool:
        """The endpoint answered as a live HTTP server (the health verdict's view)."""
        return self.kind != FAILING


class Pinger:
    """ICMP echo with the least privilege that works, found out on first use."""

    __slots__ = ("_loop", "_mode", "unavailable_reason")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # family -> "unprivileged" | "privileged" | "unavailable"; absent = not tried yet
        self._mode: dict[int, str] = {}
        self.unavailable_reason: str | None = None

    def mode(self, family: int = socket.AF_INET) -> str | None:
        return self._mode.get(family)

    async def ping(self, host: str, timeout_s: float) -> PingResult:
        try:
            async with asyncio.timeout(timeout_s):
                address, family = await self._resolve(host)
        except TimeoutError:
            return PingResult(False, error=f"DNS lookup of {host} timed out")
        except OSError as exc:
            return PingResult(
                False, error=f"DNS lookup of {host} failed: {getattr(exc, 'strerror', None) or exc}"
            )
        mode = self._mode.get(family)
        if mode == "unavailable":
            return PingResult(False, error=self.unavailable_reason, unavailable=True)
        candidates = [mode == "privileged"] if mode else [False, True]
        for privileged in candidates:
            try:
                host_result = await icmplib.async_ping(
                    address, count=1, timeout=timeout_s, privileged=privileged
                )
            except icmplib.SocketPermissionError:
                continue
            except icmplib.ICMPLibError as exc:
                return PingResult(False, error=f"ICMP error: {exc}")
            except OSError as exc:  # e.g. ENETUNREACH while sending
                return PingResult(False, error=f"ICMP send failed: {exc.strerror or exc}")
            self._mode[family] = "privileged" if privileged else "unprivileged"
            if host_result.is_alive:
                return PingResult(True, latency_ms=round(host_result.avg_rtt, 3))
            return PingResult(False, error=f"no echo reply from {address} within {timeout_s:g}s")
        return self._mark_unavailable(family)

    def _mark_unavailable(self, family: int) -> PingResult:
        if self._mode.get(family) != "unavailable":
            self._mode[family] = "unavailable"
            self.unavailable_reason = (
                "ICMP not permitted: unprivileged ICMP sockets are refused "
                "(net.ipv4.ping_group_range does not include this process's group) and raw "
                "sockets need root or CAP_NET_RAW; the HTTP probe decides health alone"
            )
            log.warning("ping unavailable: %s", self.unavailable_reason)
        return PingResult(False, error=self.unavailable_reason, unavailable=True)

    async def _resolve(self, host: str) -> tuple[str, int]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos = await self._loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(f"no address for {host}") from None
            family, _, _, _, sockaddr = infos[0]
            return str(sockaddr[0]), int(family)
        return str(ip), socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def classify_status(status: int) -> str:
    if 200 <= status < 300:
        return OK
    if status == 429:
        return RATE_LIMITED
    if status >= 500:
        return FAILING
    return MISCONFIGURED  # 1xx/3xx/4xx: up, but our credentials or probe path are wrong


def parse_retry_after(value: bytes | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now_wall
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def probe_request(backend: Backend, method: str, path: str) -> bytes:
    target = backend.base_path + (path if path.startswith("/") else "/" + path).encode()
    version = (
        b"anthropic-version: " + backend.config.anthropic_version.encode() + b"\r\n"
        if backend.type == "anthropic"
        else b""
    )
    return (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nhost: "
        + backend.host_header
        + b"\r\naccept: application/json\r\naccept-encoding: identity\r\n"
        + USER_AGENT
        + backend.auth_headers
        + version
        + b"connection: close\r\n\r\n"
    )


async def http_probe(
    backend: Backend, loop: asyncio.AbstractEventLoop, method: str, path: str, timeout_s: float
) -> HttpResult:
    """One request to the probe path on a fresh connection; never raises."""
    pool = UpstreamPool(backend, loop)
    started = time.monotonic()
    try:
        try:
            async with asyncio.timeout(timeout_s):
                conn, _ = await pool.acquire(timeout_s)
                resp = UpstreamResponse(loop)
                conn.send(probe_request(backend, method, path), b"", resp)
                await resp.head
        except TimeoutError:
            return HttpResult(FAILING, error=f"timeout: no answer within {timeout_s:g}s")
        except UpstreamError as exc:
            return HttpResult(FAILING, error=f"{exc.kind}: {exc}")
        except OSError as exc:
            return HttpResult(FAILING, error=f"connect: {exc.strerror or exc}")
        latency = (time.monotonic() - started) * 1000.0
        if method != "HEAD" and not resp.done.done():
            # The status decides; the body is read only so the server sees a complete
            # exchange, within what is left of the same budget.
            remaining = timeout_s - (time.monotonic() - started)
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    await resp.done
            except (TimeoutError, UpstreamError):
                pass
    finally:
        pool.close()
    status = resp.status
    kind = classify_status(status)
    error = None
    retry_after = None
    if kind == RATE_LIMITED:
        retry_after = parse_retry_after(resp.header(b"retry-after"), time.time())
        error = f"HTTP 429: rate limited (Retry-After: {retry_after if retry_after is not None else 'none'})"
    elif kind == MISCONFIGURED:
        why = (
            "credentials rejected"
            if status in (401, 403)
            else "the probe path or api_url looks wrong"
        )
        error = f"HTTP {status}: {why}"
    elif kind == FAILING:
        error = f"HTTP {status}"
    return HttpResult(kind, status, round(latency, 3), error, retry_after)
