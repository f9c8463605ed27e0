"""Fixtures of the tracing tests: a real OTLP/HTTP receiver, and gateway processes that
are stopped (or killed) when the test ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.proc import GatewayProcess

from .receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    procs: list[GatewayProcess] = []
    yield procs
    for gw in procs:
        if gw.proc.poll() is None:
            gw.kill()
