"""A throwaway PostgreSQL server for the tests: Debian's binaries, a cluster in a temp
dir, on 127.0.0.1 and a free port, gone at the end.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user
the package creates (``runuser``). scripts/test.sh installs the package on a fresh
machine; a machine without it fails these tests rather than skipping them.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fastproxy.storage.pg_store import PgUsageStore

# A DSN carries a password in real deployments; the tests' has one too (trust auth
# ignores it) so they can check that it is never printed or logged.
PASSWORD = "pg-secret-do-not-print"


def pg_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): the usage "
            "store tests need it; scripts/test.sh installs Debian's postgresql package"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="fastproxy-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._n = 0
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr[-2000:]}")

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def new_db(self) -> str:
        """A fresh, empty database; its DSN."""
        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def query(self, dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute(sql, args or None).fetchall()  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway server for a test directory (a conftest imports this fixture)."""
    server = PgServer()
    try:
        yield server
    finally:
        server.close()


def pg_usage_store(
    dsn: str, spool_dir: Path, *, max_queue: int = 100, spool_max_bytes: int = 1 << 20
) -> PgUsageStore:
    """A PostgreSQL usage store as the tests run it: quick flushes, nothing pruned."""
    return PgUsageStore(
        dsn,
        spool_dir=spool_dir,
        spool_max_bytes=spool_max_bytes,
        flush_interval=0.05,
        max_queue=max_queue,
        retention_days=0,
    )
