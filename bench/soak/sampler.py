"""Once a second, what the gateway process holds, read from outside it.

- RSS: ``VmRSS`` of /proc/PID/status (and ``VmHWM``, the peak).
- fds: the entries of /proc/PID/fd.
- TCP sockets by state: the socket inodes among those fds, looked up in the process's
  own /proc/PID/net/tcp and tcp6. A socket in TIME_WAIT belongs to no process (its
  inode is 0), so it is not the gateway's to hold and is not counted. Sockets that are
  not TCP (the health pinger's ICMP socket, the systemd notify socket) count as ``other``.
  The probe's own kept-alive connection to the admin listener is left out of the TCP
  counts (its fd stays in the fd count, the same in every sample).
- event-loop lag: the round trip of ``GET /internal/health`` on the admin listener over
  one kept-alive connection. The admin listener runs on the gateway's one event loop, so
  the time is how long a ready callback waits for the loop, plus the handler's own cost
  (the idle round trip, printed before the load, is that floor). The probe runs in a
  thread of the benchmark process, beside the load generator: its figure also includes
  up to one GIL switch interval of this process, set to 1 ms while sampling.

Nothing here runs inside the gateway, so measuring costs it only the probe's request.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
    "0C": "NEW_SYN_RECV",
}
SHORT = {
    "ESTABLISHED": "EST",
    "SYN_SENT": "SS",
    "SYN_RECV": "SR",
    "FIN_WAIT1": "FW1",
    "FIN_WAIT2": "FW2",
    "TIME_WAIT": "TW",
    "CLOSE": "CL",
    "CLOSE_WAIT": "CW",
    "LAST_ACK": "LA",
    "LISTEN": "LST",
    "CLOSING": "CLG",
    "NEW_SYN_RECV": "NSR",
}
PROBE_TIMEOUT_S = 5.0
GIL_SWITCH_S = 0.001
_OUT = threading.Lock()


def emit(text: str) -> None:
    """One whole line to stdout: the sampler thread and the main thread both print."""
    with _OUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fd_table(pid: int) -> tuple[int, set[int]] | None:
    """(number of open fds, inodes of the socket fds), None once the process is gone."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return None
    inodes: set[int] = set()
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed between the listing and the read
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return len(names), inodes


def tcp_states(
    pid: int, inodes: set[int], skip_peer_port: int | None = None
) -> tuple[dict[str, int], int]:
    """Counts by TCP state of the given socket inodes, and how many were not TCP; a
    socket whose remote port is ``skip_peer_port`` (the probe's) is not counted."""
    counts: Counter[str] = Counter()
    found = skipped = 0
    skip = b":%04X" % skip_peer_port if skip_peer_port is not None else None
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", "rb") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            inode = int(parts[9])
            if inode in inodes:
                if skip is not None and parts[2].endswith(skip):
                    skipped += 1
                    continue
                counts[TCP_STATES.get(parts[3].decode(), parts[3].decode())] += 1
                found += 1
    return dict(sorted(counts.items())), len(inodes) - found - skipped


class HealthProbe:
    """``GET /internal/health`` on one kept-alive connection; times only the exchange."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._sock: socket.socket | None = None
        self._request = (
            b"GET /internal/health HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"user-agent: fastproxy-soak\r\n\r\n"
        )

    @property
    def local_port(self) -> int | None:
        """The port of the probe's end of its connection, None while not connected."""
        try:
            return int(self._sock.getsockname()[1]) if self._sock is not None else None
        except OSError:
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def probe(self) -> tuple[float | None, dict[str, Any] | None]:
        """(round trip in ms, the health document); (None, None) when it failed."""
        try:
            if self._sock is None:
                self._sock = socket.create_connection(("127.0.0.1", self._port), PROBE_TIMEOUT_S)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            self._sock.sendall(self._request)
            body, keep = self._read_response(self._sock)
            ms = (time.perf_counter() - start) * 1000.0
        except (OSError, ValueError):
            self.close()
            return None, None
        if not keep:
            self.close()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        return ms, doc if isinstance(doc, dict) else None

    @staticmethod
    def _read_response(sock: socket.socket) -> tuple[bytes, bool]:
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ValueError("admin listener closed the connection")
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = None
        keep = True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if length is None:
            raise ValueError("health answer without content-length")
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                raise ValueError("health answer cut short")
            rest += data
        return rest[:length], keep


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    phase: str
    rss_kib: int | None
    hwm_kib: int | None
    fds: int | None
    tcp: dict[str, int]
    other_sockets: int
    probe_ms: float | None
    usage_queue: int | None
    usage_dropped: int | None
    client: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        tcp = " ".join(f"{SHORT.get(k, k)}={v}" for k, v in self.tcp.items()) or "-"
        rss = f"{self.rss_kib / 1024:.1f}M" if self.rss_kib is not None else "gone"
        lag = f"{self.probe_ms:.1f}ms" if self.probe_ms is not None else "FAIL"
        c = self.client
        prog = f"{c.get('done', 0)}/{c.get('total', 0)} open {c.get('open', 0)}" if c else "-"
        return (
            f"[{self.phase:<9} {self.t:6.1f}s] streams {prog} | rss {rss} "
            f"fds {self.fds} tcp {tcp} other {self.other_sockets} | "
            f"lag {lag} usageq {self.usage_queue}"
        )


def take_sample(
    pid: int, probe: HealthProbe, t: float, phase: str, client: dict[str, int]
) -> Sample:
    ms, doc = probe.probe()
    table = fd_table(pid)
    fds, inodes = table if table is not None else (None, set())
    tcp, other = tcp_states(pid, inodes, probe.local_port) if inodes else ({}, 0)
    storage = (doc or {}).get("storage") or {}
    return Sample(
        t=round(t, 3),
        phase=phase,
        rss_kib=status_kib(pid, "VmRSS:"),
        hwm_kib=status_kib(pid, "VmHWM:"),
        fds=fds,
        tcp=tcp,
        other_sockets=other,
        probe_ms=None if ms is None else round(ms, 3),
        usage_queue=storage.get("queue_depth"),
        usage_dropped=storage.get("dropped_records"),
        client=client,
    )


class Sampler(threading.Thread):
    """Samples every ``interval`` seconds until stopped; prints one line per sample."""

    def __init__(
        self,
        pid: int,
        admin_port: int,
        client: Callable[[], dict[str, int]],
        interval: float = 1.0,
        quiet: bool = False,
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.phase = "start"
        self.samples: list[Sample] = []
        self._client = client
        self._probe = HealthProbe(admin_port)
        self._stop_event = threading.Event()
        self._new = threading.Condition()
        self._quiet = quiet
        self._t0 = time.monotonic()

    def run(self) -> None:
        old = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_S)
        try:
            next_at = time.monotonic()
            while not self._stop_event.is_set():
                s = take_sample(
                    self.pid, self._probe, time.monotonic() - self._t0, self.phase, self._client()
                )
                with self._new:
                    self.samples.append(s)
                    self._new.notify_all()
                if not self._quiet:
                    emit(s.line())
                next_at = max(next_at + self.interval, time.monotonic())
                self._stop_event.wait(next_at - time.monotonic())
        finally:
            self._probe.close()
            sys.setswitchinterval(old)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(PROBE_TIMEOUT_S * 2)

    def next_sample(self, timeout_s: float) -> Sample | None:
        """The next sample taken after this call, None if none came in ``timeout_s``."""
        with self._new:
            seen = len(self.samples)
            self._new.wait_for(lambda: len(self.samples) > seen, timeout_s)
            return self.samples[-1] if len(self.samples) > seen else None
