"""Timestamps in /v1/diagnostics serve both kinds of client.

Scripts written against the seed document do arithmetic on ``timestamp`` and
``started_at`` as epoch-second floats (``time.time() - started_at``); fastproxy's own
clients read ISO-8601. The seed's names carry the seed's floats, and every timestamp of
the payload has an ``_iso`` twin with the same instant. A live stream is held open by the
mock (one event every 400 ms) while the clients below read the document.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from tests.support.waiting import wait_until

from .conftest import Admin

STAMPS = ("started_at", "last_activity_at")


def seed_style_ages(base_url: str) -> list[tuple[float, float, float]]:
    """A client written like the seed document's examples: stdlib only, the data port,
    epoch arithmetic on the fields the seed shows. Per connection: its age by the
    local clock, its age by the document's own ``timestamp``, and ``duration_seconds``."""
    with urllib.request.urlopen(base_url + "/v1/diagnostics", timeout=10) as resp:
        doc = json.loads(resp.read())
    return [
        (time.time() - c["started_at"], doc["timestamp"] - c["started_at"], c["duration_seconds"])
        for inst in doc["instances"]
        for c in (inst["activity"] or {}).get("connections", [])
    ]


def from_iso(text: str) -> float:
    """How a fastproxy client reads the ISO form (``Z`` for UTC, milliseconds)."""
    assert text.endswith("Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def hold_a_stream(url: str) -> tuple[threading.Thread, threading.Event]:
    started = threading.Event()

    def run() -> None:
        body = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            timeout=30,
            headers={"x-mock-tokens": "6", "x-mock-interval-ms": "400"},
        ) as r:
            assert r.status_code == 200
            for _ in r.iter_raw():
                started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, started


def test_seed_script_arithmetic_and_iso_twins_agree(admin_factory: Callable[..., Admin]) -> None:
    admin = admin_factory({"enable_activity_tracking": True})
    stream, started = hold_a_stream(admin.gw.url)
    assert started.wait(10), "the stream did not start"

    def live_for_a_while() -> list[tuple[float, float, float]] | None:
        rows = seed_style_ages(admin.gw.url)
        return rows if rows and rows[0][2] >= 0.5 else None

    ((local_age, doc_age, duration),) = wait_until(
        live_for_a_while, timeout=10, what="a connection live for 0.5 s"
    )
    # The seed's arithmetic gives the connection's age: by the document's timestamp it
    # is duration_seconds (one wall clock against one monotonic clock, both in ms), by
    # the client's clock a little more (the time the answer took to arrive and parse).
    assert abs(doc_age - duration) < 0.05
    assert duration - 0.05 < local_age < duration + 2.0

    # A fastproxy client reads the ISO twins and gets the same instants.
    before = time.time()
    doc = httpx.get(admin.url + "/v1/diagnostics", timeout=10).json()
    after = time.time()
    assert isinstance(doc["timestamp"], float)
    assert before - 0.002 <= doc["timestamp"] <= after + 0.002
    assert abs(from_iso(doc["timestamp_iso"]) - doc["timestamp"]) <= 0.0011
    (c,) = [c for inst in doc["instances"] for c in (inst["activity"] or {})["connections"]]
    for name in STAMPS:
        assert isinstance(c[name], float), name
        assert abs(from_iso(c[name + "_iso"]) - c[name]) <= 0.0011, name
    assert c["started_at"] <= c["last_activity_at"] <= doc["timestamp"]
    stream.join(15)


def test_every_timestamp_of_the_payload_has_both_forms(
    admin_factory: Callable[..., Admin], mock_llm: Any
) -> None:
    """No timestamp is left in one form only: walk the document and pair the fields."""
    admin = admin_factory({"enable_activity_tracking": True})
    stream, started = hold_a_stream(admin.gw.url)
    assert started.wait(10)
    doc = wait_until(
        lambda: (
            (d := httpx.get(admin.url + "/v1/diagnostics").json())
            and d["global_activity"]["total_active_connections"]
            and d
        ),
        what="one live connection",
    )
    seen: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_iso"):
                    base = key.removesuffix("_iso")
                    assert isinstance(node[base], float), base
                    seen.append(base)
                elif key.endswith("_at") or key == "timestamp":
                    assert key + "_iso" in node, key
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    assert sorted(set(seen)) == ["last_activity_at", "started_at", "timestamp"]
    stream.join(15)
