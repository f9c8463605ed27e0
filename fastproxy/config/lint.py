"""Warnings about a valid config: combinations that start but are unsafe or cannot work
as meant. The loader refuses what can never be right; these are what may be meant but
usually is not, so they warn (``fastproxy check-config`` prints them, ``fastproxy run``
logs them) and never stop start-up.

Each finding is ``(code, message)``: the code is short and stable (for grep and for
tests), the message one line naming the keys and what to do. The process facts a rule
compares against (the file-descriptor limit, the usable cores) are read from this
process unless given, so tests can pass their own.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
from typing import NamedTuple

from .loader import is_loopback_host
from .schema import Config

# Descriptors besides the client and upstream sockets: the two listeners, stdio, the
# usage recorder's socket and its files, the event loop's own (epoll, signal pipe), DNS
# lookups. Admin connections (at most ADMIN_CONNECTIONS) and health probes
# (health_check.max_concurrent_probes) are added on top of this.
BASE_FDS = 64
# The admin listener's own cap on connections (it answers 503 past it).
ADMIN_CONNECTIONS = 256


class Finding(NamedTuple):
    code: str
    message: str


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), which is what
    worker processes would share, not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def nofile_limits() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE; ``resource.RLIM_INFINITY`` when unlimited."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def fds_needed(config: Config) -> int:
    """About how many descriptors a full gateway holds at once.

    A client connection holds at most one upstream connection at a time (a pool only
    grows when all of its connections are busy), so the upstream side needs at most as
    many as there are clients, fewer when the backends' pools are capped lower. With no
    backend configured the demo backend runs in this process, and each upstream
    connection has its server end here too. Idle pooled connections to a backend the
    traffic has left linger for its ``pool_idle_timeout_s`` on top of this."""
    clients = config.limits.max_connections
    if config.backends:
        caps = sum(b.max_connections or clients for b in config.backends.values())
        upstream = min(caps, clients)
    else:
        upstream = 2 * clients  # the client end and the demo server's end
    return clients + upstream + _fixed_fds(config)


def _fixed_fds(config: Config) -> int:
    return ADMIN_CONNECTIONS + config.health_check.max_concurrent_probes + BASE_FDS


def lint(
    config: Config,
    *,
    nofile: tuple[int, int] | None = None,
    cores: int | None = None,
) -> list[Finding]:
    """Every finding for ``config``, in a fixed order; empty when nothing is off."""
    out: list[Finding] = []
    _data_port(config, out)
    _admin_listener(config, out)
    _allow_everyone(config, out)
    _backend_pools(config, out)
    _file_descriptors(config, nofile_limits() if nofile is None else nofile, out)
    _workers(config, usable_cores() if cores is None else cores, out)
    return out


def log_findings(config: Config, log: logging.Logger) -> None:
    """One WARNING line per finding (``fastproxy run`` calls this at start-up)."""
    for code, message in lint(config):
        log.warning("config warning: %s", message, extra={"kv": {"code": code}})


def _data_port(config: Config, out: list[Finding]) -> None:
    # The loader refuses this combination; a Config built in code (an embedder, a test)
    # does not pass through the loader, so the warning still names it.
    if is_loopback_host(config.host):
        return
    if config.auth.disable_auth:
        why = "auth.disable_auth is true"
    elif not config.auth.api_keys:
        why = "auth.api_keys is empty"
    else:
        return
    out.append(
        Finding(
            "open-data-port",
            f"host {config.host!r} is not loopback and {why}: anyone who reaches port "
            f"{config.port} can send requests on your backend keys; set auth.api_keys "
            "(or FASTPROXY_API_KEYS), or bind host to 127.0.0.1",
        )
    )


def _admin_listener(config: Config, out: list[Finding]) -> None:
    admin = config.admin
    if not admin.enabled or is_loopback_host(admin.host):
        return
    if admin.allow_networks or admin.api_keys:
        return
    out.append(
        Finding(
            "open-admin-listener",
            f"admin.host {admin.host!r} is not loopback, but admin.allow_networks and "
            "admin.api_keys are empty: only loopback peers are admitted, so remote peers "
            "can reach the listener and only ever get refused; bind admin.host to "
            "127.0.0.1, or list the networks that may read it in admin.allow_networks",
        )
    )


def _allow_everyone(config: Config, out: list[Finding]) -> None:
    for i, text in enumerate(config.admin.allow_networks):
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue  # the loader reports it
        if net.prefixlen == 0:
            out.append(
                Finding(
                    "allow-every-address",
                    f"admin.allow_networks[{i}] {text!r} admits every address: anyone "
                    "who reaches either port reads /metrics, /internal/health and the "
                    "usage records; list the networks of your scrapers instead",
                )
            )


def _backend_pools(config: Config, out: list[Finding]) -> None:
    clients = config.limits.max_connections
    for name, backend in config.backends.items():
        cap = backend.max_connections
        if cap is not None and cap > clients:
            out.append(
                Finding(
                    "pool-above-max-connections",
                    f"backends.{name}.max_connections {cap} is above "
                    f"limits.max_connections {clients}: a pool only grows while each of "
                    f"its connections serves a client, so it never passes {clients}; "
                    "lower it or raise limits.max_connections",
                )
            )


def _file_descriptors(config: Config, nofile: tuple[int, int], out: list[Finding]) -> None:
    soft, hard = nofile
    if soft == resource.RLIM_INFINITY:
        return
    needed = fds_needed(config)
    if needed <= soft:
        return
    clients = config.limits.max_connections
    spare = _fixed_fds(config)
    # Connections scale the variable part linearly: this many fit under the limit.
    reachable = max(0, (soft - spare) * clients // (needed - spare))
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    out.append(
        Finding(
            "fd-limit",
            f"limits.max_connections {clients} can need about "
            f"{needed} open files (each client connection can hold an upstream one"
            f"{' and the demo backend end of it' if not config.backends else ''}, plus "
            f"{spare} for listeners, admin connections, health probes and files), but "
            f"this process may open {soft} (soft RLIMIT_NOFILE; hard {shown_hard}): "
            f"past about {reachable} connections, accepting and connecting fail with "
            "'Too many open files'; raise the limit (LimitNOFILE= in the systemd unit, "
            "ulimit -n in a shell) or lower limits.max_connections",
        )
    )


def _workers(config: Config, cores: int, out: list[Finding]) -> None:
    if config.workers <= cores:
        return
    out.append(
        Finding(
            "workers-above-cores",
            f"workers {config.workers} is more than the {cores} CPUs this process may run "
            "on (its affinity mask): the extra processes only take turns on the same "
            f"cores; set workers to {cores} or fewer",
        )
    )
