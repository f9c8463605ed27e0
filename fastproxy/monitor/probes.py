"""The two probes of an endpoint: ICMP echo (icmplib's async API) and an HTTP request.

Rules, and why:

- **Ping is evidence, never a verdict.** ICMP is blocked by many networks and cloud
  providers while HTTPS works fine (the reference project marked such endpoints dead).
  A ping result is reported; the health service lets it degrade an
  endpoint only together with a failing HTTP probe.
- **Socket privileges are found out, not assumed.** Unprivileged ICMP sockets
  (``SOCK_DGRAM``, allowed by ``net.ipv4.ping_group_range``) are tried first; then raw
  sockets (root or CAP_NET_RAW); if neither is permitted, ping is "unavailable", said
  once in the log with the reason, and the HTTP probe carries the verdict alone. The
  mode is remembered per address family, so the cost of finding out is paid once.
- **No thread pool.** ``icmplib.async_ping`` waits on the socket through the event loop;
  host names are resolved with ``loop.getaddrinfo`` (itself asynchronous), and a failed
  lookup is a probe failure whose reason says so.
- **The HTTP probe is the gateway's own client.** It is one ``httpclient.fetch`` of the
  backend (its pool and connection classes, the backend's TLS context and credentials),
  so it fails for the same reasons live traffic would (a wrong CA bundle, an expired
  key). It opens a fresh connection each time (a pooled one would hide connect and TLS
  failures), sends ``connection: close`` and never a completion request: a probe costs
  no tokens.
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
from ..httpclient.fetch import fetch

log = logging.getLogger("fastproxy.monitor")

MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is treated as an hour
USER_AGENT = b"fastproxy-health"
ACCEPT_JSON = b"accept: application/json\r\n"

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


def probe_target(backend: Backend, path: str) -> bytes:
    """The probe path under the api_url's path: ``/models`` → ``/v1/models``.

    Joined, not `Backend.upstream_path`: the probe path is configured relative to
    api_url, so a leading ``/v1/`` of its own is not the client API prefix to replace."""
    return backend.base_path + (path if path.startswith("/") else "/" + path).encode()


async def http_probe(
    backend: Backend, loop: asyncio.AbstractEventLoop, method: str, path: str, timeout_s: float
) -> HttpResult:
    """One request to the probe path on a fresh connection; never raises."""
    started = time.monotonic()
    try:
        # need_body=False: the status decides; the body is read only so the server sees
        # a complete exchange, within what is left of the same budget.
        resp = await fetch(
            backend,
            method.encode(),
            probe_target(backend, path),
            timeout_s=timeout_s,
            loop=loop,
            extra=ACCEPT_JSON,
            user_agent=USER_AGENT,
            need_body=False,
        )
    except UpstreamError as exc:
        # The kind first ("timeout: no answer within 10s", "connect: cannot connect to
        # ..."): this is the endpoint's http_error and the reason of its transitions.
        return HttpResult(FAILING, error=f"{exc.kind}: {exc}")
    latency = (resp.head_at - started) * 1000.0
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
