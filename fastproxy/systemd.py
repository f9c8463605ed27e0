"""sd_notify without libsystemd: READY, WATCHDOG and STOPPING over $NOTIFY_SOCKET.

A datagram to a unix socket is all the protocol is; pulling a C library in for it is not
worth a dependency. With no $NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    __slots__ = ("_addr", "watchdog_interval")

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET") or None
        if addr and addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._addr = addr
        usec = env.get("WATCHDOG_USEC")
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, message: str) -> None:
        if self._addr is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never wait: this runs on the event loop, and a receiver that stopped
                # reading (its queue holds net.unix.max_dgram_qlen datagrams, 10 by
                # default) would otherwise block the gateway in sendto. A ping that does
                # not fit is dropped; the next one follows within half the interval.
                sock.sendto(message.encode(), socket.MSG_DONTWAIT, self._addr)
        except OSError:
            pass  # systemd gone, socket unwritable or full: nothing useful to do

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        """A reload began; READY=1 follows when it is done (or refused). The monotonic
        timestamp is what systemd's Type=notify-reload matches the reload by."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
