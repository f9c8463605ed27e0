"""A capture directory on a disk that fills up: capture stops with one log line and a
counter, the traffic does not notice. The disk is a 256 KiB tmpfs (mounting needs
root; the test is skipped without it)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway, backend_for

Factory = Callable[..., RunningGateway]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_disables_capture_and_traffic_goes_on(
    gateway_factory: Factory,
    mock_llm: MockLLMServer,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fastproxy.capture")
    out = small_disk / "captures"
    gw = gateway_factory(
        {
            "backends": {"openai.1": backend_for(mock_llm)},
            # Files and the total far above the disk: only the disk can stop it.
            "wire_capture": {"enabled": True, "output_dir": str(out)},
        }
    )

    def disabled() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "wire capture disabled" in r.getMessage()]

    statuses: list[int] = []
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + 30
        while not disabled():
            assert time.monotonic() < deadline, "capture never noticed the disk is full"
            # 16 KB of prompt that does not compress: the disk fills in ~20 requests.
            chat: dict[str, Any] = {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": os.urandom(8192).hex()}],
            }
            statuses.append(client.post(gw.url + "/v1/chat/completions", json=chat).status_code)
        for _ in range(10):
            chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "after"}]}
            statuses.append(client.post(gw.url + "/v1/chat/completions", json=chat).status_code)
        doc = client.get(gw.url + "/internal/health").json()["wire_capture"]
    assert set(statuses) == {200}, statuses  # no request noticed
    assert doc["state"] == "disabled" and "No space left" in doc["reason"], doc
    assert doc["exchanges_skipped"] >= 10
    assert len(disabled()) == 1  # one line, not one per event
