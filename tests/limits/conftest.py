"""Fixtures of the limits tests: SDK clients closed at the end of the test."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from . import e2e


class Clients:
    """Makes the two SDKs' clients (no retries of their own) and closes them all."""

    def __init__(self) -> None:
        self.made: list[openai.OpenAI | anthropic.Anthropic] = []

    def oai(self, url: str, secret: str) -> openai.OpenAI:
        client = e2e.oai(url, secret)
        self.made.append(client)
        return client

    def ant(self, url: str, secret: str) -> anthropic.Anthropic:
        client = e2e.ant(url, secret)
        self.made.append(client)
        return client


@pytest.fixture
def sdk() -> Iterator[Clients]:
    clients = Clients()
    yield clients
    for client in clients.made:
        client.close()
