"""UsageService.on_exchange without a gateway: what the loop hands the store, and the
bound on request bodies held for the writer thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from fastproxy.config import load_config
from fastproxy.core.records import ExchangeRecord
from fastproxy.monitor.usage_projection import ExactCounter, Projector
from fastproxy.monitor.usage_service import UsageService
from fastproxy.storage.usage_schema import load_record


class HeldStore:
    """Accepts up to ``capacity`` items and builds nothing until told (a stalled writer)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.items: list[Any] = []
        self.capacity = capacity
        self.build: Callable[[Any], Any] | None = None  # what UsageStore gets as build=

    def submit(self, item: Any) -> bool:
        if len(self.items) >= self.capacity:
            return False
        self.items.append(item)
        return True

    def run_all(self) -> list[dict[str, Any]]:
        """The records built from the queued captures, as the store would keep them: the
        builder returns the prepared row, whose last element is the record's JSON."""
        assert self.build is not None
        out = [load_record(self.build(item)[3]) for item in self.items]
        self.items.clear()
        return out

    def status(self) -> dict[str, Any]:
        return {"queue_depth": len(self.items)}


def make_service(store: HeldStore, limit: int) -> UsageService:
    config = load_config({}, env={}, use_files=False).config
    service = UsageService(config)
    service.pending.limit = limit
    service.projector = Projector(service.prices, ExactCounter.load())
    service.store = store
    store.build = service.build
    return service


def rec_with_body(text: str) -> ExchangeRecord:
    rec = ExchangeRecord(1, 1, 10.0)
    rec.frontend, rec.path = "openai", "/v1/chat/completions"
    rec.model_requested = rec.model_used = "gpt-4o"
    rec.status, rec.ended_at = 200, 10.5
    rec.request_body = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    )
    return rec


def test_bodies_held_for_the_writer_are_bounded() -> None:
    store = HeldStore()
    first = rec_with_body("a" * 100)
    size = len(first.request_body or b"")
    service = make_service(store, limit=2 * size)
    for _ in range(3):
        service.on_exchange(rec_with_body("a" * 100))
    assert service.pending.bytes == 2 * size and service.pending.dropped == 1
    records = store.run_all()
    assert service.pending.bytes == 0
    assert [r["ctp_prompt_tokens"] is None for r in records] == [False, False, True]
    assert service.status()["bodies_dropped"] == 1


def test_a_refused_submit_releases_its_body() -> None:
    store = HeldStore(capacity=1)
    service = make_service(store, limit=1 << 20)
    service.on_exchange(rec_with_body("x"))
    held = service.pending.bytes
    service.on_exchange(rec_with_body("y"))  # the queue is full: dropped by the store
    assert service.pending.bytes == held
    store.run_all()
    assert service.pending.bytes == 0


def test_a_failing_projection_still_records_and_logs_no_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = HeldStore()
    service = make_service(store, limit=1 << 20)
    rec = rec_with_body("secret words")
    rec.request_body = (
        b'{"model": "gpt-4o", "messages": [{"role": "user", "content": 7}], '
        b'"tools": "secret words"}'
    )

    def broken(body: object, embeddings: bool = False) -> object:
        raise ValueError("body says: secret words")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fastproxy.monitor.usage_projection.analyse_prompt", broken)
        service.on_exchange(rec)
        (record,) = store.run_all()
    assert record["ctp_prompt_tokens"] is None and record["model_used"] == "gpt-4o"
    assert service.pending.bytes == 0
    assert "ValueError" in caplog.text and "secret" not in caplog.text
