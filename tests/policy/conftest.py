"""Fixtures of the policy tests that run a real gateway: two mock LLM servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastproxy.mockllm import MockLLMServer

from .e2e import Mocks


@pytest.fixture
def mocks(mock_factory: Callable[..., MockLLMServer]) -> Mocks:
    return mock_factory(), mock_factory()
