"""The systemd unit for this install, as `fastproxy service unit` prints it.

One template, here: scripts/fastproxy.service is its output for an install in
/opt/fastproxy/.venv, and a test keeps the two equal. This module only renders text; the
command line (cli.py) reads the config and the gateway's stop timings and passes them in.
"""

from __future__ import annotations

import math

DEFAULT_CONFIG_PATH = "/etc/fastproxy/config.yaml"
ENV_FILE = "/etc/fastproxy/env"
# The unit never asks for fewer descriptors than this, whatever the config needs: the
# default soft limit (1024) is what a unit without LimitNOFILE= gets, and a config
# edited later without making the unit again should still find room.
MIN_NOFILE = 65536
WATCHDOG_SEC = 30


def exec_arg(arg: str, *, executable: bool = False) -> str:
    """One ExecStart= argument as systemd reads it back. ``%`` starts a specifier
    everywhere, so it is doubled. ``$`` starts a variable in the arguments, where it is
    doubled too, but not in the executable's path, which systemd takes as written.
    Whitespace, quotes, backslashes and ``;`` (a command separator) need double quotes,
    inside which ``"`` and ``\\`` are escaped."""
    text = arg.replace("%", "%%")
    if not executable:
        text = text.replace("$", "$$")
    if text and not any(c.isspace() or c in "\"'\\;" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(
    *,
    python: str,
    config_path: str,
    drain_seconds: float,
    drain_origin: str,
    stop_after_drain_seconds: float,
    fds_needed: int,
    cap_net_raw: bool,
) -> str:
    """The systemd unit for the install whose interpreter is ``python``.

    ``drain_origin`` says where ``drain_seconds`` came from (shown in a comment);
    ``stop_after_drain_seconds`` is what a stop needs after the drain (cut requests
    unwinding, the usage recorder writing its queue); ``fds_needed`` the descriptors a
    full gateway needs by its config (LimitNOFILE= is that, or MIN_NOFILE if more)."""
    exec_start = " ".join(
        [
            exec_arg(python, executable=True),
            *(exec_arg(a) for a in ("-m", "fastproxy", "run", "--config", config_path)),
        ]
    )
    nofile = max(MIN_NOFILE, fds_needed)
    stop_seconds = math.ceil(drain_seconds + stop_after_drain_seconds)
    if cap_net_raw:
        caps = (
            "# ICMP health pings over raw sockets (--cap-net-raw): for hosts whose\n"
            "# net.ipv4.ping_group_range leaves out this service's dynamic group.\n"
            "AmbientCapabilities=CAP_NET_RAW\n"
            "CapabilityBoundingSet=CAP_NET_RAW\n"
        )
    else:
        caps = (
            "# No capabilities. ICMP health pings use unprivileged ICMP sockets, which\n"
            "# work when net.ipv4.ping_group_range includes this service's dynamic group\n"
            "# (the sysctl defaults systemd ships open it to every group). Where it does not\n"
            '# (`sysctl net.ipv4.ping_group_range` prints "1 0"), ping reports\n'
            "# unavailable and the HTTP probe decides alone; to ping anyway, make this\n"
            "# unit again with `fastproxy service unit --cap-net-raw`.\n"
            "CapabilityBoundingSet=\n"
        )
    return f"""\
# fastproxy as a systemd service, made by `fastproxy service unit` for the install
# whose Python is {python}.
# Make it again after moving that install, or after changing timeouts.drain_seconds or
# limits.max_connections in the config (TimeoutStopSec= and LimitNOFILE= follow them):
#   fastproxy service unit > /etc/systemd/system/fastproxy.service
#   systemctl daemon-reload && systemctl enable --now fastproxy
[Unit]
Description=fastproxy LLM gateway
# No Documentation=: systemd takes only man:, info:, file: and http(s): addresses there,
# and an installed fastproxy puts no man page or document on disk to point at.
# `fastproxy --help` is on every install; docs/OPERATIONS.md is in the source tree.
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
# READY=1 once both listeners are bound, WATCHDOG=1 from the event loop every
# WatchdogSec/2, STOPPING=1 when a drain begins. Only the main process notifies (the
# usage recorder is a child process and never does).
NotifyAccess=main
WatchdogSec={WATCHDOG_SEC}
ExecStart={exec_start}
# systemctl reload: SIGHUP makes the gateway re-read its config file and apply backends,
# routing, health checks, limits, timeouts and client keys without dropping a request
# (docs/configuration.md, "Reload"). Type=notify-reload (systemd 253+) would send it
# itself; Type=notify and this line work on older systemd too.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# Exit status 2 is a config error: restarting cannot fix it.
RestartPreventExitStatus=2
# A stop drains in-flight requests for timeouts.drain_seconds, then needs up to
# {stop_after_drain_seconds:g} s more: cut requests unwind and the usage recorder writes what it
# holds. A SIGKILL before that loses usage records.
# timeouts.drain_seconds: {drain_seconds:g} s,
# {drain_origin}
TimeoutStopSec={stop_seconds}
# Secrets (FASTPROXY_API_KEYS, FASTPROXY_ADMIN_API_KEYS, the variables the backends name
# in api_key_env) as VAR=value lines. systemd reads the file as root before dropping
# privileges, so it can be root-only (0600). "-": it may be absent.
EnvironmentFile=-{ENV_FILE}
# The usage database (usage_tracking.persistence_path, default ./var/usage.db) lands in
# /var/lib/fastproxy: systemd sets $STATE_DIRECTORY and fastproxy maps ./var/ onto it.
# Other relative paths would resolve against /, which is read-only here.
StateDirectory=fastproxy
# A user made for the service at each start: nothing else runs as it. The config file
# must be readable by it (mode 0644); keep the secrets in the environment file above.
DynamicUser=yes
# Descriptors: a client connection can hold an upstream one too, so this config needs
# about {fds_needed} at its limits.max_connections (never set below {MIN_NOFILE} here).
LimitNOFILE={nofile}
# Hardening: the gateway needs its sockets and its state directory, nothing else.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
UMask=0077
# AF_UNIX: the notify socket and the link to the usage recorder. AF_INET and AF_INET6:
# clients, backends and ICMP pings (datagram and raw ICMP sockets are in these
# families too).
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
{caps}
[Install]
WantedBy=multi-user.target
"""
