"""The PostgreSQL server of the ``fastproxy+usage-pg`` variant (scenario d): Debian's
binaries, a throwaway cluster in the harness's work directory on 127.0.0.1 and a free
port, pinned like the backends (the helper core, where the usage recorder runs too), a
fresh database for each gateway started, stopped at the end of the run.

Durability is set to match the SQLite store's (WAL with ``synchronous=NORMAL``: a power
cut may lose the last commits, never corrupt the file): ``synchronous_commit=off``, with
fsync on, so the two variants pay for the same guarantee.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path

from .processes import _children, taskset_prefix


class PgCluster:
    def __init__(self, workdir: Path, cpus: tuple[int, ...] | None) -> None:
        found = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
        )
        if not found:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bin = Path(found[-1]).parent
        self.root = workdir / "postgresql"
        self.root.mkdir()
        self._as_root = os.geteuid() == 0
        if self._as_root:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._dbs = 0
        data = str(self.root / "data")
        self._run("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c synchronous_commit=off -c shared_buffers=128MB"
        )
        self._run(
            "pg_ctl", "-D", data, "-o", opts, "-l", str(self.root / "log"), "-w", "start",
            prefix=taskset_prefix(cpus),
        )  # fmt: skip

    def _run(self, tool: str, *args: str, prefix: list[str] | None = None) -> str:
        cmd = [*(prefix or []), str(self.bin / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if out.returncode:
            raise RuntimeError(f"{tool} failed: {out.stderr[-500:]}")
        return out.stdout

    def new_db(self) -> str:
        """A fresh database for one gateway; its DSN."""
        self._dbs += 1
        name = f"bench{self._dbs}"
        self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-qAt",
            "-c", f"CREATE DATABASE {name}",
        )  # fmt: skip
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def rows(self, dsn: str) -> int:
        out = self._run("psql", dsn, "-qAt", "-c", "SELECT count(*) FROM usage_requests")
        return int(out.strip() or 0)

    def pids(self) -> list[int]:
        """The server's processes now: the postmaster and its children (a backend per
        connection, the writers, autovacuum)."""
        try:
            head = (self.root / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return []
        pid = int(head)
        return [pid, *_children(pid)]

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass
