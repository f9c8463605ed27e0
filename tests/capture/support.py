"""Reading capture files back, as a consumer of the format would: cbor2 and zlib only."""

from __future__ import annotations

import io
import socket
import zlib
from pathlib import Path
from typing import Any

import cbor2

MAGIC = "LLMPROXY-CAPTURE-V2"


def read_file(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, events) of one file; a trailing partial item (being written) is left out."""
    raw = path.read_bytes()
    stream = io.BytesIO(raw)
    items: list[dict[str, Any]] = []
    while stream.tell() < len(raw):
        try:
            items.append(cbor2.load(stream))
        except (cbor2.CBORDecodeError, EOFError):
            break
    assert items, f"{path} has no header"
    header, events = items[0], items[1:]
    assert header["magic"] == MAGIC and header["version"] == 2, header
    assert {"created_at", "session_id", "metadata"} <= set(header)
    return header, events


def data_of(event: dict[str, Any]) -> bytes:
    data = event["data"]
    if event.get("enc") == "zlib":
        return zlib.decompress(data)
    assert "enc" not in event
    return bytes(data)


def capture_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("capture-*.cbor")) if directory.exists() else []


def all_events(directory: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in capture_files(directory):
        out.extend(read_file(path)[1])
    return out


def exchange(directory: Path, rid: int) -> list[dict[str, Any]]:
    return [e for e in all_events(directory) if e.get("meta", {}).get("rid") == rid]


def stream_ended(directory: Path) -> list[dict[str, Any]] | None:
    """The events of the first exchange whose stream-end marker is written, else None."""
    events = all_events(directory)
    for e in events:
        if e.get("meta", {}).get("se"):
            rid = e["meta"]["rid"]
            return [x for x in events if x.get("meta", {}).get("rid") == rid]
    return None


def abort_a_stream(port: int, body: bytes, client_key: str) -> None:
    """Start a long, paced stream (1,000 events 20 ms apart) on a raw socket, read until
    the first event arrives, then hang up: a client abort mid-stream."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {client_key}\r\n".encode()
        + b"x-mock-tokens: 1000\r\nx-mock-interval-ms: 20\r\n"
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )
    assert b"data: " in sock.recv(65536) or b"data: " in sock.recv(65536)
    sock.close()
