"""Fixtures of the named-key tests: a gateway whose data port takes two named keys and
the plain list's key, in front of the real mock LLM, with usage tracking on."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastproxy.mockllm import MockLLMServer
from tests.conftest import RunningGateway

from .e2e import ENV, NOTEBOOK_ENV, NOTEBOOK_SECRET, ci_key, keyed_tree, notebook_key


@pytest.fixture
def keyed(
    gateway_factory: Callable[..., RunningGateway],
    mock_llm: MockLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> RunningGateway:
    # The loader checks the env it is given; the data plane reads the process's own
    # environment for the secret (as a real `fastproxy run` does): both hold it.
    monkeypatch.setenv(NOTEBOOK_ENV, NOTEBOOK_SECRET)
    return gateway_factory(keyed_tree(mock_llm, [ci_key(), notebook_key()]), env=dict(ENV))
