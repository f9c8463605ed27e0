"""UsageService.on_exchange without a gateway: what the loop hands the recorder (frames
the recorder's codec builds into records), and the bounds on what may be pending."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastproxy.config import load_config
from fastproxy.core.records import ExchangeRecord
from fastproxy.monitor.costs import PriceTable
from fastproxy.monitor.usage_projection import ExactCounter, Projector
from fastproxy.monitor.usage_service import FrameCodec, UsageService
from fastproxy.storage.recorder_link import RecorderLink
from fastproxy.storage.usage_schema import load_record


class HeldLink(RecorderLink):
    """The gateway's end of the recorder channel with no recorder behind it (a stalled
    or restarting one): frames stay in ``out``; `run_all` builds them as the recorder
    would, with the recorder's codec."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(
            tmp / "usage.db",
            flush_interval=1.0,
            max_queue=100,
            retention_days=0,
            codec="",
            settings="{}",
            body_limit=1 << 20,
            limit=1 << 21,
        )
        self._loop = asyncio.new_event_loop()  # never run: the flush it is asked for waits

    def run_all(self, codec: FrameCodec) -> list[dict[str, Any]]:
        # What the channel carries, in order: earlier chunks (large bodies by reference),
        # then the frame buffer.
        wire = bytearray().join([*self._chunks, self.out])
        frames, consumed = codec.unpack(wire)
        assert consumed == len(wire)
        del self.out[:]
        self._chunks, self._chunk_bytes, self.unsent = [], 0, 0
        return [load_record(codec.build(f)[3]) for f in frames]


@pytest.fixture
def link(tmp_path: Path) -> Iterator[HeldLink]:
    held = HeldLink(tmp_path)
    yield held
    assert held._loop is not None
    held._loop.close()


def make_service(link: HeldLink) -> tuple[UsageService, FrameCodec]:
    config = load_config({}, env={}, use_files=False).config
    service = UsageService(config)
    service.store = link
    return service, FrameCodec(Projector(PriceTable(), ExactCounter.load()))


def rec_with_body(text: str) -> ExchangeRecord:
    rec = ExchangeRecord(1, 1, 10.0)
    rec.frontend, rec.path = "openai", "/v1/chat/completions"
    rec.model_requested = rec.model_used = "gpt-4o"
    rec.status, rec.ended_at = 200, 10.5
    rec.request_body = orjson.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    )
    return rec


def test_bodies_pending_for_the_recorder_are_bounded(link: HeldLink) -> None:
    first = rec_with_body("a" * 100)
    size = len(first.request_body or b"")
    service, codec = make_service(link)
    service.on_exchange(first)
    frame = len(link.out)
    link.body_limit = 2 * frame  # room for two frames with their bodies
    for _ in range(2):
        service.on_exchange(rec_with_body("a" * 100))
    assert link.bodies_dropped == 1 and link.unsent == 3
    assert len(link.out) == 3 * frame - size - 4  # the third: no body, no body length
    records = link.run_all(codec)
    assert [r["ctp_prompt_tokens"] is None for r in records] == [False, False, True]
    assert service.status()["bodies_dropped"] == 1


def test_a_large_body_goes_by_reference_in_order(link: HeldLink) -> None:
    service, codec = make_service(link)
    big = rec_with_body("b " * 100_000)
    service.on_exchange(rec_with_body("first"))
    service.on_exchange(big)
    service.on_exchange(rec_with_body("last"))
    assert link._chunks[1] is big.request_body  # not copied on the loop
    assert link.pending() == len(link.out) + link._chunk_bytes
    records = link.run_all(codec)
    assert [r["ctp_prompt_tokens"] is not None for r in records] == [True, True, True]
    assert records[1]["ctp_prompt_tokens"] > 50_000 > records[0]["ctp_prompt_tokens"]


def test_past_the_limit_records_are_dropped_and_counted(link: HeldLink) -> None:
    service, codec = make_service(link)
    service.on_exchange(rec_with_body("x"))
    link.limit = len(link.out)  # full: the next record has no room even without its body
    held = bytes(link.out)
    service.on_exchange(rec_with_body("y"))
    assert bytes(link.out) == held and link.unsent == 1
    st = service.status()
    assert st["dropped_records"] == 1 and st["queue_depth"] == 1
    assert len(link.run_all(codec)) == 1


def test_a_failing_projection_still_records_and_logs_no_text(
    link: HeldLink, caplog: pytest.LogCaptureFixture
) -> None:
    service, codec = make_service(link)
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
        (record,) = link.run_all(codec)
    assert record["ctp_prompt_tokens"] is None and record["model_used"] == "gpt-4o"
    assert "ValueError" in caplog.text and "secret" not in caplog.text
