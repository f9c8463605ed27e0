"""The usage database as a file: its identity, setting a bad one aside, error kinds.

A file is never deleted here: a bad or orphaned one is renamed with a UTC time stamp
beside the original, so an operator can still recover from it (``.recover`` in the
sqlite3 shell).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

_SIDE_FILES = ("-wal", "-shm")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode), or None when there is no file: a change means it was replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def set_aside(path: Path, label: str) -> Path:
    """Rename the database to ``<name>.<label>-<UTC time>``, its -wal/-shm along with
    it (they belong to it). Returns the new path; OSError if the rename fails."""
    target = path.with_name(f"{path.name}.{label}-{_stamp()}")
    path.rename(target)
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(Path(f"{target}{suffix}"))
    return target


def set_aside_logs(path: Path, label: str) -> str:
    """Rename the -wal/-shm left by a database file that is gone; the -wal's new name
    ('' when there was none)."""
    stamp, moved = _stamp(), ""
    for suffix in _SIDE_FILES:
        side = Path(f"{path}{suffix}")
        target = Path(f"{path}{suffix}.{label}-{stamp}")
        try:
            side.rename(target)
        except OSError:
            continue  # not there (or not ours to move): nothing to replay
        if suffix == "-wal":
            moved = str(target)
    return moved


def is_corrupt(exc: BaseException) -> bool:
    """The file is not a database (garbage, a clobbered header) or is damaged."""
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def error_kind(exc: BaseException, default: str) -> str:
    """The kind an error is counted and logged (once) under."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "locked"
    if "full" in text:
        return "disk_full"
    if "readonly" in text or "read-only" in text:
        return "read_only"
    if "unable to open" in text:
        return "open"
    return default
